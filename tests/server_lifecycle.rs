//! Server connections over time: session-mode reset, idle reaping, min_pool_size kept warm,
//! server_lifetime (0: each server used once), servers the server closed while idle, and the primary restarting or down.

mod support;

use std::time::Duration;
use support::{connect, primary, Pooler, APP_PASSWORD};

fn app_servers(pg: &pgsluice::localpg::LocalPostgres) -> usize {
    pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_the_server_between_clients() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "pool_mode = \"session\"\ndefault_pool_size = 1");
    let a = connect(&pooler, "app", APP_PASSWORD).await;
    a.batch_execute(
        "SET search_path = nowhere; CREATE TEMP TABLE mine (x int); PREPARE p AS SELECT 1",
    )
    .await
    .unwrap();
    let pid_a = a.simple_query("SELECT pg_backend_pid()").await.unwrap();
    drop(a);
    let b = connect(&pooler, "app", APP_PASSWORD).await;
    let pid_b = b.simple_query("SELECT pg_backend_pid()").await.unwrap();
    assert_eq!(
        format!("{pid_a:?}"),
        format!("{pid_b:?}"),
        "pool of one: the same server"
    );
    let sp = b.simple_query("SHOW search_path").await.unwrap();
    assert!(format!("{sp:?}").contains("public"), "{sp:?}");
    assert!(
        b.simple_query("SELECT * FROM mine").await.is_err(),
        "temp table survived"
    );
    assert!(
        b.simple_query("EXECUTE p").await.is_err(),
        "prepared statement survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_servers_are_reaped_down_to_min_pool_size() {
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "default_pool_size = 4\nmin_pool_size = 1\nserver_idle_timeout = 1",
    );
    let clients: Vec<_> =
        futures_util::future::join_all((0..4).map(|_| connect(&pooler, "app", APP_PASSWORD))).await;
    let queries = clients
        .iter()
        .map(|c| c.simple_query("SELECT pg_sleep(0.3)"));
    for r in futures_util::future::join_all(queries).await {
        r.unwrap();
    }
    assert!(app_servers(&pg) >= 2);
    let reaped = support::wait_for(Duration::from_secs(10), || app_servers(&pg) == 1);
    assert!(reaped, "{} servers left", app_servers(&pg));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_is_kept_warm_and_lifetime_recycles() {
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "default_pool_size = 4\nmin_pool_size = 2\nserver_lifetime = 1",
    );
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    c.simple_query("SELECT 1").await.unwrap();
    assert!(support::wait_for(Duration::from_secs(10), || app_servers(
        &pg
    ) == 2));
    let pids = || {
        pg.psql("SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE usename = 'app'").unwrap()
    };
    let before = pids();
    let recycled = support::wait_for(Duration::from_secs(10), || {
        let now = pids();
        now.split(',').count() == 2 && now.split(',').all(|p| !before.split(',').any(|b| b == p))
    });
    assert!(
        recycled,
        "servers were not replaced after server_lifetime: {before} -> {}",
        pids()
    );
}

/// server_lifetime = 0 means, as in PgBouncer, that a server connection is used only once:
/// each client session (session mode) and each transaction (transaction mode) meets a new
/// server session, while those min_pool_size keeps warm are not thrown away unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_zero_uses_each_server_once() {
    let pg = primary();
    let pooler = Pooler::start(
        &pg,
        "pool_mode = \"session\"\ndefault_pool_size = 1\nmin_pool_size = 1\nserver_lifetime = 0",
    );
    let pid = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
                _ => None,
            })
            .unwrap()
    };
    let warm = || {
        pg.psql("SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = 'app'")
            .unwrap()
    };
    let a = connect(&pooler, "app", APP_PASSWORD).await;
    let pid_a = pid(a.simple_query("SELECT pg_backend_pid()").await.unwrap());
    assert_eq!(
        pid_a,
        pid(a.simple_query("SELECT pg_backend_pid()").await.unwrap()),
        "session mode: one server for the whole session"
    );
    drop(a);
    // A's server is closed, and another opened for min_pool_size.
    assert!(
        support::wait_for(Duration::from_secs(10), || {
            let w = warm();
            !w.is_empty() && !w.contains(',') && w != pid_a
        }),
        "no fresh warm server: {}",
        warm()
    );
    let fresh = warm();
    let b = connect(&pooler, "app", APP_PASSWORD).await;
    let pid_b = pid(b.simple_query("SELECT pg_backend_pid()").await.unwrap());
    assert_eq!(
        pid_b, fresh,
        "the warm server, never used, serves the next client"
    );
    drop(b);

    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1\nserver_lifetime = 0");
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        seen.insert(pid(c
            .simple_query("SELECT pg_backend_pid()")
            .await
            .unwrap()));
    }
    assert_eq!(
        seen.len(),
        3,
        "transaction mode: a new server per transaction: {seen:?}"
    );
}

/// A pooled server terminated while idle (pg_terminate_backend) is noticed and replaced
/// before a client gets it, with server_check_query on or off: the client sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_died_while_idle_is_checked_out_of_the_pool() {
    for check in ["server_check_delay = 0", "server_check_query = \"\""] {
        let pg = primary();
        let pooler = Pooler::start(&pg, &format!("default_pool_size = 1\n{check}"));
        let client = connect(&pooler, "app", APP_PASSWORD).await;
        client.simple_query("SELECT 1").await.unwrap();
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'")
            .unwrap();
        assert!(support::wait_for(Duration::from_secs(5), || app_servers(
            &pg
        ) == 0));
        let r = client.simple_query("SELECT 1").await;
        assert!(r.is_ok(), "{check}: {r:?}");
    }
}

/// The primary restarted (`pg_ctl stop -m fast`, then start) under a loop of writes: a write
/// in flight at the stop gets one clean error, clients between transactions get none (their
/// pooled servers are dead and replaced; logins that fail meanwhile are tried again after a
/// short wait), writes succeed again soon after the primary accepts connections, and every
/// write reported committed is in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_primary_restart_costs_clients_between_transactions_nothing() {
    // Only a write in flight at the stop: PostgreSQL's own shutdown error, or the connection
    // lost under it (one sent to a server already on its way out).
    restart_under_writes(false, &["57P01", "08006"]).await;
}

/// The same with `pg_ctl stop -m immediate`: the backends are killed without a goodbye, so a
/// write in flight may also see the connection drop (08006) or the crash's error (57P02),
/// or be refused while the primary recovers (57P03); nothing else, and no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_primary_restart_costs_clients_between_transactions_nothing() {
    restart_under_writes(true, &["57P01", "57P02", "57P03", "08006"]).await;
}

async fn restart_under_writes(immediate: bool, allowed: &[&str]) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    let pg = Arc::new(primary());
    pg.psql_in("app", "CREATE TABLE w (n int); ALTER TABLE w OWNER TO app")
        .unwrap();
    let pooler = Pooler::start(&pg, "default_pool_size = 4");
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let last_ok = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for client in 0..8 {
        let c = connect(&pooler, "app", APP_PASSWORD).await;
        let (stop, committed, errors, last_ok) = (
            stop.clone(),
            committed.clone(),
            errors.clone(),
            last_ok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.simple_query("INSERT INTO w VALUES (1)").await {
                    Ok(_) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                        last_ok.lock().unwrap().push((client, Instant::now()));
                    }
                    Err(e) => {
                        let code = e.code().map(|c| c.code().to_owned());
                        errors
                            .lock()
                            .unwrap()
                            .push((client, code, format!("{e:?}")));
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pg2 = pg.clone();
    let back = tokio::task::spawn_blocking(move || {
        pg2.stop(immediate).unwrap();
        pg2.start().unwrap();
        Instant::now()
    })
    .await
    .unwrap();
    // Every client that did not fail writes again soon.
    let again = |c: usize| {
        last_ok
            .lock()
            .unwrap()
            .iter()
            .any(|&(n, at)| n == c && at > back)
    };
    let failed: Vec<usize> = errors.lock().unwrap().iter().map(|e| e.0).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(0..8).filter(|c| !failed.contains(c)).all(again) {
        assert!(
            Instant::now() < deadline,
            "clients did not write again: {:?}",
            errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_after = last_ok
        .lock()
        .unwrap()
        .iter()
        .filter(|&&(_, at)| at > back)
        .map(|&(_, at)| at - back)
        .min()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let errors = errors.lock().unwrap();
    for (_, code, text) in errors.iter() {
        assert!(
            code.as_deref().is_some_and(|c| allowed.contains(&c)),
            "{code:?}: {text}"
        );
    }
    eprintln!(
        "{} writes, {} errors ({errors:?}), first write {first_after:?} after the restart",
        committed.load(Ordering::Relaxed),
        errors.len()
    );
    assert!(first_after < Duration::from_secs(1), "{first_after:?}");
    let rows: usize = pg
        .psql_in("app", "SELECT count(*) FROM w")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        rows,
        committed.load(Ordering::Relaxed),
        "writes reported committed"
    );
}

/// A pooled server that PostgreSQL itself closes for being idle (idle_session_timeout) is
/// noticed and replaced before a client gets it: the client sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closed_by_idle_session_timeout_is_replaced_unseen() {
    let pg = primary();
    pg.psql("ALTER ROLE app SET idle_session_timeout = '300ms'")
        .unwrap();
    let pooler = Pooler::start(&pg, "default_pool_size = 1\nserver_check_query = \"\"");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    for round in 0..3 {
        client.simple_query("SELECT 1").await.unwrap();
        assert!(
            support::wait_for(Duration::from_secs(5), || app_servers(&pg) == 0),
            "round {round}: the server did not close its idle session"
        );
        let r = client.simple_query("SELECT 1").await;
        assert!(r.is_ok(), "round {round}: {r:?}");
    }
}

/// The primary stopped for good: a client's query gets a clean error within query_wait_timeout
/// (not after server_login_retry backoffs pile up, not never), and once the primary is back,
/// queries work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_stays_down_fails_queries_within_query_wait_timeout() {
    use std::time::Instant;
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 2\nquery_wait_timeout = 2");
    connect(&pooler, "app", APP_PASSWORD)
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
    pg.stop(false).unwrap();
    for attempt in 0..3 {
        // A connection of its own each time: the error may end the session.
        let client = connect(&pooler, "app", APP_PASSWORD).await;
        let start = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1"))
            .await
            .expect("the query must end, not hang");
        let took = start.elapsed();
        let e = r.expect_err("the primary is down");
        let code = e.code().map(|c| c.code().to_owned());
        assert!(
            matches!(code.as_deref(), Some("08006" | "08P01" | "57P01" | "57P03")),
            "attempt {attempt}: {e}"
        );
        assert!(
            took < Duration::from_secs(4),
            "attempt {attempt}: {took:?}: {e}"
        );
    }
    pg.start().unwrap();
    // The pooler tries a login again in the background (each failure doubles the wait, up to
    // server_login_retry), even though every client gave up before the wait was over.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let client = connect(&pooler, "app", APP_PASSWORD).await;
        if client.simple_query("SELECT 1").await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the primary came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server lost while the pooler brings it in line with a client's settings, before any of
/// the client's work went there, is replaced: the client sees nothing. Both ways a server is
/// lost: it ends the connection with an error (pg_terminate_backend, as a shutdown does), and
/// it stops answering (server_connect_timeout). The server is held in the middle of the
/// alignment by a lock: `default_text_search_config`'s check looks the configuration up in
/// pg_ts_config, which another session holds in ACCESS EXCLUSIVE mode (each round asks for
/// a configuration no server has looked up, which no cache answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_lost_while_brought_in_line_is_replaced_unseen() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 2\nserver_connect_timeout = 1");
    let blocked = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                   AND wait_event_type = 'Lock' AND query LIKE '%default_text_search_config%'";
    let waiting = |n: usize| pg.psql(blocked).unwrap().parse::<usize>().unwrap() >= n;
    for (terminated, wanted) in [(true, "pg_catalog.english"), (false, "pg_catalog.french")] {
        let (holder, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=postgres dbname=app", pg.port),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        holder
            .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_ts_config IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let config = format!(
            "{} options='-c default_text_search_config={wanted}'",
            pooler.conn_str("app", APP_PASSWORD)
        );
        let (client, conn) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let query = tokio::spawn(async move {
            let sql = "SELECT pg_catalog.current_setting('default_text_search_config')";
            tokio::time::timeout(Duration::from_secs(30), client.simple_query(sql)).await
        });
        assert!(
            support::wait_for(Duration::from_secs(10), || waiting(1)),
            "no server waits on the lock"
        );
        if terminated {
            pg.psql(&blocked.replace("count(*)", "pg_terminate_backend(pid)"))
                .unwrap();
        } else {
            // The first server is given up after server_connect_timeout; the work waits
            // on a second one.
            assert!(
                support::wait_for(Duration::from_secs(10), || waiting(2)),
                "the work did not move to another server"
            );
        }
        holder.batch_execute("COMMIT").await.unwrap();
        let rows = query.await.unwrap().expect("an answer within 30 s");
        let value = rows.as_ref().ok().and_then(|rows| {
            rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
        });
        assert_eq!(
            value.as_deref(),
            Some(wanted),
            "terminated: {terminated}: {rows:?}"
        );
    }
}
