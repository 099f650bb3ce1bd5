//! SHOW POOLS: one row per pool, PgBouncer's columns (waits in seconds and µs), plus `node`.
//! Idle clients count as cl_active on the primary's row, as PgBouncer counts them. A cancel
//! request is sent on at once, on a connection of its own: while it (or a resend) is on its
//! way it counts in cl_active_cancel_req and sv_active_cancel (none waits:
//! cl_waiting_cancel_req is 0); the server it went to counts in sv_being_canceled until it
//! is closed (it is never pooled again) as well as in sv_active.

use super::{Cell, Kind, Table};
use crate::context::Context;

pub fn table(ctx: &Context) -> Table {
    use Kind::*;
    let mut t = Table::new(&[
        ("database", Text),
        ("user", Text),
        ("cl_active", Int),
        ("cl_waiting", Int),
        ("cl_active_cancel_req", Int),
        ("cl_waiting_cancel_req", Int),
        ("sv_active", Int),
        ("sv_active_cancel", Int),
        ("sv_being_canceled", Int),
        ("sv_idle", Int),
        ("sv_used", Int),
        ("sv_tested", Int),
        ("sv_login", Int),
        ("maxwait", Int),
        ("maxwait_us", Int),
        ("pool_mode", Text),
        ("node", Text),
    ]);
    for m in ctx.pools.all_members() {
        let stats = m.pool_stats();
        let clients = m.client_counts(&stats);
        for (pool, s) in m.pools.iter().zip(stats) {
            let idle_clients = if pool.node == m.cluster.primary() {
                clients.idle
            } else {
                0
            };
            let mode = match pool.setup().settings.pool_mode {
                crate::config::PoolMode::Session => "session",
                crate::config::PoolMode::Transaction => "transaction",
            };
            let (being_canceled, delivering) = pool.cancels();
            t.row(vec![
                Cell::from(&m.cluster.database),
                Cell::from(&m.user),
                Cell::from(s.active + idle_clients),
                Cell::from(s.waiting),
                Cell::from(delivering),
                Cell::from(0),
                Cell::from(s.active),
                Cell::from(delivering),
                Cell::from(being_canceled),
                Cell::from(s.idle),
                Cell::from(s.used),
                Cell::from(0),
                Cell::from(s.login),
                Cell::from(s.max_wait.as_secs()),
                Cell::from(s.max_wait.subsec_micros()),
                Cell::from(mode),
                Cell::from(&m.cluster.nodes[pool.node].addr),
            ]);
        }
    }
    t
}
