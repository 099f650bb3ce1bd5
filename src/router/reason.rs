//! Why work went where it went: the reason of every routing decision, and one set of counters
//! per database that the policy bumps and the metrics report reads.
//!
//! The counters are keyed by database name, not held by a cluster, so that a reload that
//! replaces a cluster does not start its counters from zero again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a routing decision went where it went. One counter per reason and database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReason {
    /// A read sent to a replica (or to the primary as a member of the read rotation).
    Read,
    /// A statement that writes, or that is not known to be a read.
    Write,
    /// SELECT … FOR UPDATE / SHARE.
    Locking,
    /// A read that calls a function known to write.
    WriteFunction,
    /// A read of a view of one server's own state (pg_stat_activity, pg_locks, …).
    ServerState,
    /// An explicit transaction (other than a read-only one), which runs on the primary.
    InTransaction,
    /// Session state (SET, LISTEN, …) or a session-mode client pinned to the primary.
    Session,
    /// A hint (comment, `SET pgsluice.route`, startup option) chose the node.
    Hint,
    /// A read sent to the primary because every replica is banned.
    ReplicaBanned,
    /// A read sent to the primary because every usable replica lags too far behind.
    Lag,
    /// A read sent to the primary because no usable replica had replayed the client's
    /// writes in time (read_your_writes).
    ReadYourWrites,
    /// A read retried on another node after its replica failed before answering.
    Retry,
    /// The database has no replicas: everything goes to the primary unlooked at.
    NoReplicas,
}

impl RouteReason {
    pub const ALL: [RouteReason; 13] = [
        RouteReason::Read,
        RouteReason::Write,
        RouteReason::Locking,
        RouteReason::WriteFunction,
        RouteReason::ServerState,
        RouteReason::InTransaction,
        RouteReason::Session,
        RouteReason::Hint,
        RouteReason::ReplicaBanned,
        RouteReason::Lag,
        RouteReason::ReadYourWrites,
        RouteReason::Retry,
        RouteReason::NoReplicas,
    ];

    /// The label value metrics and the admin console use.
    pub fn name(self) -> &'static str {
        match self {
            RouteReason::Read => "read",
            RouteReason::Write => "write",
            RouteReason::Locking => "locking",
            RouteReason::WriteFunction => "write_function",
            RouteReason::ServerState => "server_state",
            RouteReason::InTransaction => "in_transaction",
            RouteReason::Session => "session",
            RouteReason::Hint => "hint",
            RouteReason::ReplicaBanned => "replica_banned",
            RouteReason::Lag => "lag",
            RouteReason::ReadYourWrites => "read_your_writes",
            RouteReason::Retry => "retry",
            RouteReason::NoReplicas => "no_replicas",
        }
    }
}

/// Routing decisions of one database, by reason.
#[derive(Debug, Default)]
pub struct RouteCounters([AtomicU64; RouteReason::ALL.len()]);

impl RouteCounters {
    pub fn bump(&self, reason: RouteReason) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: RouteReason) -> u64 {
        self.0[reason as usize].load(Ordering::Relaxed)
    }
}

/// Every database's counters, made on first use.
#[derive(Debug, Default)]
pub struct Routes {
    map: Mutex<BTreeMap<String, Arc<RouteCounters>>>,
}

impl Routes {
    /// The counters of `database`; the same ones for as long as the process runs.
    pub fn of(&self, database: &str) -> Arc<RouteCounters> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(database.to_owned()).or_default().clone()
    }

    /// Every database's counters, by name.
    pub fn all(&self) -> Vec<(String, Arc<RouteCounters>)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}
