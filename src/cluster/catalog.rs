//! What the primary's catalog says about functions and sequences: the user functions that are
//! VOLATILE (may write) and the sequences (whose values only the primary has right), read on a
//! connection of the pooler's own, so that a read calling one or reading one goes to the
//! primary.

use super::Cluster;
use crate::config::General;
use crate::server::query;
use crate::server::ServerConn;

/// Plain functions outside the system schemas that may write (procedures cannot be called
/// in a SELECT, and aggregates rarely write), then every sequence: each row its kind (`f`,
/// `S`) and name.
const NAMES: &str = "SELECT DISTINCT 'f', p.proname FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.provolatile = 'v' AND p.prokind = 'f' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     UNION SELECT 'S', c.relname FROM pg_catalog.pg_class c WHERE c.relkind = 'S'";

/// The names the catalog gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub volatile_functions: Vec<String>,
    pub sequences: Vec<String>,
}

/// Reads the primary's catalog; keeps a connection between reads.
#[derive(Default)]
pub struct Reader {
    conn: Option<Box<ServerConn>>,
}

impl Reader {
    /// The names of the VOLATILE user functions and of the sequences in the database, or None
    /// when the primary could not be asked (no login known yet, unreachable, within
    /// server_connect_timeout).
    pub async fn names(&mut self, cluster: &Cluster, general: &General) -> Option<Names> {
        let target = cluster.target(0, &cluster.credentials()?, general);
        let timeout = general.server_connect_timeout.0;
        let conn = self.conn.take();
        let work = async {
            let mut conn = match conn {
                Some(c) => c,
                None => ServerConn::connect(&target, timeout).await.ok()?,
            };
            let rows = query::simple(&mut conn, NAMES).await.ok()?;
            Some((conn, rows))
        };
        let (conn, rows) = tokio::time::timeout(timeout, work).await.ok()??;
        self.conn = Some(conn);
        let mut names = Names::default();
        for row in rows {
            let mut row = row.into_iter();
            match (row.next().flatten().as_deref(), row.next().flatten()) {
                (Some("f"), Some(name)) => names.volatile_functions.push(name),
                (Some("S"), Some(name)) => names.sequences.push(name),
                _ => {}
            }
        }
        Some(names)
    }
}
