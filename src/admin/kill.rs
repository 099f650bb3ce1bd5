//! KILL db: close every client of the database and its servers; new clients wait until
//! RESUME (as PgBouncer does). KILL_CLIENT id: close one client (the `id` of SHOW CLIENTS).

use super::{Console, Failure};
use crate::protocol::sqlstate;
use std::sync::atomic::Ordering;

pub fn kill(console: &Console<'_>, db: Option<&str>) -> Result<(), Failure> {
    let cluster = console.cluster(db)?;
    let name = cluster.database.as_str();
    cluster.pause(true);
    for (_, slot) in console.ctx.cancels.all() {
        if slot.login.get().is_some_and(|l| l.database() == name) {
            slot.killed.store(true, Ordering::Relaxed);
        }
    }
    console.ctx.wake_all();
    for m in console.ctx.pools.all_members() {
        if m.cluster.database == name {
            for pool in &m.pools {
                pool.reconnect();
            }
        }
    }
    Ok(())
}

pub fn kill_client(console: &Console<'_>, id: Option<&str>) -> Result<(), Failure> {
    let pid: i32 = id
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| Failure::new(sqlstate::SYNTAX_ERROR, "KILL_CLIENT needs a client id"))?;
    let slot = console.ctx.cancels.get(pid).ok_or_else(|| {
        Failure::new(sqlstate::UNDEFINED_OBJECT, format!("no such client: {pid}"))
    })?;
    slot.killed.store(true, Ordering::Relaxed);
    console.ctx.wake_all();
    Ok(())
}
