//! What the primary's catalog says about functions: the user functions that are VOLATILE (may
//! write), read on a connection of the pooler's own, so that a read calling one goes to the
//! primary.

use super::Cluster;
use crate::config::General;
use crate::server::query;
use crate::server::ServerConn;

/// Plain functions outside the system schemas that may write. Procedures cannot be called
/// in a SELECT, and aggregates rarely write.
const VOLATILE: &str = "SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.provolatile = 'v' AND p.prokind = 'f' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Reads the primary's catalog; keeps a connection between reads.
#[derive(Default)]
pub struct Reader {
    conn: Option<Box<ServerConn>>,
}

impl Reader {
    /// The names of the VOLATILE user functions in the database, or None when the primary
    /// could not be asked (no login known yet, unreachable, within server_connect_timeout).
    pub async fn volatile_functions(
        &mut self,
        cluster: &Cluster,
        general: &General,
    ) -> Option<Vec<String>> {
        let target = cluster.target(0, &cluster.credentials()?, general);
        let timeout = general.server_connect_timeout.0;
        let conn = self.conn.take();
        let work = async {
            let mut conn = match conn {
                Some(c) => c,
                None => ServerConn::connect(&target, timeout).await.ok()?,
            };
            let rows = query::simple(&mut conn, VOLATILE).await.ok()?;
            Some((conn, rows))
        };
        let (conn, rows) = tokio::time::timeout(timeout, work).await.ok()??;
        self.conn = Some(conn);
        Some(
            rows.into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect(),
        )
    }
}
