//! Server connections over time: session-mode reset, idle reaping, min_pool_size kept warm,
//! server_lifetime.

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

/// A pooled server that died while idle is caught by server_check_query before a client gets
/// it; with the check off, the client would get the dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_died_while_idle_is_checked_out_of_the_pool() {
    for (check, survives) in [
        ("server_check_delay = 0", true),
        ("server_check_query = \"\"", false),
    ] {
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
        assert_eq!(r.is_ok(), survives, "{check}: {r:?}");
    }
}
