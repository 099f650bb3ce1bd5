//! The one place that decides where work runs: the primary, or which replica; how a link
//! takes the client's work; and what happens when a node fails under it (retry elsewhere, ban).
//!
//! It is handed the facts (what the work is, the client's session, the cluster's health) and
//! returns a decision; it does no IO. The client session acts on the decision.

use super::classify::{Class, Hint, WriteReason};
use super::reason::{RouteCounters, RouteReason};
use super::work::Work;
use crate::cluster::{Cluster, Leader, Lsn, Role, Usable};
use crate::config::{LoadBalance, PoolMode, ReadFromPrimary};
use crate::protocol::sqlstate;
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

/// What the session knows about the client.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub pool_mode: PoolMode,
    pub route: RouteMode,
    /// A node this work just failed on: try another.
    pub avoid: Option<usize>,
    /// How many times this unit of work has been placed again after a failure.
    pub retries: usize,
    /// The unit turned out to write (a replica refused it with 25006): it runs on the primary.
    pub wrote: bool,
    /// How far a replica must have replayed for this client's reads (read_your_writes); zero
    /// for any.
    pub floor: Lsn,
    /// The read has waited for a replica to reach the floor already: no more waiting.
    pub waited: bool,
}

/// How a link takes the client's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Everything the client sends goes through until the server is released: the primary,
    /// where whatever follows may run too.
    Stream,
    /// One unit (a Query, or messages up to Sync) at a time, so that each implicit
    /// transaction is routed on its own: a replica.
    OneUnit,
    /// One unit whose answer is held back until it is complete (or long), so that the unit
    /// can run again elsewhere if its node fails first.
    Retryable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub node: usize,
    pub reason: RouteReason,
    pub flow: Flow,
    /// The work may write on the primary: once it commits, its WAL position becomes the
    /// client's floor (read_your_writes).
    pub writes: bool,
}

/// Why a unit of work could not finish on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No server could be checked out; `connect` when opening one failed, `recovering` when
    /// its pool will try the login again soon (`Pool::login_recovering`), `was_primary` when
    /// the node was the primary as the work was placed there.
    Checkout {
        connect: bool,
        recovering: bool,
        was_primary: bool,
    },
    /// The server sent an error while the unit's answer was held back.
    Error(Retry),
    /// The server's connection broke.
    Lost,
}

/// Work that runs again on another node, whether the node it failed on is banned, and
/// whether the work must go to the primary (it writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub ban: bool,
    pub why: &'static str,
    pub wrote: bool,
}

/// Why work could not be placed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    #[error("no replica is available for reads (read_from_primary = never)")]
    NoReplica,
    /// A read whose floor no usable replica has reached yet: wait for one (once), then ask
    /// again.
    #[error("no replica has replayed this client's writes yet")]
    Behind,
    /// More than one node claims to be primary (role = "auto"): a write could land on
    /// either, so none goes until one remains.
    #[error("more than one node claims to be the primary: writes are refused until one remains")]
    Contested,
}

/// Decides where the client's next unit of work runs, and counts the decision. `work` is only
/// asked for when there is a choice to make: a database without replicas sends everything to
/// its primary without a look at the query.
pub fn decide(
    cluster: &Cluster,
    counters: &RouteCounters,
    session: &Session,
    work: impl FnOnce() -> Work,
) -> Result<Decision, Unplaced> {
    let d = if cluster.has_replicas() || session.route != RouteMode::Auto {
        let d = place(cluster, &work(), session)?;
        if d.node == cluster.primary() && cluster.leader() == Leader::Contested {
            return Err(Unplaced::Contested);
        }
        tracing::debug!(db = %cluster.database, node = %cluster.nodes[d.node].addr, reason = d.reason.name(), "route");
        d
    } else {
        Decision {
            node: cluster.primary(),
            reason: RouteReason::NoReplicas,
            flow: Flow::Stream,
            writes: false,
        }
    };
    counters.bump(d.reason);
    Ok(d)
}

/// Whether a failed unit runs again elsewhere, and counts it when it does. Each node is
/// tried at most once per unit. A failed checkout is retried only away from a replica (the
/// primary is the last resort); a failure under a running unit only if its answer was held
/// back (`Flow::Retryable`), which the caller knows. Only replicas are banned by the data
/// path: the primary keeps its writes whatever happens, and its health is the checker's.
pub fn retry(
    cluster: &Cluster,
    counters: &RouteCounters,
    session: &Session,
    node: usize,
    failure: Failure,
) -> Option<Retry> {
    if let Failure::Checkout {
        connect: true,
        recovering,
        was_primary,
    } = failure
    {
        if was_primary && node != cluster.primary() {
            // A failover: the health check found another primary while the work waited for
            // the old one's login. It goes there, however many tries came before; the old
            // primary is the checker's to judge.
            counters.bump(RouteReason::Retry);
            return Some(Retry {
                ban: false,
                why: "the primary has moved",
                wrote: false,
            });
        }
        if recovering && node == cluster.primary() {
            // Nowhere else to go: the same node again, once its pool's short wait is over
            // (a restart of the primary), bounded by the pool (server down, query_wait_timeout).
            counters.bump(RouteReason::Retry);
            return Some(Retry {
                ban: false,
                why: "server login failed, trying again",
                wrote: false,
            });
        }
    }
    if session.retries >= cluster.nodes.len() {
        return None;
    }
    let retry = match failure {
        Failure::Checkout { .. } if node == cluster.primary() => return None,
        Failure::Checkout { connect, .. } => Retry {
            ban: connect,
            why: "connection failed",
            wrote: false,
        },
        Failure::Error(retry) => retry,
        Failure::Lost => Retry {
            ban: true,
            why: "server connection lost",
            wrote: false,
        },
    };
    counters.bump(RouteReason::Retry);
    Some(Retry {
        ban: retry.ban && may_ban(cluster, node),
        ..retry
    })
}

/// Whether the data path may ban `node` after a failure (a retried unit's, or a server that
/// broke under work that cannot be retried): only replicas. The primary keeps its writes
/// whatever happens, and its health is the checker's to judge.
pub fn may_ban(cluster: &Cluster, node: usize) -> bool {
    node != cluster.primary()
}

/// Server errors a held-back read may be retried after elsewhere, and whether its node is
/// then banned.
pub fn retryable_error(code: &[u8]) -> Option<Retry> {
    let code = std::str::from_utf8(code).ok()?;
    match code {
        sqlstate::ADMIN_SHUTDOWN | sqlstate::CRASH_SHUTDOWN | sqlstate::CANNOT_CONNECT_NOW => {
            Some(Retry {
                ban: true,
                why: "server shutting down",
                wrote: false,
            })
        }
        // A replica cancels queries that conflict with recovery.
        sqlstate::SERIALIZATION_FAILURE => Some(Retry {
            ban: false,
            why: "conflict with recovery",
            wrote: false,
        }),
        // What looked like a read writes (a function that writes, a write the classifier
        // missed): the replica refused it before doing anything, and the primary can run it.
        sqlstate::READ_ONLY_SQL_TRANSACTION => Some(Retry {
            ban: false,
            why: "a read that writes",
            wrote: true,
        }),
        _ => None,
    }
}

/// How a link takes a read: one unit at a time wherever it runs, so that work after it is
/// placed on its own (and, on the primary, a write after it is known to be one).
fn read_flow(retryable: bool) -> Flow {
    if retryable {
        Flow::Retryable
    } else {
        Flow::OneUnit
    }
}

fn place(cluster: &Cluster, work: &Work, session: &Session) -> Result<Decision, Unplaced> {
    let primary = cluster.primary();
    let on_primary = |reason| Decision {
        node: primary,
        reason,
        flow: Flow::Stream,
        writes: true,
    };
    let read_on_primary = |reason| read_on(primary, reason);
    let transaction_mode = session.pool_mode == PoolMode::Transaction;
    // Each node at most once per unit of work.
    let retryable = transaction_mode
        && work.complete
        && work.class == Class::Read
        && session.retries < cluster.nodes.len();
    if session.wrote {
        return Ok(on_primary(RouteReason::WriteFunction));
    }
    let wanted = match work.hint {
        Some(Hint::Primary) => RouteMode::Primary,
        Some(Hint::Replica) => RouteMode::Replica,
        None => session.route,
    };
    match wanted {
        RouteMode::Primary => {
            // A plain read writes nothing a later read must wait for.
            let writes = work.class != Class::Read;
            return Ok(Decision {
                writes,
                ..on_primary(RouteReason::Hint)
            });
        }
        RouteMode::Replica if cluster.has_replicas() => {
            return Ok(read(cluster, session, RouteReason::Hint, retryable)?.or(read_on_primary));
        }
        _ => {}
    }
    if !cluster.has_replicas() {
        return Ok(Decision {
            writes: false,
            ..on_primary(reason_of(work.class))
        });
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
    Ok(read(cluster, session, RouteReason::Read, retryable)?.or(read_on_primary))
}

/// A read that falls back to the primary (`node`): one unit, writing nothing.
fn read_on(node: usize, reason: RouteReason) -> Decision {
    Decision {
        node,
        reason,
        flow: Flow::OneUnit,
        writes: false,
    }
}

fn reason_of(class: Class) -> RouteReason {
    match class {
        Class::Read => RouteReason::Read,
        Class::Write(WriteReason::Locking) => RouteReason::Locking,
        Class::Write(WriteReason::WriteFunction) => RouteReason::WriteFunction,
        Class::Write(WriteReason::ServerState) => RouteReason::ServerState,
        Class::Write(_) => RouteReason::Write,
        Class::Begin { .. }
        | Class::SetTransaction { .. }
        | Class::EndTransaction
        | Class::Savepoint => RouteReason::InTransaction,
        Class::Session => RouteReason::Session,
    }
}

/// A pick from the read rotation.
enum Pick {
    Node(Decision),
    /// No member is usable: the read falls back to the primary, for this reason.
    Fallback(RouteReason),
}

impl Pick {
    fn or(self, on_primary: impl FnOnce(RouteReason) -> Decision) -> Decision {
        match self {
            Pick::Node(d) => d,
            Pick::Fallback(reason) => on_primary(reason),
        }
    }
}

/// Picks a member of the read rotation, or says why none is usable and the read
/// falls back to the primary, for that reason. A replica must have replayed up to the
/// client's floor; when only that keeps every usable one out, the read waits for one first,
/// once.
fn read(
    cluster: &Cluster,
    session: &Session,
    reason: RouteReason,
    retryable: bool,
) -> Result<Pick, Unplaced> {
    let avoid = session.avoid;
    // While two nodes claim to be primary, neither is read from: one of them is diverging.
    let contested = cluster.leader() == Leader::Contested;
    let usable = |i: usize| {
        Some(i) != avoid
            && cluster.nodes[i].usable() == Usable::Yes
            && !(contested && cluster.role(i) == Role::Primary)
    };
    let floor = session.floor;
    let primary = cluster.primary();
    let caught_up = |i: usize| i == primary || cluster.nodes[i].replayed() >= floor;
    let behind = floor > Lsn(0) && {
        let schedule = cluster.schedule(cluster.read_from_primary == ReadFromPrimary::Always);
        let any_usable = schedule.iter().any(|&i| usable(i));
        any_usable && !schedule.iter().any(|&i| usable(i) && caught_up(i))
    };
    if behind && !session.waited {
        return Err(Unplaced::Behind);
    }
    // With read_from_primary = never, a replica behind still beats no read at all.
    let floor_applies = !(behind && cluster.read_from_primary == ReadFromPrimary::Never);
    let ok = |i: usize| usable(i) && (!floor_applies || caught_up(i));
    // The primary is a member of the rotation only when asked to be.
    let schedule = cluster.schedule(cluster.read_from_primary == ReadFromPrimary::Always);
    let start = cluster.next.fetch_add(1, Ordering::Relaxed) % schedule.len().max(1);
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
        return Ok(Pick::Node(Decision {
            node,
            reason,
            flow: read_flow(retryable),
            writes: false,
        }));
    }
    if behind {
        return Ok(Pick::Fallback(RouteReason::ReadYourWrites));
    }
    let replicas = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| cluster.role(*i) == Role::Replica);
    let why = if replicas
        .clone()
        .any(|(i, n)| Some(i) != avoid && n.usable() == Usable::Lagging)
    {
        RouteReason::Lag
    } else {
        RouteReason::ReplicaBanned
    };
    if cluster.read_from_primary == ReadFromPrimary::Never {
        return Err(Unplaced::NoReplica);
    }
    Ok(Pick::Fallback(why))
}

#[cfg(test)]
mod tests;
