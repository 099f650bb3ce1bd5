//! The counters the data path bumps, defined below everything that bumps or reads them.
//!
//! Pools hold a [`PoolMetrics`] resolved once per pool from [`PoolFamilies`]; `metrics/`
//! registers the families and reads pools' and clusters' plain stats when Prometheus scrapes.
//! Living here, below `pool/` and `metrics/`, is what keeps those two from importing each other.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `unix_micros` as of `at`, from the monotonic clock the caller already read: the wall clock
/// is read once per process. For times that are shown (SHOW CLIENTS), where a slewed wall
/// clock's drift over the process's life does not matter.
pub fn unix_micros_at(at: std::time::Instant) -> u64 {
    static BASE: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    let (base, micros) = *BASE.get_or_init(|| (std::time::Instant::now(), unix_micros()));
    micros + at.saturating_duration_since(base).as_micros() as u64
}

/// Buckets for waits and query and transaction times, in seconds: from 100 µs to 30 s.
const TIME_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

const POOL_LABELS: &[&str] = &["database", "user", "node", "instance"];

/// Registers a counter family in `registry`.
pub fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
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

/// The metric families every pool has a share of, labelled by database, user and node.
pub struct PoolFamilies {
    instance: String,
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
    pins: IntCounterVec,
    pinned: IntGaugeVec,
    floor_waits: HistogramVec,
}

impl PoolFamilies {
    pub fn new(r: &Registry, instance: &str) -> PoolFamilies {
        let l = POOL_LABELS;
        let floor_waits = HistogramVec::new(
            HistogramOpts::new(
                "pgsluice_read_your_writes_wait_seconds",
                "Reads that waited for a replica to replay their client's writes, by where they \
                 went then (replica, or primary when none caught up in read_your_writes_wait).",
            )
            .buckets(TIME_BUCKETS.to_vec()),
            &["database", "user", "outcome", "instance"],
        )
        .expect("valid metric");
        r.register(Box::new(floor_waits.clone()))
            .expect("unique metric");
        PoolFamilies {
            floor_waits,
            instance: instance.to_owned(),
            transactions: counter(
                r,
                "pgsluice_transactions_total",
                "Transactions completed.",
                l,
            ),
            queries: counter(
                r,
                "pgsluice_queries_total",
                "Queries (Query or Execute messages) sent to servers.",
                l,
            ),
            bytes_received: counter(
                r,
                "pgsluice_client_bytes_received_total",
                "Bytes received from clients while they held a server.",
                l,
            ),
            bytes_sent: counter(
                r,
                "pgsluice_client_bytes_sent_total",
                "Bytes received from servers for clients.",
                l,
            ),
            server_connects: counter(
                r,
                "pgsluice_server_connects_total",
                "Server connections opened.",
                l,
            ),
            server_connect_errors: counter(
                r,
                "pgsluice_server_connect_errors_total",
                "Server connections that failed to open or log in.",
                l,
            ),
            prepared_hits: counter(
                r,
                "pgsluice_prepared_cache_hits_total",
                "Statements a server had already prepared when a client used them.",
                l,
            ),
            prepared_misses: counter(
                r,
                "pgsluice_prepared_cache_misses_total",
                "Statements prepared on a server because it did not have them.",
                l,
            ),
            prepared_evictions: counter(
                r,
                "pgsluice_prepared_cache_evictions_total",
                "Statements closed on a server to stay within max_prepared_statements.",
                l,
            ),
            wait_seconds: histogram(
                r,
                "pgsluice_client_wait_seconds",
                "How long clients waited for a server connection.",
            ),
            query_seconds: histogram(
                r,
                "pgsluice_query_seconds",
                "Time from a query (or batch up to Sync) reaching a server to its ReadyForQuery.",
            ),
            transaction_seconds: histogram(
                r,
                "pgsluice_transaction_seconds",
                "Time from a transaction's first query to its end.",
            ),
            pins: counter(
                r,
                "pgsluice_pins_total",
                "Clients pinned to their server connection by a session-only feature \
                 (advisory_lock, listen, temp_table, hold_cursor, prepare, load).",
                &["database", "user", "feature", "instance"],
            ),
            pinned: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "pgsluice_pinned_clients",
                        "Clients that keep their server connection for a session-only feature.",
                    ),
                    &["database", "user", "instance"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
        }
    }

    /// The handles of one (database, user)'s pins, resolved once.
    pub fn for_pins(&self, database: &str, user: &str) -> PinMetrics {
        PinMetrics {
            pins: self.pins.clone(),
            labels: [database.into(), user.into(), self.instance.as_str().into()],
            pinned: self
                .pinned
                .with_label_values(&[database, user, self.instance.as_str()]),
        }
    }

    /// The handles of one (database, user)'s waits for replay, resolved once.
    pub fn for_floor(&self, database: &str, user: &str) -> FloorMetrics {
        let waited = |outcome: &str| {
            self.floor_waits
                .with_label_values(&[database, user, outcome, self.instance.as_str()])
        };
        FloorMetrics {
            to_replica: waited("replica"),
            to_primary: waited("primary"),
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

/// Pins of one (database, user): counted by feature when they happen (rarely), and a gauge of
/// the clients pinned now.
#[derive(Clone)]
pub struct PinMetrics {
    pins: IntCounterVec,
    labels: [Box<str>; 3],
    pub pinned: IntGauge,
}

impl PinMetrics {
    pub fn pinned_by(&self, feature: &str) {
        let [db, user, instance] = &self.labels;
        self.pins
            .with_label_values(&[db, user, feature, instance])
            .inc();
    }
}

/// Reads of one (database, user) that waited for a replica to replay their client's writes.
#[derive(Clone)]
pub struct FloorMetrics {
    pub to_replica: Histogram,
    pub to_primary: Histogram,
}
