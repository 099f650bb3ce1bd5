//! The admin console through psql and tokio-postgres: every SHOW with PgBouncer's columns,
//! access rules, PAUSE/RESUME, RELOAD, KILL_CLIENT, DISABLE/ENABLE, SHUTDOWN.

mod support;

use std::time::Duration;
use support::{connect, primary, Pooler, APP_PASSWORD};

const ADMIN: &str = "admin_users = [\"app\"]\nstats_users = [\"md5user\"]";

/// psql's header line and rows for one admin command, as `app`.
fn show(pooler: &Pooler, db: &str, command: &str) -> (Vec<String>, Vec<String>) {
    pooler.admin_table(db, command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_has_pgbouncer_columns() {
    let pg = primary();
    let pooler = Pooler::start(&pg, ADMIN);
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    client.simple_query("SELECT 1").await.unwrap();
    let expected: &[(&str, &[&str])] = &[
        (
            "SHOW POOLS",
            &[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "sv_active",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
            ],
        ),
        (
            "SHOW STATS",
            &[
                "database",
                "total_xact_count",
                "total_query_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "avg_xact_count",
                "avg_query_count",
                "avg_recv",
                "avg_sent",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
            ],
        ),
        (
            "SHOW STATS_TOTALS",
            &[
                "database",
                "xact_count",
                "query_count",
                "bytes_received",
                "bytes_sent",
            ],
        ),
        (
            "SHOW CLIENTS",
            &[
                "type",
                "user",
                "database",
                "state",
                "addr",
                "port",
                "local_addr",
                "local_port",
                "connect_time",
                "request_time",
                "wait",
                "wait_us",
                "ptr",
                "link",
                "remote_pid",
                "tls",
            ],
        ),
        (
            "SHOW SERVERS",
            &[
                "type",
                "user",
                "database",
                "state",
                "addr",
                "port",
                "connect_time",
                "request_time",
                "ptr",
                "link",
                "remote_pid",
            ],
        ),
        (
            "SHOW DATABASES",
            &[
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool",
                "pool_mode",
                "max_connections",
                "current_connections",
                "max_client_connections",
                "current_client_connections",
                "paused",
                "disabled",
            ],
        ),
        (
            "SHOW USERS",
            &[
                "name",
                "pool_mode",
                "max_user_connections",
                "current_connections",
                "max_user_client_connections",
                "current_client_connections",
            ],
        ),
        ("SHOW CONFIG", &["key", "value", "default", "changeable"]),
        ("SHOW LISTS", &["list", "items"]),
        ("SHOW VERSION", &["version"]),
        (
            "SHOW NODES",
            &[
                "database",
                "node",
                "role",
                "health",
                "in_flight",
                "lag_bytes",
            ],
        ),
    ];
    for (command, columns) in expected {
        // Both names of the console.
        for db in ["pgsluice", "pgbouncer"] {
            let (header, rows) = show(&pooler, db, command);
            for c in *columns {
                assert!(
                    header.iter().any(|h| h == c),
                    "{command}: no {c} in {header:?}"
                );
            }
            assert!(!rows.is_empty(), "{command}: no rows");
        }
    }
    let (header, rows) = show(&pooler, "pgsluice", "SHOW POOLS");
    let row: Vec<&str> = rows[0].split('|').collect();
    let col = |name: &str| row[header.iter().position(|h| h == name).unwrap()];
    assert_eq!((col("database"), col("user")), ("app", "app"));
    assert_eq!(col("sv_idle"), "1");
    let (header, rows) = show(&pooler, "pgsluice", "SHOW CLIENTS");
    assert_eq!(rows.len(), 2, "the app client and this console: {rows:?}");
    assert!(header.contains(&"id".to_owned()));
    assert!(header.contains(&"pinned".to_owned()));
    let (_, rows) = show(&pooler, "pgsluice", "SHOW CONFIG");
    assert!(rows.iter().any(|r| r == "admin_users|app||yes"), "{rows:?}");
    let (_, rows) = show(&pooler, "pgsluice", "SHOW STATS_TOTALS");
    let app: Vec<&str> = rows[0].split('|').collect();
    assert_eq!(app[0], "app");
    assert!(
        app[1].parse::<u64>().unwrap() >= 1,
        "transactions counted: {app:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_users_run_commands() {
    let pg = primary();
    let pooler = Pooler::start(&pg, ADMIN);
    // A stats user sees, and may not change.
    let out = pooler.psql_as("md5user", "md5 pw", "pgbouncer", &["-c", "SHOW VERSION"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pgsluice "));
    let out = pooler.psql_as("md5user", "md5 pw", "pgbouncer", &["-c", "PAUSE"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin access needed"), "{err}");
    // Someone else does not get in at all; a wrong password neither.
    let conn = pooler
        .conn_str("cleartext_user", "clear pw")
        .replace("dbname=app", "dbname=pgsluice");
    let err = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code().unwrap().code(), "42501");
    let conn = pooler
        .conn_str("app", "wrong")
        .replace("dbname=app", "dbname=pgsluice");
    let err = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code().unwrap().code(), "28P01");
    // The extended protocol is refused cleanly.
    let admin = admin_client(&pooler).await;
    assert!(admin.query("SHOW POOLS", &[]).await.is_err());
}

async fn admin_client(pooler: &Pooler) -> tokio_postgres::Client {
    let conn = pooler
        .conn_str("app", APP_PASSWORD)
        .replace("dbname=app", "dbname=pgsluice");
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_transactions_until_resume() {
    let pg = primary();
    let pooler = Pooler::start(&pg, ADMIN);
    let admin = admin_client(&pooler).await;
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    client.simple_query("SELECT 1").await.unwrap();
    admin.simple_query("PAUSE app").await.unwrap();
    let held = tokio::spawn(async move {
        client.simple_query("SELECT 2").await.unwrap();
        client
    });
    assert!(
        support::wait_for(Duration::from_secs(10), || support::clients_waiting(
            &pooler
        ) == 1),
        "the client waits for RESUME"
    );
    assert!(!held.is_finished(), "a paused database runs nothing");
    let (_, rows) = show(&pooler, "pgsluice", "SHOW DATABASES");
    assert!(rows[0].contains("|1|0|"), "paused=1: {rows:?}");
    admin.simple_query("RESUME app").await.unwrap();
    let client = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("runs after RESUME")
        .unwrap();

    // DISABLE refuses new clients and keeps the connected ones.
    admin.simple_query("DISABLE app").await.unwrap();
    let conn = pooler.conn_str("app", APP_PASSWORD);
    assert!(tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .is_err());
    client.simple_query("SELECT 3").await.unwrap();
    admin.simple_query("ENABLE app").await.unwrap();
    connect(&pooler, "app", APP_PASSWORD).await;
    let err = admin.simple_query("PAUSE nowhere").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_kill_client() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsluice.toml");
    let text = |size: usize| {
        format!(
            "listen_port = 0\n{ADMIN}\ndefault_pool_size = {size}\n\
             [databases.app]\nport = {}\n[users.app]\npassword = \"{APP_PASSWORD}\"\n\
             [users.md5user]\npassword = \"md5 pw\"\n",
            pg.port
        )
    };
    std::fs::write(&path, text(3)).unwrap();
    let pooler = Pooler::with_config(pgsluice::config::Config::load(&path).unwrap());
    pooler.ctx.config_path.set(path.clone()).unwrap();
    let admin = admin_client(&pooler).await;
    let config_value = |key: &'static str| {
        let (_, rows) = show(&pooler, "pgsluice", "SHOW CONFIG");
        rows.iter()
            .find(|r| r.starts_with(&format!("{key}|")))
            .map(|r| r.split('|').nth(1).unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(config_value("default_pool_size"), "3");
    std::fs::write(&path, text(7)).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    assert_eq!(config_value("default_pool_size"), "7");
    std::fs::write(&path, "default_pool_size = \"many\"").unwrap();
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "F0000");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("default_pool_size"), "{message}");
    assert_eq!(config_value("default_pool_size"), "7", "unchanged");

    // KILL_CLIENT closes exactly that client, with 57P01.
    let (victim, connection) =
        tokio_postgres::connect(&pooler.conn_str("app", APP_PASSWORD), tokio_postgres::NoTls)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    victim.simple_query("SELECT 1").await.unwrap();
    let (header, rows) = show(&pooler, "pgsluice", "SHOW CLIENTS");
    let id = header.iter().position(|h| h == "id").unwrap();
    let db = header.iter().position(|h| h == "database").unwrap();
    let pid: i32 = rows
        .iter()
        .map(|r| r.split('|').collect::<Vec<_>>())
        .find(|r| r[db] == "app")
        .map(|r| r[id].parse().unwrap())
        .unwrap();
    admin
        .simple_query(&format!("KILL_CLIENT {pid}"))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("closed")
        .unwrap();
    assert_eq!(closed.unwrap_err().code().unwrap().code(), "57P01");
    admin.simple_query("SHOW VERSION").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_the_console() {
    let pg = primary();
    let pooler = Pooler::start(&pg, ADMIN);
    let admin = admin_client(&pooler).await;
    admin
        .simple_query("SHUTDOWN WAIT_FOR_CLIENTS")
        .await
        .unwrap();
    assert_eq!(
        pgsluice::context::Phase::Draining,
        pooler.ctx.phase(),
        "draining"
    );
    assert!(support::wait_for(Duration::from_secs(5), || {
        std::net::TcpStream::connect(pooler.addr).is_err()
    }));
}

/// Sends SIGCONT to a stopped process when dropped, also when the test fails.
struct Stopped(String);

impl Drop for Stopped {
    fn drop(&mut self) {
        support::signal(&self.0, "CONT");
    }
}

/// A cancel request in SHOW POOLS: on its way (the server's postmaster stopped, so the
/// request waits for it) in cl_active_cancel_req and sv_active_cancel; the server it went to
/// in sv_being_canceled until its client lets it go and it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_counts_cancel_requests() {
    let pg = primary();
    let pooler = Pooler::start(&pg, ADMIN);
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    client.batch_execute("BEGIN").await.unwrap();
    let token = client.cancel_token();
    let slow = tokio::spawn(async move {
        let ran = client
            .simple_query("SELECT pg_sleep(60), 'to cancel'")
            .await;
        (client, ran)
    });
    let pgs = [pg];
    let backend = support::backend_running(&pgs, "to cancel").expect("the query runs");
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).unwrap();
    let postmaster = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    support::signal(postmaster, "STOP");
    let stopped = Stopped(postmaster.to_owned());
    let cancel = tokio::spawn(async move { token.cancel_query(tokio_postgres::NoTls).await });
    let counts = |columns: &[&str]| -> Vec<String> {
        columns
            .iter()
            .map(|c| pooler.admin_column("SHOW POOLS", c).join(","))
            .collect()
    };
    let all = [
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active_cancel",
        "sv_being_canceled",
    ];
    let mut seen = Vec::new();
    let on_its_way = support::wait_for(Duration::from_secs(10), || {
        seen = counts(&all);
        seen == ["1", "0", "1", "1"]
    });
    assert!(on_its_way, "{seen:?}");
    drop(stopped);
    cancel.await.unwrap().unwrap();
    let (client, ran) = slow.await.unwrap();
    let e = ran.expect_err("cancelled");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    // Delivered; its server is still the client's, in the failed transaction.
    let delivered = support::wait_for(Duration::from_secs(10), || {
        seen = counts(&all);
        seen == ["0", "0", "0", "1"]
    });
    assert!(delivered, "{seen:?}");
    client.batch_execute("ROLLBACK").await.unwrap();
    let closed = support::wait_for(Duration::from_secs(10), || {
        seen = counts(&["sv_being_canceled", "sv_active", "sv_idle"]);
        seen == ["0", "0", "0"]
    });
    assert!(closed, "{seen:?}");
}
