//! The HTTP listener: /metrics parses as Prometheus text and moves with traffic, /health,
//! and /ready following the primary.

mod support;

use std::collections::HashMap;
use std::time::Duration;
use support::{connect, primary, Pooler, Replicated, APP_PASSWORD};

fn get(pooler: &Pooler, path: &str) -> (u16, String) {
    pooler.http_get(path)
}

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format (0.0.4), failing on any malformed line.
fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (head, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head, HashMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = HashMap::new();
                // Label values here never hold a comma or an escaped quote.
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    labels.insert(k.to_owned(), v.expect("quoted value").to_owned());
                }
                (name, labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() {
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "default_pool_size = 2\ninstance_name = \"test-1\"\nmetrics_pgbouncer_compat = true",
    );
    assert_eq!(get(&pooler, "/health").0, 200);
    let (_, before) = get(&pooler, "/metrics");
    let (samples, _) = parse(&before);
    let tx_before = value(&samples, "pgsluice_transactions_total", &[]);

    let client = connect(&pooler, "app", APP_PASSWORD).await;
    for _ in 0..20 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let stmt = client.prepare("SELECT $1::int").await.unwrap();
    for i in 0..10 {
        client.query_one(&stmt, &[&i]).await.unwrap();
    }
    client
        .batch_execute("BEGIN; SELECT 1; SELECT 2; COMMIT")
        .await
        .unwrap();
    let (status, text) = get(&pooler, "/metrics");
    assert_eq!(status, 200);
    let (samples, types) = parse(&text);
    let app = [("database", "app"), ("user", "app")];

    let tx = value(&samples, "pgsluice_transactions_total", &app);
    assert!(tx - tx_before >= 31.0, "transactions {tx_before} -> {tx}");
    assert!(value(&samples, "pgsluice_queries_total", &app) >= 31.0);
    assert!(value(&samples, "pgsluice_client_bytes_received_total", &app) > 0.0);
    assert!(value(&samples, "pgsluice_client_bytes_sent_total", &app) > 0.0);
    assert!(value(&samples, "pgsluice_server_connects_total", &app) >= 1.0);
    assert!(value(&samples, "pgsluice_prepared_cache_misses_total", &app) >= 1.0);
    assert!(value(&samples, "pgsluice_prepared_cache_hits_total", &app) >= 9.0);
    let idle = [("database", "app"), ("user", "app"), ("state", "idle")];
    assert_eq!(value(&samples, "pgsluice_clients", &idle), 1.0);
    assert_eq!(value(&samples, "pgsluice_pool_size", &app), 2.0);
    assert!(samples
        .iter()
        .filter(|s| s.name.starts_with("pgsluice_"))
        .all(|s| s.labels.get("instance").map(String::as_str) == Some("test-1")));

    for h in [
        "pgsluice_client_wait_seconds",
        "pgsluice_query_seconds",
        "pgsluice_transaction_seconds",
    ] {
        assert_eq!(types[h], "histogram");
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == format!("{h}_bucket") && s.labels.get("user") == Some(&"app".into())
            })
            .collect();
        assert!(buckets.len() > 10, "{h} has buckets");
        let inf = buckets.iter().find(|s| s.labels["le"] == "+Inf").unwrap();
        let count = value(&samples, &format!("{h}_count"), &app);
        assert_eq!(inf.value, count, "{h}: +Inf bucket equals the count");
        assert!(count >= 1.0);
    }
    assert!(
        value(&samples, "pgsluice_transaction_seconds_count", &app) >= 31.0,
        "every transaction timed"
    );
    assert_eq!(get(&pooler, "/nowhere").0, 404);

    // The families pgbouncer_exporter emits, for dashboards made for PgBouncer.
    assert_eq!(types["pgbouncer_pools_client_active_connections"], "gauge");
    assert_eq!(
        value(&samples, "pgbouncer_pools_server_idle_connections", &app),
        1.0
    );
    let db = [("database", "app")];
    assert_eq!(
        value(
            &samples,
            "pgbouncer_stats_totals_sql_transactions_pooled_total",
            &db
        ),
        tx
    );
    assert!(value(&samples, "pgbouncer_stats_totals_received_bytes_total", &db) > 0.0);
    assert_eq!(
        types["pgbouncer_stats_totals_queries_duration_seconds_total"],
        "counter"
    );
    let name = [("name", "app"), ("pool_mode", "transaction")];
    assert_eq!(value(&samples, "pgbouncer_databases_pool_size", &name), 2.0);
    assert_eq!(
        value(&samples, "pgbouncer_databases_current_connections", &name),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_primary() {
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "health_check_interval = \"200ms\"\nserver_connect_timeout = 2",
    );
    let ready =
        |want: u16| support::wait_for(Duration::from_secs(15), || get(&pooler, "/ready").0 == want);
    assert!(ready(200), "{:?}", get(&pooler, "/ready"));
    pg.stop(false).unwrap();
    assert!(ready(503));
    let (_, body) = get(&pooler, "/ready");
    assert!(
        body.contains("\"ready\":false") && body.contains("unreachable"),
        "{body}"
    );
    assert_eq!(get(&pooler, "/health").0, 200, "the process still serves");
    pg.start().unwrap();
    assert!(ready(200), "{:?}", get(&pooler, "/ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_gauges_and_routing_counters() {
    let pg = Replicated::start();
    let pooler = pg.pooler("health_check_interval = \"200ms\"", "");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    for _ in 0..10 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    client
        .simple_query("INSERT INTO items (v) VALUES (1)")
        .await
        .unwrap();
    assert!(support::wait_for(Duration::from_secs(10), || {
        let (samples, _) = parse(&get(&pooler, "/metrics").1);
        samples
            .iter()
            .any(|s| s.name == "pgsluice_replica_lag_bytes")
    }));
    let (samples, _) = parse(&get(&pooler, "/metrics").1);
    let read = [("database", "app"), ("reason", "read")];
    assert!(value(&samples, "pgsluice_routing_decisions_total", &read) >= 10.0);
    let write = [("database", "app"), ("reason", "write")];
    assert!(value(&samples, "pgsluice_routing_decisions_total", &write) >= 1.0);
    for r in &pg.replicas {
        let node = format!("127.0.0.1:{}", r.port);
        let labels = [("node", node.as_str())];
        assert_eq!(value(&samples, "pgsluice_node_banned", &labels), 0.0);
        assert_eq!(
            samples
                .iter()
                .filter(|s| s.name == "pgsluice_replica_lag_seconds" && s.labels["node"] == node)
                .count(),
            1
        );
    }
    let replica_servers = samples
        .iter()
        .filter(|s| {
            s.name == "pgsluice_servers"
                && s.labels["node"] != format!("127.0.0.1:{}", pg.primary.port)
        })
        .map(|s| s.value)
        .sum::<f64>();
    assert!(replica_servers >= 1.0);
}
