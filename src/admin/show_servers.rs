//! SHOW SERVERS: one row per server connection, PgBouncer's columns, plus `node`. `link` is
//! the id of the client holding it.

use super::{timestamp, Cell, Kind, Table};
use crate::context::Context;
use std::collections::HashMap;

pub fn table(ctx: &Context) -> Table {
    use Kind::*;
    let mut columns = super::CONNECTION_COLUMNS.to_vec();
    columns.push(("node", Text));
    let mut t = Table::new(&columns);
    // Which client holds which server, by the server's process id.
    let holders: HashMap<i32, i32> = ctx
        .cancels
        .all()
        .into_iter()
        .filter_map(|(pid, slot)| slot.server().map(|k| (k.process_id, pid)))
        .collect();
    for m in ctx.pools.all_members() {
        for pool in &m.pools {
            for (info, idle) in pool.servers() {
                let link = holders.get(&info.cancel_key.process_id);
                let state = if idle {
                    "idle"
                } else if link.is_some() {
                    "active"
                } else {
                    "used"
                };
                t.row(vec![
                    Cell::from("S"),
                    Cell::from(&m.user),
                    Cell::from(&m.cluster.database),
                    Cell::from(state),
                    Cell::from(&info.addr),
                    Cell::from(info.port),
                    Cell::from(&info.local_addr),
                    Cell::from(info.local_port),
                    Cell::from(timestamp(info.connected_at)),
                    Cell::from(timestamp(info.connected_at)),
                    Cell::from(0),
                    Cell::from(0),
                    Cell::from(0),
                    Cell::from(format!("{:x}", info.id)),
                    Cell::from(link.map(|pid| format!("{pid:x}"))),
                    Cell::from(info.cancel_key.process_id),
                    Cell::from(""),
                    Cell::from(""),
                    Cell::from(&m.cluster.nodes[pool.node].addr),
                ]);
            }
        }
    }
    t
}
