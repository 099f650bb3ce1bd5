//! RECONNECT [db]: close every server connection of the database(s) when it is next idle,
//! so that new ones are opened (after a failover, say).

use super::{Console, Failure};

pub fn run(console: &Console<'_>, db: Option<&str>) -> Result<(), Failure> {
    let clusters = console.clusters(db)?;
    for m in console.ctx.pools.all_members() {
        if clusters.iter().any(|c| c.database == m.cluster.database) {
            for pool in &m.pools {
                pool.reconnect();
            }
        }
    }
    Ok(())
}
