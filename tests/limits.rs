//! Limits and timeouts: max_db_connections / max_user_connections across pools,
//! query_wait_timeout, a server that goes away (server_login_retry), client_login_timeout.

mod support;

use std::io::Read;
use std::time::{Duration, Instant};
use support::{backend_running, connect, primary, signal, Pooler, APP_PASSWORD};

/// Runs eight clients per connection string, ten short queries each, and returns the most
/// server connections matching `filter` that the primary had meanwhile.
fn peak_servers_under_load(
    pg: &pgsluice::localpg::LocalPostgres,
    dsns: &[String],
    filter: &str,
) -> usize {
    let watch = support::ActivityWatch::start(pg, filter);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for dsn in dsns.iter().flat_map(|d| std::iter::repeat_n(d.clone(), 8)) {
            tasks.push(tokio::spawn(async move {
                let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                for _ in 0..10 {
                    c.simple_query("SELECT pg_sleep(0.005)").await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    watch.stop()
}

#[test]
fn max_db_connections_spans_pools_of_a_database() {
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "default_pool_size = 5\nmax_db_connections = 3\nquery_wait_timeout = 60",
    );
    let dsns = [
        pooler.conn_str("app", APP_PASSWORD),
        pooler.conn_str("md5user", "md5 pw"),
    ];
    let max = peak_servers_under_load(
        &pg,
        &dsns,
        "datname = 'app' AND usename IN ('app', 'md5user')",
    );
    assert!(
        (1..=3).contains(&max),
        "database app saw {max} server connections"
    );
}

#[test]
fn max_user_connections_spans_pools_of_a_user() {
    let pg = primary();
    pg.psql("CREATE DATABASE app2 OWNER app").unwrap();
    let text = format!(
        "listen_port = 0\ndefault_pool_size = 5\nmax_user_connections = 2\nquery_wait_timeout = 60\n\
         [databases.app]\nport = {p}\n[databases.app2]\nport = {p}\n\
         [users.app]\npassword = \"{APP_PASSWORD}\"\n",
        p = pg.port
    );
    let pooler = Pooler::with_config(pgsluice::config::Config::parse(&text, "t").unwrap());
    let dsns: Vec<String> = ["app", "app2"]
        .iter()
        .map(|db| {
            format!(
                "host=127.0.0.1 port={} user=app password='{APP_PASSWORD}' dbname={db}",
                pooler.port()
            )
        })
        .collect();
    let max = peak_servers_under_load(&pg, &dsns, "usename = 'app'");
    assert!(
        (1..=2).contains(&max),
        "user app had {max} server connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_disconnects_with_pgbouncer_text() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1\nquery_wait_timeout = 1");
    let holder = connect(&pooler, "app", APP_PASSWORD).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = connect(&pooler, "app", APP_PASSWORD).await;
    let started = Instant::now();
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.message(), "query_wait_timeout");
    assert_eq!(
        db.code(),
        &tokio_postgres::error::SqlState::PROTOCOL_VIOLATION
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(waiter.is_closed() || waiter.simple_query("SELECT 1").await.is_err());
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_gives_clear_errors_then_recovers() {
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "default_pool_size = 2\nserver_login_retry = 2\nserver_connect_timeout = 2",
    );
    let first = connect(&pooler, "app", APP_PASSWORD).await;
    first.simple_query("SELECT 1").await.unwrap();
    drop(first);
    // Let the pooled connection go: it would die with the server anyway.
    pg.stop(false).unwrap();
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    let started = Instant::now();
    // The idle server connection is dead: the client is told, not left hanging.
    let mut messages = Vec::new();
    for _ in 0..3 {
        match c.simple_query("SELECT 1").await {
            Ok(_) => panic!("a query succeeded with the server down"),
            Err(e) => messages.push(e.to_string()),
        }
        if c.is_closed() {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "{messages:?}");
    // New clients within server_login_retry get PgBouncer's text at once.
    let late = connect(&pooler, "app", APP_PASSWORD).await;
    let err = late.simple_query("SELECT 1").await.unwrap_err();
    let text = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(
        text.contains("server login has been failing") || text.contains("server connection failed"),
        "{text}"
    );
    pg.start().unwrap();
    // After server_login_retry the pooler connects again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = connect(&pooler, "app", APP_PASSWORD).await;
        if c.simple_query("SELECT 1").await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "pooler never reconnected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn client_login_timeout_closes_silent_clients() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "client_login_timeout = 1");
    let mut s = std::net::TcpStream::connect(pooler.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&got).contains("client_login_timeout"),
        "{got:?}"
    );
}

/// A client that disconnects while it waits for a server gives up its place: its query never
/// runs, and the server goes to the next client in line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_the_queue_never_runs_its_query() {
    use std::io::Write;
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "auth_type = \"trust\"\ndefault_pool_size = 1\nquery_wait_timeout = 30",
    );
    let holder = connect(&pooler, "app", APP_PASSWORD).await;
    holder
        .batch_execute("CREATE TABLE marks (x int); BEGIN")
        .await
        .unwrap();
    let mut quitter = support::logged_in_trust(&pooler);
    let mut q = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("INSERT INTO marks VALUES (1)", &mut q).unwrap();
    quitter.write_all(&q).unwrap();
    assert!(
        support::wait_for(Duration::from_secs(10), || support::clients_waiting(
            &pooler
        ) == 1),
        "the query waits for the only server"
    );
    drop(quitter);
    assert!(
        support::wait_for(Duration::from_secs(10), || pooler.ctx.client_count() == 1),
        "the pooler saw the client leave the queue"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let next = connect(&pooler, "app", APP_PASSWORD).await;
    let n: i64 = next
        .query_one("SELECT count(*) FROM marks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the departed client's query ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_and_idle_transactions_time_out() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "client_idle_timeout = 1\nidle_transaction_timeout = 1");
    let idle = connect(&pooler, "app", APP_PASSWORD).await;
    idle.simple_query("SELECT 1").await.unwrap();
    let in_tx = connect(&pooler, "app", APP_PASSWORD).await;
    in_tx.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    in_tx.batch_execute("BEGIN; LOCK TABLE t").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(idle.is_closed() && in_tx.is_closed()) {
        assert!(
            Instant::now() < deadline,
            "idle clients were not disconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The abandoned transaction was rolled back: its lock is gone.
    let other = connect(&pooler, "app", APP_PASSWORD).await;
    other
        .batch_execute("SET lock_timeout = '5s'; BEGIN; LOCK TABLE t; COMMIT")
        .await
        .unwrap();
}

/// A server that stops answering mid-query (its backend stopped with SIGSTOP, as a network
/// partition would leave it): the client gets "query timeout" within query_timeout (+1 s),
/// the others are served meanwhile, and so is the next client after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_is_bounded_by_query_timeout() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "query_timeout = 2\ndefault_pool_size = 3");
    let stuck = connect(&pooler, "app", APP_PASSWORD).await;
    let query = tokio::spawn(async move {
        let start = Instant::now();
        let r = stuck.simple_query("SELECT 'stop-me', pg_sleep(0.5)").await;
        (r, start.elapsed())
    });
    let pid = backend_running(std::slice::from_ref(&pg), "stop-me").expect("the query runs");
    signal(&pid, "STOP");
    let other = connect(&pooler, "app", APP_PASSWORD).await;
    for _ in 0..20 {
        other.simple_query("SELECT 1").await.unwrap();
    }
    let waited = tokio::time::timeout(Duration::from_secs(10), query).await;
    signal(&pid, "CONT");
    let (r, took) = waited.expect("no answer within 10 s").unwrap();
    let err = r.expect_err("a stopped server gives no answer");
    let db = err.as_db_error().expect("an error from pgsluice");
    assert_eq!(db.code().code(), "08P01");
    assert_eq!(db.message(), "query timeout");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let next = connect(&pooler, "app", APP_PASSWORD).await;
    next.simple_query("SELECT 1").await.unwrap();
}

/// A transaction open longer than transaction_timeout, busy or not, ends with "transaction
/// timeout", and its work is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_is_bounded_by_transaction_timeout() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "transaction_timeout = 1");
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    c.batch_execute("CREATE TABLE tt (x int)").await.unwrap();
    let start = Instant::now();
    let err = c
        .batch_execute("BEGIN; INSERT INTO tt VALUES (1); SELECT pg_sleep(10)")
        .await
        .expect_err("cut off");
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("transaction timeout")
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let next = connect(&pooler, "app", APP_PASSWORD).await;
    let wait = || async {
        let rows = next.simple_query("SELECT count(*) FROM tt").await.unwrap();
        rows.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("0")),
        )
    };
    assert!(wait().await, "the insert was rolled back");
    // Short transactions are not affected.
    next.batch_execute("BEGIN; INSERT INTO tt VALUES (2); COMMIT")
        .await
        .unwrap();
}

/// A client that leaves while the server login it waits for is on the way (found by the
/// `session` fuzz target): the login stops counting, and the pool's counts stay whole
/// (SHOW POOLS's `sv_login` back to 0, `sv_active` not thrown off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_its_servers_login_leaves_the_counts_whole() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let pg = primary();
    // In front of the primary: connections are passed on while `forward` holds, and taken
    // and never answered after.
    let front = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = front.local_addr().unwrap().port();
    let forward = Arc::new(AtomicBool::new(true));
    let (to, pg_port) = (forward.clone(), pg.port);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in front.incoming().take(8).flatten() {
            if !to.load(Ordering::SeqCst) {
                held.push(s);
                continue;
            }
            let up = std::net::TcpStream::connect(("127.0.0.1", pg_port)).unwrap();
            for (mut from, mut into) in [(s.try_clone().unwrap(), up.try_clone().unwrap()), (up, s)]
            {
                std::thread::spawn(move || std::io::copy(&mut from, &mut into));
            }
        }
    });
    let config = pgsluice::config::Config::parse(
        &format!(
            "listen_port = 0\nauth_type = \"trust\"\nserver_connect_timeout = 30\n\
             default_pool_size = 2\n\
             [databases.app]\nport = {port}\n[users.app]\npassword = \"{APP_PASSWORD}\"\n"
        ),
        "test.toml",
    )
    .unwrap();
    let pooler = Pooler::with_config(config);
    let stats = || pooler.ctx.pools.all()[0].stats();
    let holder = connect(&pooler, "app", APP_PASSWORD).await;
    holder.batch_execute("BEGIN").await.unwrap();
    forward.store(false, Ordering::SeqCst);

    let mut leaver = support::logged_in_trust(&pooler);
    let mut q = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT 1", &mut q).unwrap();
    leaver.write_all(&q).unwrap();
    assert!(
        support::wait_for(Duration::from_secs(10), || stats().login == 1),
        "a second server's login started"
    );
    drop(leaver);
    assert!(
        support::wait_for(Duration::from_secs(10), || stats().login == 0),
        "the abandoned login still counts"
    );
    let s = stats();
    assert_eq!((s.active, s.idle, s.login), (1, 0, 0));
    holder.batch_execute("COMMIT").await.unwrap();
}

/// max_db_client_connections and max_user_client_connections, as PgBouncer 1.24 has them:
/// a client one past either limit is refused at login with 53300 naming it, a client that
/// leaves makes room, the admin console does not count, and SHOW DATABASES and SHOW USERS
/// count the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_limits_per_database_and_per_user() {
    let pg = primary();
    let pooler = Pooler::start_db(
        &pg,
        "max_user_client_connections = 2\nadmin_users = [\"app\"]",
        "max_db_client_connections = 3",
    );
    let refused = |e: tokio_postgres::Error, limit: &str| {
        let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
        assert_eq!(db.code().code(), "53300", "{db}");
        assert_eq!(
            db.message(),
            format!("client connections exceeded ({limit})")
        );
    };
    let login = |user: &str, password: &str| {
        let dsn = pooler.conn_str(user, password);
        async move {
            let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(c)
        }
    };
    let a1 = login("app", APP_PASSWORD).await.unwrap();
    let _a2 = login("app", APP_PASSWORD).await.unwrap();
    refused(
        login("app", APP_PASSWORD).await.unwrap_err(),
        "max_user_client_connections",
    );
    let _m1 = login("md5user", "md5 pw").await.unwrap();
    refused(
        login("md5user", "md5 pw").await.unwrap_err(),
        "max_db_client_connections",
    );
    // The console, as app, is none of these.
    let database = |column: &str| pooler.admin_column("SHOW DATABASES", column);
    assert_eq!(database("max_client_connections"), ["3"]);
    assert_eq!(database("current_client_connections"), ["3"]);
    let (header, rows) = pooler.admin_table("pgsluice", "SHOW USERS");
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let app = rows.iter().find(|r| r.starts_with("app|")).unwrap();
    let cells: Vec<&str> = app.split('|').collect();
    assert_eq!(cells[at("max_user_client_connections")], "2");
    assert_eq!(cells[at("current_client_connections")], "2");
    // One leaves: the next gets in.
    drop(a1);
    assert!(support::wait_for(Duration::from_secs(10), || {
        database("current_client_connections") == ["2"]
    }));
    let again = login("app", APP_PASSWORD).await.unwrap();
    assert_eq!(support::one(&again, "SELECT 1").await, "1");
}
