//! SHOW CLIENTS: one row per client connection, PgBouncer's columns, plus `id` (what
//! KILL_CLIENT takes) and `pinned` (the session-only features that keep its server, if any).

use super::{timestamp, Cell, Kind, Table};
use crate::context::clients::Peer;
use crate::context::Context;
use crate::router::effects::Features;
use std::sync::atomic::Ordering;

pub fn table(ctx: &Context) -> Table {
    use Kind::*;
    let mut columns = super::CONNECTION_COLUMNS.to_vec();
    columns.push(("id", Int));
    columns.push(("pinned", Text));
    let mut t = Table::new(&columns);
    let g = &ctx.config.load().general;
    for (pid, slot) in ctx.cancels.all() {
        let (database, user) = slot
            .login
            .get()
            .map_or(("", ""), |l| (l.database(), l.user()));
        let server = slot.server();
        let state = match (&server, slot.login.get()) {
            (_, None) => "login",
            (Some(_), _) => "active",
            (None, _) => "idle",
        };
        let last = slot.last_request.load(Ordering::Relaxed);
        let local = match slot.peer {
            Peer::Tcp(_) => (g.listen_addr.as_str(), g.listen_port),
            Peer::Unix { port, .. } => ("unix", port),
        };
        t.row(vec![
            Cell::from("C"),
            Cell::from(user),
            Cell::from(database),
            Cell::from(state),
            Cell::from(slot.peer.addr()),
            Cell::from(slot.peer.port()),
            Cell::from(local.0),
            Cell::from(local.1),
            Cell::from(timestamp(slot.connected_at)),
            Cell::from(timestamp(if last > 0 { last } else { slot.connected_at })),
            Cell::from(0),
            Cell::from(0),
            Cell::from(slot.killed.load(Ordering::Relaxed)),
            Cell::from(format!("{pid:x}")),
            Cell::from(server.as_ref().map(|k| format!("{:x}", k.process_id))),
            Cell::from(server.as_ref().map_or(0, |k| k.process_id)),
            Cell::from(""),
            Cell::from(""),
            Cell::from(pid),
            Cell::from(Features::from_bits(slot.pinned.load(Ordering::Relaxed)).names()),
        ]);
    }
    t
}
