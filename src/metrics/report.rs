//! Gauges read from their owners when Prometheus scrapes: pools, clients, nodes, and the
//! routing counters kept as plain atomics. Nothing here runs on the data path.

use super::{gauge, Metrics};
use crate::cluster::{Clusters, Role, Usable};
use crate::config::Config;
use crate::pool::{ClientCounts, PoolStats, Pools};
use crate::router::{RouteReason, Routes};
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Mutex;

pub(crate) struct Gauges {
    clients: IntGaugeVec,
    servers: IntGaugeVec,
    pool_size: IntGaugeVec,
    routes: IntCounterVec,
    lag_bytes: IntGaugeVec,
    lag_seconds: GaugeVec,
    banned: IntGaugeVec,
    /// One scrape at a time: each rebuilds the gauges from scratch.
    scrape: Mutex<()>,
}

impl Gauges {
    pub(crate) fn new(r: &Registry) -> Gauges {
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "pgsluice_replica_lag_seconds",
                "Replay lag of a replica behind its primary, in seconds.",
            ),
            &["database", "node", "instance"],
        )
        .expect("valid metric");
        r.register(Box::new(lag_seconds.clone()))
            .expect("unique metric");
        let routes = IntCounterVec::new(
            Opts::new(
                "pgsluice_routing_decisions_total",
                "Where work was sent and why (reason read, write, locking, write_function, \
                 in_transaction, session, hint, replica_banned, lag, retry, no_replicas).",
            ),
            &["database", "reason", "instance"],
        )
        .expect("valid metric");
        r.register(Box::new(routes.clone())).expect("unique metric");
        Gauges {
            clients: gauge(
                r,
                "pgsluice_clients",
                "Client connections by state: active (linked to a server), waiting (for a \
                 server), idle.",
                &["database", "user", "state", "instance"],
            ),
            servers: gauge(
                r,
                "pgsluice_servers",
                "Server connections by state: active (linked to a client), idle, used (idle \
                 past server_check_delay), login (being opened).",
                &["database", "user", "node", "state", "instance"],
            ),
            pool_size: gauge(
                r,
                "pgsluice_pool_size",
                "Most server connections the pool opens (pool_size).",
                &["database", "user", "node", "instance"],
            ),
            routes,
            lag_bytes: gauge(
                r,
                "pgsluice_replica_lag_bytes",
                "Bytes of WAL a replica has yet to replay, as of the last health check.",
                &["database", "node", "instance"],
            ),
            lag_seconds,
            banned: gauge(
                r,
                "pgsluice_node_banned",
                "1 while a node gets no reads (banned after a failure, until a health check \
                 passes).",
                &["database", "node", "role", "instance"],
            ),
            scrape: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// The text exposition of every metric, with gauges read from `pools` and `clusters`,
    /// and PgBouncer's families when `metrics_pgbouncer_compat` is on.
    pub fn render(
        &self,
        pools: &Pools,
        clusters: &Clusters,
        routes: &Routes,
        config: &Config,
    ) -> String {
        let g = &self.gauges;
        let _one = g.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let inst = self.instance.as_str();
        // Rebuilt from scratch, so that pools and nodes that are gone leave no series behind.
        g.clients.reset();
        g.servers.reset();
        g.pool_size.reset();
        g.lag_bytes.reset();
        g.lag_seconds.reset();
        g.banned.reset();
        for members in pools.all_members() {
            let (db, user) = (&members.cluster.database, members.user.as_str());
            let stats = members.pool_stats();
            let c = members.client_counts(&stats);
            for (state, n) in [
                ("active", c.active),
                ("waiting", c.waiting),
                ("idle", c.idle),
            ] {
                g.clients
                    .with_label_values(&[db, user, state, inst])
                    .set(n as i64);
            }
            for (pool, s) in members.pools.iter().zip(&stats) {
                let node = members.cluster.nodes[pool.node].addr.as_str();
                for (state, n) in [
                    ("active", s.active),
                    ("idle", s.idle),
                    ("used", s.used),
                    ("login", s.login),
                ] {
                    g.servers
                        .with_label_values(&[db, user, node, state, inst])
                        .set(n as i64);
                }
                g.pool_size
                    .with_label_values(&[db, user, node, inst])
                    .set(pool.setup().settings.pool_size as i64);
            }
        }
        for (db, counters) in routes.all() {
            for reason in RouteReason::ALL {
                let c = g.routes.with_label_values(&[&db, reason.name(), inst]);
                // Counters only go up: add what happened since the last scrape.
                c.inc_by(counters.get(reason).saturating_sub(c.get()));
            }
        }
        for cluster in clusters.all() {
            let db = cluster.database.as_str();
            for (i, node) in cluster.nodes.iter().enumerate() {
                let (role, was) = match cluster.role(i) {
                    Role::Primary => ("primary", "replica"),
                    Role::Replica => ("replica", "primary"),
                };
                // A node whose role changed (role = "auto") is shown under its new one only.
                let _ = g.banned.remove_label_values(&[db, &node.addr, was, inst]);
                g.banned
                    .with_label_values(&[db, &node.addr, role, inst])
                    .set((node.usable() == Usable::Banned) as i64);
                if role == "replica" {
                    let (bytes, time) = node.lag();
                    g.lag_bytes
                        .with_label_values(&[db, &node.addr, inst])
                        .set(bytes as i64);
                    g.lag_seconds
                        .with_label_values(&[db, &node.addr, inst])
                        .set(time.as_secs_f64());
                }
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        let mut text = String::from_utf8(out).expect("the text format is UTF-8");
        if config.general.metrics_pgbouncer_compat {
            pgbouncer_compat(&mut text, pools, clusters, config);
        }
        text
    }
}

/// One family in the text format, written by hand: PgBouncer's names, labels and units as
/// pgbouncer_exporter emits them (no `instance` label: Prometheus adds its own there).
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        Family { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        self.out.push_str(&format!(
            "{}{{{}}} {}\n",
            self.name,
            labels.join(","),
            value
        ));
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A database's counters summed over its pools, as SHOW STATS reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub queries: u64,
    pub query_seconds: f64,
    pub received: u64,
    pub sent: u64,
    pub wait_seconds: f64,
    pub xacts: u64,
    pub xact_seconds: f64,
    /// Server connections open now.
    pub servers: usize,
}

/// Each database's totals, by name.
pub type ByDatabase = std::collections::BTreeMap<String, Totals>;

/// Every database's totals, summed over users and nodes.
pub fn totals(pools: &Pools) -> ByDatabase {
    let mut totals = ByDatabase::default();
    for m in pools.all_members() {
        let t = totals.entry(m.cluster.database.clone()).or_default();
        for p in &m.pools {
            let pm = &p.metrics;
            t.queries += pm.queries.get();
            t.query_seconds += pm.query.get_sample_sum();
            t.received += pm.bytes_received.get();
            t.sent += pm.bytes_sent.get();
            t.wait_seconds += pm.wait.get_sample_sum();
            t.xacts += pm.transactions.get();
            t.xact_seconds += pm.transaction.get_sample_sum();
            t.servers += p.stats().open();
        }
    }
    totals
}

/// The pgbouncer_pools_*, pgbouncer_stats_totals_* and pgbouncer_databases_* families.
fn pgbouncer_compat(out: &mut String, pools: &Pools, clusters: &Clusters, config: &Config) {
    compat_pools(out, pools);
    let totals = totals(pools);
    compat_totals(out, &totals);
    compat_databases(out, &totals, clusters, config);
}

/// SHOW POOLS: one row per (database, user); a pool's nodes are summed.
fn compat_pools(out: &mut String, pools: &Pools) {
    let members = pools.all_members();
    let pool_rows: Vec<_> = members
        .iter()
        .map(|m| {
            let stats = m.pool_stats();
            let mut sum = PoolStats::default();
            for s in &stats {
                sum.active += s.active;
                sum.idle += s.idle;
                sum.used += s.used;
                sum.login += s.login;
                sum.max_wait = sum.max_wait.max(s.max_wait);
            }
            (m, m.client_counts(&stats), sum)
        })
        .collect();
    type PoolColumn = fn(&ClientCounts, &PoolStats) -> f64;
    let columns: [(&str, &str, PoolColumn); 8] = [
        ("pgbouncer_pools_client_active_connections", "Client connections linked to server connection and able to process queries, shown as connection", |c, _| c.active as f64),
        ("pgbouncer_pools_client_waiting_connections", "Client connections waiting on a server connection, shown as connection", |c, _| c.waiting as f64),
        ("pgbouncer_pools_server_active_connections", "Server connections linked to a client connection, shown as connection", |_, s| s.active as f64),
        ("pgbouncer_pools_server_idle_connections", "Server connections idle and ready for a client query, shown as connection", |_, s| s.idle as f64),
        ("pgbouncer_pools_server_used_connections", "Server connections idle more than server_check_delay, needing server_check_query, shown as connection", |_, s| s.used as f64),
        ("pgbouncer_pools_server_testing_connections", "Server connections currently running either server_reset_query or server_check_query, shown as connection", |_, _| 0.0),
        ("pgbouncer_pools_server_login_connections", "Server connections currently in the process of logging in, shown as connection", |_, s| s.login as f64),
        ("pgbouncer_pools_client_maxwait_seconds", "Age of oldest unserved client connection, shown as second", |_, s| s.max_wait.as_secs_f64()),
    ];
    for (name, help, get) in columns {
        let mut f = Family::new(out, name, "gauge", help);
        for (m, c, s) in &pool_rows {
            f.sample(
                &[("database", &m.cluster.database), ("user", &m.user)],
                get(c, s),
            );
        }
    }
}

/// SHOW STATS totals: one row per database.
fn compat_totals(out: &mut String, totals: &ByDatabase) {
    type TotalColumn = fn(&Totals) -> f64;
    let columns: [(&str, &str, TotalColumn); 8] = [
        ("pgbouncer_stats_totals_queries_pooled_total", "Total number of SQL queries pooled", |t| t.queries as f64),
        ("pgbouncer_stats_totals_queries_duration_seconds_total", "Total number of seconds spent by pgbouncer when actively connected to PostgreSQL, executing queries", |t| t.query_seconds),
        ("pgbouncer_stats_totals_received_bytes_total", "Total volume in bytes of network traffic received by pgbouncer, shown as bytes", |t| t.received as f64),
        ("pgbouncer_stats_totals_queries_total", "Total number of SQL requests pooled by pgbouncer, shown as requests", |t| t.queries as f64),
        ("pgbouncer_stats_totals_sent_bytes_total", "Total volume in bytes of network traffic sent by pgbouncer, shown as bytes", |t| t.sent as f64),
        ("pgbouncer_stats_totals_client_wait_seconds_total", "Time spent by clients waiting for a server in seconds", |t| t.wait_seconds),
        ("pgbouncer_stats_totals_sql_transactions_pooled_total", "Total number of SQL transactions pooled", |t| t.xacts as f64),
        ("pgbouncer_stats_totals_server_in_transaction_seconds_total", "Total number of seconds spent by pgbouncer when connected to PostgreSQL in a transaction, either idle in transaction or executing queries", |t| t.xact_seconds),
    ];
    for (name, help, get) in columns {
        let mut f = Family::new(out, name, "counter", help);
        for (db, t) in totals {
            f.sample(&[("database", db)], get(t));
        }
    }
}

/// One configured database, as a SHOW DATABASES column reads it.
struct DbRow<'a> {
    db: &'a crate::config::Database,
    config: &'a Config,
    name: &'a str,
    /// Server connections open now.
    servers: usize,
    cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
}

/// SHOW DATABASES: one row per configured database, for its primary.
fn compat_databases(out: &mut String, totals: &ByDatabase, clusters: &Clusters, config: &Config) {
    type DbColumn = fn(&DbRow) -> f64;
    let columns: [(&str, &str, DbColumn); 6] = [
        (
            "pgbouncer_databases_pool_size",
            "Maximum number of server connections",
            |r| r.db.pool_size.unwrap_or(r.config.general.default_pool_size) as f64,
        ),
        (
            "pgbouncer_databases_reserve_pool",
            "Maximum number of additional connections for this database",
            |r| r.config.general.reserve_pool_size as f64,
        ),
        (
            "pgbouncer_databases_max_connections",
            "Maximum number of allowed connections for this database",
            |r| r.config.max_db_connections(r.name) as f64,
        ),
        (
            "pgbouncer_databases_current_connections",
            "Current number of connections for this database",
            |r| r.servers as f64,
        ),
        (
            "pgbouncer_databases_paused",
            "1 if this database is currently paused, else 0",
            |r| f64::from(u8::from(r.cluster.as_ref().is_some_and(|c| c.is_paused()))),
        ),
        (
            "pgbouncer_databases_disabled",
            "1 if this database is currently disabled, else 0",
            |r| {
                f64::from(u8::from(
                    r.cluster.as_ref().is_some_and(|c| c.is_disabled()),
                ))
            },
        ),
    ];
    for (name, help, get) in columns {
        let mut f = Family::new(out, name, "gauge", help);
        for (db_name, db) in &clusters.served(config) {
            let row = DbRow {
                db,
                config,
                name: db_name,
                servers: totals.get(db_name).map_or(0, |t| t.servers),
                cluster: clusters.get(db_name),
            };
            let mode = match db.pool_mode.unwrap_or(config.general.pool_mode) {
                crate::config::PoolMode::Session => "session",
                crate::config::PoolMode::Transaction => "transaction",
            };
            let port = db.port.to_string();
            f.sample(
                &[
                    ("name", db_name),
                    ("host", &db.host),
                    ("port", &port),
                    ("database", db.dbname.as_deref().unwrap_or(db_name)),
                    ("force_user", db.user.as_deref().unwrap_or("")),
                    ("pool_mode", mode),
                ],
                get(&row),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::BanTimes;
    use std::time::Duration;

    /// A ban that outlasts the test.
    const LONG_BAN: BanTimes = BanTimes {
        first: Duration::from_secs(60),
        longest: Duration::from_secs(60),
    };

    /// Pools of user `u` on database `app` with two replicas; no server is ever opened.
    fn setup(extra: &str) -> (Metrics, Config, Clusters, Pools, Routes) {
        let text = format!(
            "{extra}\n[databases.app]\nport = 5433\n\
             replicas = [\"127.0.0.1:5434\", \"127.0.0.1:5435\"]\n"
        );
        let config = Config::parse(&text, "test").unwrap();
        let metrics = Metrics::new("here");
        let clusters = Clusters::new(&config);
        let pools = Pools::new(metrics.pools.clone());
        pools.members(&config, &clusters, "app", "u").unwrap();
        (metrics, config, clusters, pools, Routes::default())
    }

    /// The value of the one sample of `family` whose labels include every one of `labels`.
    fn sample(text: &str, family: &str, labels: &[&str]) -> f64 {
        let found: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(found.len(), 1, "{family} {labels:?} in\n{text}");
        found[0]
    }

    #[test]
    fn routing_counters_only_go_up_across_scrapes() {
        let (m, config, clusters, pools, routes) = setup("");
        let read = ["database=\"app\"", "reason=\"read\"", "instance=\"here\""];
        routes.of("app").bump(RouteReason::Read);
        routes.of("app").bump(RouteReason::Read);
        let first = m.render(&pools, &clusters, &routes, &config);
        assert_eq!(
            sample(&first, "pgsluice_routing_decisions_total", &read),
            2.0
        );
        let again = m.render(&pools, &clusters, &routes, &config);
        assert_eq!(
            sample(&again, "pgsluice_routing_decisions_total", &read),
            2.0
        );
        routes.of("app").bump(RouteReason::Read);
        let later = m.render(&pools, &clusters, &routes, &config);
        assert_eq!(
            sample(&later, "pgsluice_routing_decisions_total", &read),
            3.0
        );
    }

    #[test]
    fn gauges_are_read_from_pools_clients_and_nodes_at_each_scrape() {
        let (m, config, clusters, pools, routes) = setup("default_pool_size = 7");
        let members = pools.all_members().pop().unwrap();
        let connected = members.connect(&config).unwrap();
        clusters.get("app").unwrap().ban(2, LONG_BAN, "test");
        let text = m.render(&pools, &clusters, &routes, &config);
        let idle = ["user=\"u\"", "state=\"idle\""];
        assert_eq!(sample(&text, "pgsluice_clients", &idle), 1.0);
        let replica = ["node=\"127.0.0.1:5434\""];
        assert_eq!(sample(&text, "pgsluice_pool_size", &replica), 7.0);
        let banned = ["node=\"127.0.0.1:5435\"", "role=\"replica\""];
        assert_eq!(sample(&text, "pgsluice_node_banned", &banned), 1.0);
        let primary = ["node=\"127.0.0.1:5433\"", "role=\"primary\""];
        assert_eq!(sample(&text, "pgsluice_node_banned", &primary), 0.0);
        drop(connected);
        let text = m.render(&pools, &clusters, &routes, &config);
        assert_eq!(
            sample(&text, "pgsluice_clients", &idle),
            0.0,
            "rebuilt, not kept"
        );
    }

    #[test]
    fn totals_sum_every_node_and_pgbouncer_families_follow_them() {
        let (m, mut config, clusters, pools, routes) = setup("");
        for (i, pool) in pools.all().iter().enumerate() {
            pool.metrics.transactions.inc_by(10 * (i as u64 + 1));
            pool.metrics.queries.inc_by(i as u64 + 1);
        }
        let t = &totals(&pools)["app"];
        assert_eq!(
            (t.xacts, t.queries),
            (60, 6),
            "three nodes: 10 + 20 + 30, 1 + 2 + 3"
        );
        let native = m.render(&pools, &clusters, &routes, &config);
        assert!(!native.contains("pgbouncer_"), "only when asked for");
        config.general.metrics_pgbouncer_compat = true;
        let text = m.render(&pools, &clusters, &routes, &config);
        let db = ["database=\"app\""];
        let pooled = "pgbouncer_stats_totals_sql_transactions_pooled_total";
        assert_eq!(sample(&text, pooled, &db), 60.0);
        assert_eq!(sample(&text, "pgbouncer_databases_pool_size", &db), 20.0);
        assert_eq!(sample(&text, "pgbouncer_databases_paused", &db), 0.0);
        clusters.get("app").unwrap().pause(true);
        let text = m.render(&pools, &clusters, &routes, &config);
        assert_eq!(sample(&text, "pgbouncer_databases_paused", &db), 1.0);
        assert_eq!(sample(&text, "pgbouncer_databases_disabled", &db), 0.0);
    }
}
