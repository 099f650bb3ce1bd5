//! PAUSE [db]: clients get no new server; the command returns once every server of the
//! database(s) is back in its pool. RESUME [db] lets clients go on.

use super::{Console, Failure};
use std::time::Duration;

pub async fn pause(console: &Console<'_>, db: Option<&str>) -> Result<(), Failure> {
    let clusters = console.clusters(db)?;
    for c in &clusters {
        c.pause(true);
    }
    // Transactions in flight finish; PAUSE answers once none is left.
    loop {
        let busy = console.ctx.pools.all_members().iter().any(|m| {
            clusters.iter().any(|c| c.database == m.cluster.database)
                && m.pools.iter().any(|p| p.stats().active > 0)
        });
        if !busy {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn resume(console: &Console<'_>, db: Option<&str>) -> Result<(), Failure> {
    for c in console.clusters(db)? {
        c.pause(false);
    }
    Ok(())
}
