//! What the pooler counts and how it reports it.
//!
//! Hot paths touch only handles resolved once per pool ([`PoolMetrics`]) or plain atomics
//! ([`RouteCounters`]); gauges of pools, clients and nodes are read from their owners when
//! Prometheus scrapes (see `report`). `http` serves /metrics, /health and /ready.

pub mod http;
pub mod report;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// A read retried on another node after its replica failed before answering.
    Retry,
}

impl RouteReason {
    pub const ALL: [RouteReason; 10] = [
        RouteReason::Read,
        RouteReason::Write,
        RouteReason::Locking,
        RouteReason::WriteFunction,
        RouteReason::InTransaction,
        RouteReason::Session,
        RouteReason::Hint,
        RouteReason::ReplicaBanned,
        RouteReason::Lag,
        RouteReason::Retry,
    ];

    /// The label value metrics and the admin console use.
    pub fn name(self) -> &'static str {
        match self {
            RouteReason::Read => "read",
            RouteReason::Write => "write",
            RouteReason::Locking => "locking",
            RouteReason::WriteFunction => "write_function",
            RouteReason::InTransaction => "in_transaction",
            RouteReason::Session => "session",
            RouteReason::Hint => "hint",
            RouteReason::ReplicaBanned => "replica_banned",
            RouteReason::Lag => "lag",
            RouteReason::Retry => "retry",
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

/// Buckets for waits and query and transaction times, in seconds: from 100 µs to 30 s.
const TIME_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

const POOL_LABELS: &[&str] = &["database", "user", "node", "instance"];

/// Every metric family of the process, in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub instance: String,
    transactions: IntCounterVec,
    queries: IntCounterVec,
    bytes_received: IntCounterVec,
    bytes_sent: IntCounterVec,
    server_connects: IntCounterVec,
    server_connect_errors: IntCounterVec,
    prepared_hits: IntCounterVec,
    prepared_misses: IntCounterVec,
    prepared_evictions: IntCounterVec,
    wait_seconds: HistogramVec,
    query_seconds: HistogramVec,
    transaction_seconds: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub cancels: IntCounter,
    pub(crate) gauges: report::Gauges,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(TIME_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, POOL_LABELS).expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

pub(crate) fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    pub fn new(instance: &str) -> Metrics {
        let r = Registry::new();
        let l = POOL_LABELS;
        Metrics {
            transactions: counter(
                &r,
                "pgsluice_transactions_total",
                "Transactions completed.",
                l,
            ),
            queries: counter(
                &r,
                "pgsluice_queries_total",
                "Queries (Query or Execute messages) sent to servers.",
                l,
            ),
            bytes_received: counter(
                &r,
                "pgsluice_client_bytes_received_total",
                "Bytes received from clients while they held a server.",
                l,
            ),
            bytes_sent: counter(
                &r,
                "pgsluice_client_bytes_sent_total",
                "Bytes received from servers for clients.",
                l,
            ),
            server_connects: counter(
                &r,
                "pgsluice_server_connects_total",
                "Server connections opened.",
                l,
            ),
            server_connect_errors: counter(
                &r,
                "pgsluice_server_connect_errors_total",
                "Server connections that failed to open or log in.",
                l,
            ),
            prepared_hits: counter(
                &r,
                "pgsluice_prepared_cache_hits_total",
                "Statements a server had already prepared when a client used them.",
                l,
            ),
            prepared_misses: counter(
                &r,
                "pgsluice_prepared_cache_misses_total",
                "Statements prepared on a server because it did not have them.",
                l,
            ),
            prepared_evictions: counter(
                &r,
                "pgsluice_prepared_cache_evictions_total",
                "Statements closed on a server to stay within max_prepared_statements.",
                l,
            ),
            wait_seconds: histogram(
                &r,
                "pgsluice_client_wait_seconds",
                "How long clients waited for a server connection.",
            ),
            query_seconds: histogram(
                &r,
                "pgsluice_query_seconds",
                "Time from a query (or batch up to Sync) reaching a server to its ReadyForQuery.",
            ),
            transaction_seconds: histogram(
                &r,
                "pgsluice_transaction_seconds",
                "Time from a transaction's first query to its end.",
            ),
            auth_failures: counter(
                &r,
                "pgsluice_client_auth_failures_total",
                "Client logins refused for a wrong password or an unknown user.",
                &["database", "user", "instance"],
            ),
            cancels: {
                let c = IntCounter::with_opts(
                    Opts::new(
                        "pgsluice_cancel_requests_total",
                        "Cancel requests received from clients.",
                    )
                    .const_label("instance", instance),
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            gauges: report::Gauges::new(&r),
            instance: instance.to_owned(),
            registry: r,
        }
    }

    /// The handles one pool updates, resolved once.
    pub fn for_pool(&self, database: &str, user: &str, node: &str) -> PoolMetrics {
        let l = [database, user, node, self.instance.as_str()];
        PoolMetrics {
            transactions: self.transactions.with_label_values(&l),
            queries: self.queries.with_label_values(&l),
            bytes_received: self.bytes_received.with_label_values(&l),
            bytes_sent: self.bytes_sent.with_label_values(&l),
            server_connects: self.server_connects.with_label_values(&l),
            server_connect_errors: self.server_connect_errors.with_label_values(&l),
            prepared_hits: self.prepared_hits.with_label_values(&l),
            prepared_misses: self.prepared_misses.with_label_values(&l),
            prepared_evictions: self.prepared_evictions.with_label_values(&l),
            wait: self.wait_seconds.with_label_values(&l),
            query: self.query_seconds.with_label_values(&l),
            transaction: self.transaction_seconds.with_label_values(&l),
        }
    }

    pub fn auth_failed(&self, database: &str, user: &str) {
        self.auth_failures
            .with_label_values(&[database, user, self.instance.as_str()])
            .inc();
    }
}

/// One pool's counters and histograms. Clones share the same values.
#[derive(Clone)]
pub struct PoolMetrics {
    pub transactions: IntCounter,
    pub queries: IntCounter,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub server_connects: IntCounter,
    pub server_connect_errors: IntCounter,
    pub prepared_hits: IntCounter,
    pub prepared_misses: IntCounter,
    pub prepared_evictions: IntCounter,
    pub wait: Histogram,
    pub query: Histogram,
    pub transaction: Histogram,
}

/// The process's name in the `instance` label: `instance_name`, else the host name.
pub fn instance_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgsluice".into())
}
