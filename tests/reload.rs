//! Reloading the configuration while clients stay connected.

mod support;

use std::time::Duration;
use support::{connect, primary, Pooler, APP_PASSWORD};

fn config_text(pg_port: u16, general: &str) -> String {
    format!(
        "listen_port = 0\nquery_wait_timeout = 60\n{general}\n\
         [databases.app]\nport = {pg_port}\n[users.app]\npassword = \"{APP_PASSWORD}\"\n"
    )
}

/// Runs `SELECT pg_sleep(1)` on every client at once and returns the most server
/// connections seen meanwhile. A second leaves room for opening the new servers, whose SCRAM
/// login is slow in a debug build.
async fn busy_servers(
    pg: &pgsluice::localpg::LocalPostgres,
    clients: &[tokio_postgres::Client],
) -> usize {
    let watch = support::ActivityWatch::start(pg, "usename = 'app' AND state = 'active'");
    let runs = clients.iter().map(|c| c.simple_query("SELECT pg_sleep(1)"));
    for r in futures_util::future::join_all(runs).await {
        r.unwrap();
    }
    watch.stop()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_follows_a_reload_and_a_bad_file_changes_nothing() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsluice.toml");
    std::fs::write(&path, config_text(pg.port, "default_pool_size = 2")).unwrap();
    let pooler = Pooler::with_config(pgsluice::config::Config::load(&path).unwrap());
    pooler.ctx.config_path.set(path.clone()).unwrap();

    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&pooler, "app", APP_PASSWORD).await);
    }
    assert_eq!(busy_servers(&pg, &clients).await, 2);

    std::fs::write(&path, config_text(pg.port, "default_pool_size = 5")).unwrap();
    pooler.ctx.reload().unwrap();
    assert_eq!(pooler.ctx.config.load().general.default_pool_size, 5);
    assert_eq!(
        busy_servers(&pg, &clients).await,
        5,
        "the same clients, more servers"
    );

    std::fs::write(&path, config_text(pg.port, "default_pool_size = 0")).unwrap();
    let err = pooler.ctx.reload().unwrap_err();
    assert!(err.contains("default_pool_size"), "{err}");
    assert_eq!(pooler.ctx.config.load().general.default_pool_size, 5);
    assert_eq!(
        busy_servers(&pg, &clients).await,
        5,
        "a refused reload changed nothing"
    );

    // Lowered: servers beyond the new size close as they come back.
    std::fs::write(&path, config_text(pg.port, "default_pool_size = 1")).unwrap();
    pooler.ctx.reload().unwrap();
    assert_eq!(busy_servers(&pg, &clients).await, 1);
    assert!(support::wait_for(Duration::from_secs(5), || {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
            .unwrap()
            == "1"
    }));
    for c in &clients {
        c.simple_query("SELECT 1").await.unwrap();
    }
}
