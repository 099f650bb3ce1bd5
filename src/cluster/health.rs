//! The control plane's view of each node: one connection of the pooler's own per node, a
//! cheap query on a timer that also reads WAL positions, and from them bans, unbans and lag.

use super::{Cluster, Leader, Lsn, Role};
use crate::config::General;
use crate::server::query::{self, Row};
use crate::server::{ServerConn, Target};
use std::sync::Arc;
use std::time::Duration;

/// Where a node stands, from one probe.
#[derive(Debug, Clone, PartialEq)]
struct Probe {
    in_recovery: bool,
    /// The primary's current WAL position, or a replica's replay position.
    lsn: u64,
    /// How long ago a replica replayed its last transaction.
    replay_age: Duration,
}

const PROBE: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
     COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)";

fn parse_probe(rows: &[Row]) -> Option<Probe> {
    let row = rows.first()?;
    let in_recovery = row.first()?.as_deref()? == "t";
    let lsn = match row.get(1)?.as_deref() {
        Some(text) => Lsn::parse(text)?.0,
        None => 0,
    };
    let age: f64 = row.get(2)?.as_deref()?.parse().ok()?;
    Some(Probe {
        in_recovery,
        lsn,
        replay_age: Duration::try_from_secs_f64(age.max(0.0)).unwrap_or_default(),
    })
}

/// Checks the nodes of one cluster; keeps a connection per node between ticks.
#[derive(Default)]
pub struct Checker {
    conns: Vec<Option<Box<ServerConn>>>,
}

impl Checker {
    /// One round of checks. Returns the nodes whose ban state changed (banned, or back),
    /// whose idle pooled connections the caller should close: after a ban they lead to a
    /// failed node, after a return they may date from before its restart.
    pub async fn tick(&mut self, cluster: &Arc<Cluster>, general: &General) -> Vec<usize> {
        let timeout = general.server_connect_timeout.0;
        let credentials = match cluster.credentials() {
            Some(c) if cluster.has_replicas() => c,
            // Nothing to route between, or nobody to log in as until a client has connected:
            // only whether the primary answers, without a login of our own.
            _ => {
                let p = &cluster.nodes[cluster.primary()];
                cluster.set_primary_reachable(answers(&p.host, p.port, timeout).await);
                cluster.round_done();
                return Vec::new();
            }
        };
        self.conns.resize_with(cluster.nodes.len(), || None);
        let mut checks = tokio::task::JoinSet::new();
        for i in 0..cluster.nodes.len() {
            // The primary is always checked: readiness depends on it.
            if i != cluster.primary() && cluster.in_ban_time(i) {
                self.conns[i] = None;
                continue;
            }
            let target = cluster.target(i, &credentials, general);
            let conn = self.conns[i].take();
            checks.spawn(async move {
                let (conn, result) = probe(conn, &target, timeout).await;
                (i, conn, result)
            });
        }
        let mut probes = vec![None; cluster.nodes.len()];
        let mut changed = Vec::new();
        while let Some(done) = checks.join_next().await {
            let Ok((i, conn, result)) = done else {
                continue;
            };
            self.conns[i] = conn;
            match result {
                Ok(p) => {
                    let expected = cluster.role(i) == Role::Replica;
                    if !cluster.auto && p.in_recovery != expected {
                        tracing::warn!(db = %cluster.database, node = %cluster.nodes[i].addr, in_recovery = p.in_recovery, "node's role differs from the configuration");
                    }
                    if cluster.check_passed(i) {
                        changed.push(i);
                    }
                    probes[i] = Some(p);
                }
                Err(why) => {
                    if cluster.ban(i, super::BanTimes::of(general), &why) {
                        changed.push(i);
                    }
                }
            }
        }
        if cluster.auto {
            let was = cluster.primary();
            if let Some(leader) = leader_of(&probes) {
                let claims = probes
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.as_ref().is_some_and(|p| !p.in_recovery))
                    .fold(0u64, |bits, (i, _)| bits | 1 << i.min(63));
                if cluster.set_leader(leader, claims) {
                    // Its idle connections lead to a node that is gone or no longer primary.
                    changed.push(was);
                }
            }
        }
        let primary = cluster.primary();
        cluster.set_primary_reachable(probes[primary].is_some());
        if let Some(primary_probe) = &probes[primary] {
            for (i, p) in probes.iter().enumerate() {
                let Some(p) = p.as_ref().filter(|_| i != primary) else {
                    continue;
                };
                let primary = primary_probe;
                let bytes = primary.lsn.saturating_sub(p.lsn);
                // Caught up means no lag, however long ago the last transaction was.
                let time = if bytes == 0 {
                    Duration::ZERO
                } else {
                    p.replay_age
                };
                let lagging = (general.max_replica_lag_bytes > 0
                    && bytes > general.max_replica_lag_bytes)
                    || general
                        .max_replica_lag
                        .enabled()
                        .is_some_and(|max| time > max);
                cluster.set_lag(i, bytes, time, lagging);
            }
        }
        cluster.round_done();
        changed
    }
}

/// Which node is the primary after a round of probes (`role = "auto"`): the one node out of
/// recovery, or contested when more than one is; None when no node answered as primary (the
/// last one found stays, and its writes fail until one answers).
fn leader_of(probes: &[Option<Probe>]) -> Option<Leader> {
    let mut primaries = probes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.as_ref().is_some_and(|p| !p.in_recovery))
        .map(|(i, _)| i);
    let first = primaries.next()?;
    Some(match primaries.next() {
        None => Leader::Node(first),
        Some(_) => Leader::Contested,
    })
}

/// Whether a PostgreSQL server listens at host:port (or the Unix socket of a host that is a
/// directory): an SSLRequest gets a one-byte answer before any login, so this needs no
/// credentials and leaves nothing in the server's log.
async fn answers(host: &str, port: u16, timeout: Duration) -> bool {
    let probe = async {
        let addr = crate::stream::address(host, port);
        let mut s = crate::stream::connect(&addr).await.ok()?;
        let answer = crate::server::ask_for_tls(&mut s).await.ok()?;
        matches!(answer, b'S' | b'N').then_some(())
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(())))
}

/// Connects if needed and runs the probe, all within `timeout`. Hands back the connection
/// when it is still good.
async fn probe(
    conn: Option<Box<ServerConn>>,
    target: &Target,
    timeout: Duration,
) -> (Option<Box<ServerConn>>, Result<Probe, String>) {
    let work = async {
        let mut conn = match conn {
            Some(c) => c,
            None => ServerConn::connect(target, timeout)
                .await
                .map_err(|e| e.to_string())?,
        };
        let rows = query::simple(&mut conn, PROBE)
            .await
            .map_err(|e| e.to_string())?;
        let probe = parse_probe(&rows).ok_or("unexpected health check result")?;
        Ok::<_, String>((conn, probe))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok((conn, probe))) => (Some(conn), Ok(probe)),
        Ok(Err(why)) => (None, Err(format!("health check failed: {why}"))),
        Err(_) => (None, Err("health check timed out".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_rows_to_positions() {
        let row = |a: &str, b: Option<&str>, c: &str| {
            vec![vec![
                Some(a.to_owned()),
                b.map(str::to_owned),
                Some(c.to_owned()),
            ]]
        };
        let p = parse_probe(&row("t", Some("0/10"), "1.5")).unwrap();
        assert_eq!((p.in_recovery, p.lsn), (true, 16));
        assert_eq!(p.replay_age, Duration::from_millis(1500));
        assert_eq!(parse_probe(&row("f", None, "0")).unwrap().lsn, 0);
        assert_eq!(parse_probe(&[]), None);
    }
}
