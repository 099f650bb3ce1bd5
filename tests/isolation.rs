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

/// A client that sends statements changing its session and vanishes before their answers
/// (found by the `session` fuzz target): the server it leaves has none of them for the next
/// client, though the pooler never learnt what they did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_changes_of_a_client_gone_before_their_answers_do_not_stay() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1\nauth_type = \"trust\"");
    let probe = connect(&pooler, "app", APP_PASSWORD).await;
    for sql in [
        "PREPARE p AS SELECT 1",
        "SET search_path TO nowhere",
        "SELECT pg_advisory_lock(7)",
        "CREATE TEMP TABLE t (x int)",
        "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
    ] {
        let mut s = support::logged_in_trust(&pooler);
        let mut buf = bytes::BytesMut::new();
        for q in [sql, "SELECT pg_sleep(0.1)"] {
            postgres_protocol::message::frontend::query(q, &mut buf).unwrap();
        }
        s.write_all(&buf).unwrap();
        drop(s);
        let left = probe
            .query_one(
                "SELECT current_setting('search_path') || '|' \
                 || (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) || '|' \
                 || (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory') || '|' \
                 || (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) || '|' \
                 || (SELECT count(*) FROM pg_cursors WHERE is_holdable)",
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0);
        assert_eq!(left, "\"$user\", public|0|0|0|0", "after {sql:?}");
    }
}

/// Clients that break the protocol right behind their COPY FROM STDIN, before its start has
/// come back (found by the `session` fuzz target): the next client gets the pool's one server
/// at once, not after the clean-up's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_broken_before_it_started_frees_the_server_at_once() {
    use postgres_protocol::message::frontend;
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1\nauth_type = \"trust\"");
    let probe = connect(&pooler, "app", APP_PASSWORD).await;
    probe
        .batch_execute("CREATE TABLE sink (x int)")
        .await
        .unwrap();
    // PostgreSQL's answer to a Query during COPY: an error, then the connection closes.
    let query_in_copy = |buf: &mut bytes::BytesMut| frontend::query("SELECT 1", buf).unwrap();
    // The pooler's answer to a Sync with a body: 08P01, then the client's connection closes.
    let malformed_sync = |buf: &mut bytes::BytesMut| buf.extend_from_slice(b"S\0\0\0\x05x");
    for (what, breaks) in [
        ("a Query", &query_in_copy as &dyn Fn(&mut bytes::BytesMut)),
        ("a malformed Sync", &malformed_sync),
    ] {
        let mut buf = bytes::BytesMut::new();
        frontend::query("COPY sink FROM STDIN", &mut buf).unwrap();
        frontend::CopyData::new(&b"1\n"[..])
            .unwrap()
            .write(&mut buf);
        breaks(&mut buf);
        let mut s = support::logged_in_trust(&pooler);
        s.write_all(&buf).unwrap();
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut got);
        assert!(
            String::from_utf8_lossy(&got).contains("08P01"),
            "{what}: {got:?}"
        );
        let n: i64 = tokio::time::timeout(
            Duration::from_secs(5),
            probe.query_one("SELECT count(*) FROM sink", &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the pool had no room within 5 s"))
        .unwrap()
        .get(0);
        assert_eq!(n, 0, "{what}");
    }
}

/// A client whose Describe fails in a batch it never syncs, with Queries behind it, then
/// vanishes (found by the `session` fuzz target): the server skips those Queries, so the
/// pooler cannot count what it still owes; it closes that server at once, rather than waiting
/// for answers that never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_skipped_after_an_error_in_an_open_batch_free_the_server_at_once() {
    use postgres_protocol::message::frontend;
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1\nauth_type = \"trust\"");
    let probe = connect(&pooler, "app", APP_PASSWORD).await;
    for read_first in [true, false] {
        let mut buf = bytes::BytesMut::new();
        frontend::query("BEGIN", &mut buf).unwrap();
        frontend::describe(b'P', "nope", &mut buf).unwrap();
        frontend::query("SELECT 1", &mut buf).unwrap();
        frontend::query("SELECT 2", &mut buf).unwrap();
        let mut s = support::logged_in_trust(&pooler);
        s.write_all(&buf).unwrap();
        if read_first {
            // BEGIN's answer, then the error; nothing for the skipped Queries.
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\"nope\" does not exist") {
                let n = std::io::Read::read(&mut s, &mut chunk).unwrap();
                assert!(n > 0, "closed: {got:?}");
                got.extend_from_slice(&chunk[..n]);
            }
        }
        drop(s);
        tokio::time::timeout(Duration::from_secs(5), probe.simple_query("SELECT 1"))
            .await
            .unwrap_or_else(|_| panic!("read first {read_first}: the pool had no room within 5 s"))
            .unwrap();
    }
}
