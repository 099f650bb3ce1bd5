//! SHOW DATABASES: one row per configured database (its primary), PgBouncer's columns, plus
//! `replicas`.

use super::{Cell, Kind, Table};
use crate::config::PoolMode;
use crate::context::Context;

pub fn table(ctx: &Context) -> Table {
    use Kind::*;
    let mut t = Table::new(&[
        ("name", Text),
        ("host", Text),
        ("port", Int),
        ("database", Text),
        ("force_user", Text),
        ("pool_size", Int),
        ("min_pool_size", Int),
        ("reserve_pool", Int),
        ("pool_mode", Text),
        ("max_connections", Int),
        ("current_connections", Int),
        ("max_client_connections", Int),
        ("current_client_connections", Int),
        ("paused", Int),
        ("disabled", Int),
        ("replicas", Text),
    ]);
    let config = ctx.config.load();
    let totals = crate::metrics::report::totals(&ctx.pools);
    for (name, db) in &ctx.clusters.served(&config) {
        let cluster = ctx.clusters.get(name);
        let mode = match db.pool_mode.unwrap_or(config.general.pool_mode) {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let replicas: Vec<String> = db
            .replica_list()
            .iter()
            .map(|r| format!("{}:{}", r.host, r.port))
            .collect();
        t.row(vec![
            Cell::from(name),
            Cell::from(&db.host),
            Cell::from(db.port),
            Cell::from(db.dbname.as_deref().unwrap_or(name)),
            Cell::from(db.user.as_deref()),
            Cell::from(db.pool_size.unwrap_or(config.general.default_pool_size)),
            Cell::from(db.min_pool_size.unwrap_or(config.general.min_pool_size)),
            Cell::from(config.general.reserve_pool_size),
            Cell::from(mode),
            Cell::from(config.max_db_connections(name)),
            Cell::from(totals.get(name).map_or(0, |t| t.servers)),
            Cell::from(config.max_db_client_connections(name)),
            Cell::from(ctx.pools.client_limits.of_database(name)),
            Cell::from(cluster.as_ref().is_some_and(|c| c.is_paused())),
            Cell::from(cluster.as_ref().is_some_and(|c| c.is_disabled())),
            Cell::from(replicas.join(",")),
        ]);
    }
    t
}
