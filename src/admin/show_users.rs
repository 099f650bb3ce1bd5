//! SHOW USERS: one row per configured user.

use super::{Cell, Kind, Table};
use crate::config::PoolMode;
use crate::context::Context;

pub fn table(ctx: &Context) -> Table {
    use Kind::*;
    let mut t = Table::new(&[
        ("name", Text),
        ("pool_size", Int),
        ("pool_mode", Text),
        ("max_user_connections", Int),
        ("current_connections", Int),
        ("max_user_client_connections", Int),
        ("current_client_connections", Int),
    ]);
    let config = ctx.config.load();
    for (name, user) in &config.users {
        let servers: usize = ctx
            .pools
            .all_members()
            .iter()
            .filter(|m| &m.user == name)
            .flat_map(|m| m.pools.iter())
            .map(|p| p.stats().open())
            .sum();
        t.row(vec![
            Cell::from(name),
            Cell::from(user.pool_size.unwrap_or(config.general.default_pool_size)),
            Cell::from(match user.pool_mode.unwrap_or(config.general.pool_mode) {
                PoolMode::Session => "session",
                PoolMode::Transaction => "transaction",
            }),
            Cell::from(config.max_user_connections(name)),
            Cell::from(servers),
            Cell::from(config.max_user_client_connections(name)),
            Cell::from(ctx.pools.client_limits.of_user(name)),
        ]);
    }
    t
}
