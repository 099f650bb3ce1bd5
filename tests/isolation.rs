//! Nothing of one client reaches the next: abandoned transactions, locks, COPY and long
//! queries are cleaned up before the server is reused.

mod support;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{connect, primary, Pooler, APP_PASSWORD};

/// A client vanishes holding a row lock; another client must get that row within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transaction_releases_locks() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 2");
    let setup = connect(&pooler, "app", APP_PASSWORD).await;
    setup
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, n int); INSERT INTO acct VALUES (1, 0)",
        )
        .await
        .unwrap();

    // psql holds the lock, then is killed: its socket dies mid-transaction.
    let mut holder = support::spawn_psql(&pooler, &[], Stdio::piped());
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin, "BEGIN; SELECT * FROM acct WHERE id = 1 FOR UPDATE; CREATE TEMP TABLE leak (x int); SET search_path = nowhere;").unwrap();
    stdin.flush().unwrap();
    let waited = support::wait_for(Duration::from_secs(10), || {
        pg.psql("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE d.datname = 'app' AND l.mode = 'RowShareLock'")
            .map(|n| n != "0")
            .unwrap_or(false)
    });
    assert!(waited, "the holder never took its lock");
    holder.kill().unwrap();
    holder.wait().unwrap();

    let other = connect(&pooler, "app", APP_PASSWORD).await;
    let started = Instant::now();
    other
        .batch_execute("SET lock_timeout = '8s'")
        .await
        .unwrap();
    let tx = other
        .simple_query("BEGIN; SELECT n FROM acct WHERE id = 1 FOR UPDATE NOWAIT; COMMIT")
        .await;
    // NOWAIT would fail at once if the lock were still held; retry until the cleanup is done.
    if tx.is_err() {
        let ok = support::wait_for(Duration::from_secs(5), || {
            pg.psql("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE d.datname = 'app' AND l.mode = 'RowShareLock'")
                .map(|n| n == "0")
                .unwrap_or(false)
        });
        assert!(ok, "lock still held after the client vanished");
        other
            .simple_query("BEGIN; SELECT n FROM acct WHERE id = 1 FOR UPDATE NOWAIT; COMMIT")
            .await
            .unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // None of the vanished client's session state is visible on any server of the pool.
    for _ in 0..4 {
        let c = connect(&pooler, "app", APP_PASSWORD).await;
        let rows = c
            .query(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'leak'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, i64>(0), 0);
        let sp = c.simple_query("SHOW search_path").await.unwrap();
        assert!(format!("{sp:?}").contains("public"), "{sp:?}");
    }
}

/// A client that vanishes while its long query runs: the query is cancelled, and the server
/// serves the next client (pool of one) well before the query would have finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_long_query_is_cancelled() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1");
    let mut sleeper = support::spawn_psql(&pooler, &["-c", "SELECT pg_sleep(60)"], Stdio::null());
    assert!(support::wait_for(Duration::from_secs(10), || {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'")
            .map(|n| n == "1")
            .unwrap_or(false)
    }));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let started = Instant::now();
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    let rows = c.simple_query("SELECT 7").await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waited {:?}",
        started.elapsed()
    );
}

/// A client that vanishes in the middle of COPY FROM STDIN: nothing of it is committed and
/// the server is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_copy_is_aborted() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1");
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    c.batch_execute("CREATE TABLE sink (x int)").await.unwrap();
    drop(c);
    let mut copier = support::spawn_psql(&pooler, &["-c", "COPY sink FROM STDIN"], Stdio::piped());
    let mut stdin = copier.stdin.take().unwrap();
    for i in 0..1000 {
        writeln!(stdin, "{i}").unwrap();
    }
    stdin.flush().unwrap();
    assert!(support::wait_for(Duration::from_secs(10), || {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'COPY sink FROM STDIN'")
            .map(|n| n == "1")
            .unwrap_or(false)
    }));
    copier.kill().unwrap();
    copier.wait().unwrap();
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM sink", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
