//! SHOW LISTS: how many of each thing the pooler holds, PgBouncer's rows.

use super::{Cell, Kind, Table};
use crate::context::Context;

pub fn table(ctx: &Context) -> Table {
    let mut t = Table::new(&[("list", Kind::Text), ("items", Kind::Int)]);
    let config = ctx.config.load();
    let members = ctx.pools.all_members();
    let (mut used_clients, mut free_servers, mut used_servers, mut pools) = (0, 0, 0, 0);
    for m in &members {
        for p in &m.pools {
            let s = p.stats();
            pools += 1;
            used_clients += s.active;
            free_servers += s.idle + s.used;
            used_servers += s.active + s.login;
        }
    }
    let clients = ctx.client_count();
    let logging_in = ctx
        .cancels
        .all()
        .iter()
        .filter(|(_, s)| s.login.get().is_none())
        .count();
    for (list, items) in [
        ("databases", config.databases.len()),
        ("users", config.users.len()),
        ("pools", pools),
        ("free_clients", 0),
        (
            "used_clients",
            clients.saturating_sub(logging_in).max(used_clients),
        ),
        ("login_clients", logging_in),
        ("free_servers", free_servers),
        ("used_servers", used_servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.row(vec![Cell::from(list), Cell::from(items)]);
    }
    t
}
