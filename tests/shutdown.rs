//! Graceful shutdown of the real binary: SIGTERM drains (a transaction in flight commits,
//! idle clients are closed with 57P01, /ready turns 503, the exit status is 0); SIGINT closes
//! at once and rolls back.

mod support;

use std::time::Duration;
use support::{primary, Process};

async fn client(
    conn: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    (client, tokio::spawn(connection))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transaction_commit_and_exits_0() {
    let pg = primary();
    pg.psql_in("app", "CREATE TABLE t (x int); ALTER TABLE t OWNER TO app")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(pg.port, dir.path(), "pgsluice", "shutdown_timeout = 30");

    let (tx, _tx_conn) = client(&p.conn_str()).await;
    tx.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let (idle, idle_conn) = client(&p.conn_str()).await;
    idle.simple_query("SELECT 1").await.unwrap();

    p.signal("TERM");
    assert!(
        support::wait_for(Duration::from_secs(5), || p.ready() == Some(503)),
        "/ready turns 503 at once"
    );
    // The idle client is closed as PostgreSQL closes it on a shutdown.
    let closed = tokio::time::timeout(Duration::from_secs(5), idle_conn)
        .await
        .expect("idle client closed")
        .unwrap();
    let err = closed.expect_err("closed with an error");
    assert_eq!(err.code().map(|c| c.code()), Some("57P01"), "{err}");
    // No new clients.
    assert!(
        tokio_postgres::connect(&p.conn_str(), tokio_postgres::NoTls)
            .await
            .is_err()
    );

    // The transaction in flight goes on and commits.
    tx.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap();
    let status = p.exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert_eq!(pg.psql_in("app", "SELECT count(*) FROM t").unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_at_once_and_rolls_back() {
    let pg = primary();
    pg.psql_in("app", "CREATE TABLE t (x int); ALTER TABLE t OWNER TO app")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(pg.port, dir.path(), "pgsluice", "shutdown_timeout = 30");
    let (tx, tx_conn) = client(&p.conn_str()).await;
    tx.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    p.signal("INT");
    let closed = tokio::time::timeout(Duration::from_secs(5), tx_conn)
        .await
        .expect("client closed")
        .unwrap();
    assert_eq!(closed.unwrap_err().code().map(|c| c.code()), Some("57P01"));
    let status = p.exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert_eq!(pg.psql_in("app", "SELECT count(*) FROM t").unwrap(), "0");
    assert!(
        support::wait_for(Duration::from_secs(5), || {
            pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
                .unwrap()
                == "0"
        }),
        "no server connection left behind"
    );
}
