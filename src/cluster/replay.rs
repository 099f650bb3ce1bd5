//! The replicas' replay positions, for read_your_writes: polled on connections of the
//! pooler's own every replica_lsn_poll_interval, and at once when a read waits for one.

use super::{Cluster, Lsn};
use crate::config::{General, ReadYourWrites};
use crate::server::query;
use crate::server::{ServerConn, Target};
use std::sync::Arc;
use std::time::Duration;

const POLL: &str = "SELECT pg_catalog.pg_last_wal_replay_lsn()";

/// Polls a cluster's replicas; keeps a connection per replica between polls.
#[derive(Default)]
pub struct Follower {
    conns: Vec<Option<Box<ServerConn>>>,
}

impl Follower {
    /// Waits for the next poll: the interval while read_your_writes is on, else only when a
    /// read asks (a floor set with SET pgsluice.min_lsn).
    pub async fn wait(&self, cluster: &Cluster, general: &General) {
        let asked = cluster.poll_now.notified();
        if general.read_your_writes == ReadYourWrites::Off {
            asked.await;
            return;
        }
        let _ = tokio::time::timeout(general.replica_lsn_poll_interval.0, asked).await;
    }

    /// One poll of every replica not banned, each bounded by server_connect_timeout; then
    /// waiting reads are told.
    pub async fn poll(&mut self, cluster: &Arc<Cluster>, general: &General) {
        let Some(credentials) = cluster.credentials().filter(|_| cluster.has_replicas()) else {
            cluster.replayed.notify_waiters();
            return;
        };
        let timeout = general.server_connect_timeout.0;
        self.conns.resize_with(cluster.nodes.len(), || None);
        let mut polls = tokio::task::JoinSet::new();
        for (i, node) in cluster.nodes.iter().enumerate().skip(1) {
            if node.usable() == super::Usable::Banned {
                self.conns[i] = None;
                continue;
            }
            let target = cluster.target(i, &credentials, general);
            let conn = self.conns[i].take();
            polls.spawn(async move { (i, replayed(conn, &target, timeout).await) });
        }
        while let Some(done) = polls.join_next().await {
            let Ok((i, (conn, lsn))) = done else { continue };
            self.conns[i] = conn;
            // A replica that does not answer has replayed nothing a read can count on.
            cluster.set_replayed(i, lsn.unwrap_or_default());
        }
        cluster.replayed.notify_waiters();
    }
}

/// Connects if needed and reads the replay position, within `timeout`. Hands back the
/// connection when it is still good.
async fn replayed(
    conn: Option<Box<ServerConn>>,
    target: &Target,
    timeout: Duration,
) -> (Option<Box<ServerConn>>, Option<Lsn>) {
    let work = async {
        let mut conn = match conn {
            Some(c) => c,
            None => ServerConn::connect(target, timeout).await.ok()?,
        };
        let rows = query::simple(&mut conn, POLL).await.ok()?;
        let text = rows.first()?.first()?.clone();
        // NULL: not a replica (promoted, or misconfigured); nothing to count on.
        let lsn = text.as_deref().and_then(Lsn::parse);
        Some((conn, lsn))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Some((conn, lsn))) => (Some(conn), lsn),
        _ => (None, None),
    }
}
