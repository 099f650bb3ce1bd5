//! The one place that decides where work runs: the primary, or which replica.
//!
//! It is handed the facts (what the work is, the client's session, the cluster's health) and
//! returns a decision; it does no IO. The client session acts on the decision.

use super::classify::{Class, Hint, WriteReason};
use crate::cluster::{Cluster, Role, Usable};
use crate::config::{LoadBalance, PoolMode, ReadFromPrimary};
use crate::metrics::RouteReason;
use std::sync::atomic::Ordering;

/// Where a client asked its work to go: `SET pgsluice.route`, or the startup option of the
/// same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteMode {
    #[default]
    Auto,
    Primary,
    Replica,
}

impl RouteMode {
    pub fn parse(value: &str) -> Option<RouteMode> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" | "default" => Some(RouteMode::Auto),
            "primary" => Some(RouteMode::Primary),
            "replica" => Some(RouteMode::Replica),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RouteMode::Auto => "auto",
            RouteMode::Primary => "primary",
            RouteMode::Replica => "replica",
        }
    }
}

/// What the client wants run: the statements up to the end of its first implicit
/// transaction (a Query, or extended-protocol messages up to Sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    pub class: Class,
    pub hint: Option<Hint>,
    /// False when the work has not fully arrived (extended protocol before its Sync): what
    /// follows is unknown, so it cannot go to a replica.
    pub complete: bool,
}

impl Work {
    /// One more statement of the same unit: a read stays a read only if every statement is
    /// one; anything else keeps what its first statement made it.
    pub fn and(self, class: Class, hint: Option<Hint>) -> Work {
        let class = match (self.class, class) {
            (Class::Read, Class::Read) => Class::Read,
            (Class::Read, Class::Write(r)) => Class::Write(r),
            (Class::Read, _) => Class::Write(WriteReason::Statement),
            (first, _) => first,
        };
        Work {
            class,
            hint: self.hint.or(hint),
            complete: self.complete,
        }
    }
}

/// What the session knows about the client.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub pool_mode: PoolMode,
    pub route: RouteMode,
    /// A node this work just failed on: try another.
    pub avoid: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub node: usize,
    pub reason: RouteReason,
    /// The work may be sent again elsewhere if its node fails before answering: a read
    /// outside an explicit transaction.
    pub retryable: bool,
}

/// Why work could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no replica is available for reads (read_from_primary = never)")]
pub struct NoReplica;

const PRIMARY: usize = 0;

/// Decides where `work` runs, and counts the decision.
pub fn decide(cluster: &Cluster, work: &Work, session: &Session) -> Result<Decision, NoReplica> {
    let d = place(cluster, work, session)?;
    cluster.routes.bump(d.reason);
    tracing::debug!(db = %cluster.database, node = %cluster.nodes[d.node].addr, reason = d.reason.name(), "route");
    Ok(d)
}

fn place(cluster: &Cluster, work: &Work, session: &Session) -> Result<Decision, NoReplica> {
    let on_primary = |reason| Decision {
        node: PRIMARY,
        reason,
        retryable: false,
    };
    let transaction_mode = session.pool_mode == PoolMode::Transaction;
    let retryable = transaction_mode && work.complete && work.class == Class::Read;
    let wanted = match work.hint {
        Some(Hint::Primary) => RouteMode::Primary,
        Some(Hint::Replica) => RouteMode::Replica,
        None => session.route,
    };
    match wanted {
        RouteMode::Primary => return Ok(on_primary(RouteReason::Hint)),
        RouteMode::Replica if cluster.has_replicas() => {
            return Ok(read(cluster, session.avoid, RouteReason::Hint, retryable)?
                .unwrap_or_else(on_primary));
        }
        _ => {}
    }
    if !cluster.has_replicas() {
        return Ok(on_primary(reason_of(work.class)));
    }
    if !transaction_mode {
        // A session keeps its server from login to logout: it needs the primary unless it
        // asked for a replica.
        return Ok(on_primary(RouteReason::Session));
    }
    let replica_ok = match work.class {
        Class::Read => work.complete,
        Class::Begin { read_only } | Class::SetTransaction { read_only } => read_only,
        _ => false,
    };
    if !replica_ok {
        return Ok(on_primary(reason_of(work.class)));
    }
    Ok(read(cluster, session.avoid, RouteReason::Read, retryable)?.unwrap_or_else(on_primary))
}

fn reason_of(class: Class) -> RouteReason {
    match class {
        Class::Read => RouteReason::Read,
        Class::Write(WriteReason::Locking) => RouteReason::Locking,
        Class::Write(WriteReason::WriteFunction) => RouteReason::WriteFunction,
        Class::Write(_) => RouteReason::Write,
        Class::Begin { .. }
        | Class::SetTransaction { .. }
        | Class::EndTransaction
        | Class::Savepoint => RouteReason::InTransaction,
        Class::Session => RouteReason::Session,
    }
}

/// Picks a member of the read rotation. `Ok(Err(reason))`: none is usable and the read
/// falls back to the primary, for that reason.
fn read(
    cluster: &Cluster,
    avoid: Option<usize>,
    reason: RouteReason,
    retryable: bool,
) -> Result<Result<Decision, RouteReason>, NoReplica> {
    let ok = |i: usize| Some(i) != avoid && cluster.nodes[i].usable() == Usable::Yes;
    let schedule = &cluster.schedule;
    let start = cluster.next.fetch_add(1, Ordering::Relaxed) % schedule.len();
    let order = schedule[start..].iter().chain(&schedule[..start]).copied();
    let picked = match cluster.load_balance {
        LoadBalance::RoundRobin => order.clone().find(|&i| ok(i)),
        LoadBalance::LeastOutstanding => order.clone().filter(|&i| ok(i)).min_by_key(|&i| {
            let n = &cluster.nodes[i];
            // Fewest per unit of weight; the rotation breaks ties.
            (n.outstanding() as u64 * 1024) / n.weight.max(1) as u64
        }),
        LoadBalance::Random => {
            let usable: Vec<usize> = order.clone().filter(|&i| ok(i)).collect();
            // Each appearance in the schedule is one unit of weight.
            (!usable.is_empty()).then(|| usable[rand::random::<usize>() % usable.len()])
        }
    };
    if let Some(node) = picked {
        return Ok(Ok(Decision {
            node,
            reason,
            retryable,
        }));
    }
    let replicas = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.role == Role::Replica);
    let why = if replicas
        .clone()
        .any(|(i, n)| Some(i) != avoid && n.usable() == Usable::Lagging)
    {
        RouteReason::Lag
    } else {
        RouteReason::ReplicaBanned
    };
    if cluster.read_from_primary == ReadFromPrimary::Never {
        return Err(NoReplica);
    }
    Ok(Err(why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    fn cluster(extra: &str) -> Cluster {
        let text = format!(
            "[databases.app]\nport = 5433\nreplicas = [\"127.0.0.1:5434\", \"127.0.0.1:5435\"]\n{extra}"
        );
        Cluster::new(&Config::parse(&text, "t").unwrap(), "app").unwrap()
    }

    fn work(sql: &str) -> Work {
        let (class, hint) = super::super::classify::analyze(sql, &[]);
        Work {
            class,
            hint,
            complete: true,
        }
    }

    const TX: Session = Session {
        pool_mode: PoolMode::Transaction,
        route: RouteMode::Auto,
        avoid: None,
    };

    fn node(c: &Cluster, sql: &str, s: &Session) -> usize {
        decide(c, &work(sql), s).unwrap().node
    }

    #[test]
    fn reads_rotate_over_replicas_and_writes_go_to_the_primary() {
        let c = cluster("");
        let mut seen = [0; 3];
        for _ in 0..10 {
            seen[node(&c, "SELECT 1", &TX)] += 1;
        }
        assert_eq!(seen, [0, 5, 5]);
        for sql in [
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT nextval('s')",
            "BEGIN",
            "SET search_path = x",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        ] {
            assert_eq!(node(&c, sql, &TX), 0, "{sql}");
        }
        assert_ne!(node(&c, "BEGIN READ ONLY", &TX), 0);
        assert_eq!(
            c.routes.get(RouteReason::Read),
            11,
            "ten reads and a read-only transaction"
        );
        assert_eq!(c.routes.get(RouteReason::Locking), 1);
        assert_eq!(c.routes.get(RouteReason::InTransaction), 2);
    }

    #[test]
    fn retryable_only_for_complete_reads_in_transaction_mode() {
        let c = cluster("");
        assert!(decide(&c, &work("SELECT 1"), &TX).unwrap().retryable);
        assert!(!decide(&c, &work("BEGIN READ ONLY"), &TX).unwrap().retryable);
        let partial = Work {
            complete: false,
            ..work("SELECT 1")
        };
        assert_eq!(decide(&c, &partial, &TX).unwrap().node, 0);
    }

    #[test]
    fn hints_and_route_modes_win() {
        let c = cluster("");
        assert_eq!(node(&c, "/* pgsluice: primary */ SELECT 1", &TX), 0);
        assert_ne!(node(&c, "/* pgsluice: replica */ SELECT 1", &TX), 0);
        let primary = Session {
            route: RouteMode::Primary,
            ..TX
        };
        assert_eq!(node(&c, "SELECT 1", &primary), 0);
        assert_ne!(node(&c, "/* pgsluice: replica */ SELECT 1", &primary), 0);
        let session = Session {
            pool_mode: PoolMode::Session,
            ..TX
        };
        assert_eq!(node(&c, "SELECT 1", &session), 0);
        let session_replica = Session {
            route: RouteMode::Replica,
            ..session
        };
        let d = decide(&c, &work("SELECT 1"), &session_replica).unwrap();
        assert_ne!(d.node, 0);
        assert!(!d.retryable, "a session's state cannot move");
        assert_eq!(c.routes.get(RouteReason::Hint), 5);
    }

    #[test]
    fn banned_and_lagging_replicas_get_no_reads() {
        let c = cluster("");
        c.ban(1, Duration::from_secs(60), "test");
        for _ in 0..4 {
            assert_eq!(node(&c, "SELECT 1", &TX), 2);
        }
        let avoid = Session {
            avoid: Some(2),
            ..TX
        };
        let d = decide(&c, &work("SELECT 1"), &avoid).unwrap();
        assert_eq!((d.node, d.reason), (0, RouteReason::ReplicaBanned));
        c.ban(2, Duration::from_secs(60), "test");
        let d = decide(&c, &work("SELECT 1"), &TX).unwrap();
        assert_eq!((d.node, d.reason), (0, RouteReason::ReplicaBanned));

        let never = cluster("read_from_primary = \"never\"\n");
        never.ban(1, Duration::from_secs(60), "test");
        never.ban(2, Duration::from_secs(60), "test");
        assert_eq!(decide(&never, &work("SELECT 1"), &TX), Err(NoReplica));
        assert_eq!(node(&never, "INSERT INTO t VALUES (1)", &TX), 0);
    }

    #[test]
    fn the_primary_can_be_a_member_and_weights_count() {
        let c = cluster("read_from_primary = \"always\"\n");
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[node(&c, "SELECT 1", &TX)] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
        let text = "[databases.app]\nport = 5433\nload_balance = \"random\"\n\
                    replicas = [{ host = \"127.0.0.1\", port = 5434, weight = 3 }, \"127.0.0.1:5435\"]\n";
        let c = Cluster::new(&Config::parse(text, "t").unwrap(), "app").unwrap();
        let mut seen = [0; 3];
        for _ in 0..4000 {
            seen[node(&c, "SELECT 1", &TX)] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1] > 2 * seen[2], "{seen:?}");
    }

    #[test]
    fn least_outstanding_prefers_the_idle_replica() {
        let c = std::sync::Arc::new(cluster("load_balance = \"least_outstanding\"\n"));
        let _busy = (c.link(1), c.link(1));
        for _ in 0..4 {
            assert_eq!(node(&c, "SELECT 1", &TX), 2);
        }
    }

    #[test]
    fn a_unit_is_a_read_only_if_every_statement_is() {
        let w = work("SELECT 1");
        assert_eq!(w.and(Class::Read, None).class, Class::Read);
        assert_eq!(
            w.and(Class::Write(WriteReason::Locking), None).class,
            Class::Write(WriteReason::Locking)
        );
        assert_eq!(
            w.and(Class::Session, None).class,
            Class::Write(WriteReason::Statement)
        );
        let begin = work("BEGIN READ ONLY");
        assert_eq!(
            begin.and(Class::Write(WriteReason::Statement), None).class,
            begin.class
        );
        assert_eq!(
            w.and(Class::Read, Some(Hint::Primary)).hint,
            Some(Hint::Primary)
        );
    }
}
