//! The pool against a real PostgreSQL: the order of the wait queue, the reserve,
//! query_wait_timeout, server_check_query, and limits shared between pools.

use super::*;
use crate::localpg::LocalPostgres;
use crate::server::Credentials;
use crate::stats::PoolFamilies;
use crate::tls::ServerMode;
use std::sync::Mutex;

/// A pool of `postgres` on `pg`, under `extra` settings.
fn pool(pg: &LocalPostgres, extra: &str, limits: Limits) -> Arc<Pool> {
    let text = format!("{extra}\n[databases.postgres]\nport = {}\n", pg.port);
    let config = Config::parse(&text, "test").unwrap();
    let settings = config.pool_settings("postgres", "postgres").unwrap();
    let target = Target {
        host: "127.0.0.1".into(),
        port: pg.port,
        dbname: "postgres".into(),
        credentials: Credentials {
            user: "postgres".into(),
            secret: None,
        },
        tls: crate::tls::ServerTls {
            mode: ServerMode::Disable,
            ..Default::default()
        },
        tcp: Default::default(),
    };
    let metrics = PoolFamilies::new(&prometheus::Registry::new(), "test")
        .for_pool("postgres", "postgres", "node");
    let key = ("postgres", "postgres", 0);
    Arc::new(Pool::new(key, settings, target, limits, &config, metrics))
}

/// Waits until `done` holds, for at most ten seconds.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn waiters_are_served_in_the_order_they_came() {
    let pg = LocalPostgres::start_primary().unwrap();
    let p = pool(&pg, "default_pool_size = 1", Limits::default());
    let first = p.checkout().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..3 {
        let (p2, order) = (p.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let c = p2.checkout().await.unwrap();
            order.lock().unwrap().push(i);
            p2.release(c.conn, true);
        }));
        wait_for("the waiter is in line", || p.stats().waiting == i + 1).await;
    }
    p.release(first.conn, true);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
    assert_eq!(p.stats().open(), 1, "one server served everyone in turn");
}

#[tokio::test]
async fn the_reserve_serves_one_more_client_after_reserve_pool_timeout() {
    let pg = LocalPostgres::start_primary().unwrap();
    let settings = "default_pool_size = 1\nreserve_pool_size = 1\n\
                    reserve_pool_timeout = \"50ms\"\nquery_wait_timeout = \"300ms\"";
    let p = pool(&pg, settings, Limits::default());
    let first = p.checkout().await.unwrap();
    let second = p.checkout().await.unwrap();
    assert!(
        second.waited >= Duration::from_millis(50),
        "{:?}",
        second.waited
    );
    assert_eq!(p.stats().active, 2, "the pool and its reserve");
    let third = p.checkout().await;
    assert!(
        matches!(third, Err(PoolError::WaitTimeout)),
        "the reserve is used up"
    );
    p.release(first.conn, true);
    p.release(second.conn, true);
}

#[tokio::test]
async fn a_server_that_fails_the_check_query_is_replaced_unseen() {
    let pg = LocalPostgres::start_primary().unwrap();
    let settings = "server_check_delay = 0\nserver_check_query = \"SELECT 1\"";
    let p = pool(&pg, settings, Limits::default());
    let c = p.checkout().await.unwrap();
    let (id, pid) = (c.conn.id, c.conn.cancel_key.process_id);
    p.release(c.conn, true);
    pg.psql(&format!("SELECT pg_terminate_backend({pid}, 5000)"))
        .unwrap();
    let c = p.checkout().await.unwrap();
    assert_ne!(c.conn.id, id, "the dead server was not handed out");
    assert_eq!(p.metrics.server_connects.get(), 2);
    let c2 = c.conn;
    p.release(c2, true);
    assert_eq!(p.stats().open(), 1, "the dead one no longer counts");
}

#[tokio::test]
async fn a_shared_limit_moves_a_permit_to_the_pool_that_waits() {
    let pg = LocalPostgres::start_primary().unwrap();
    let limit = Limit::new(1);
    let limits = Limits {
        db: Some(limit.clone()),
        user: None,
    };
    let a = pool(&pg, "default_pool_size = 2", limits.clone());
    let b = pool(&pg, "default_pool_size = 2", limits.clone());
    limit.add_pool(&a);
    limit.add_pool(&b);
    let held = a.checkout().await.unwrap();
    let b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.checkout().await });
    wait_for("b waits for a permit", || limits.contended()).await;
    assert_eq!(b.stats().open(), 1, "b counts its slot while it waits");
    a.release(held.conn, true);
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(
        a.stats().open(),
        0,
        "a's server was closed to free the permit"
    );
    b.release(got.conn, true);
    assert_eq!((a.stats().open(), b.stats().idle), (0, 1));
}

#[tokio::test]
async fn a_client_that_gives_up_its_place_is_no_longer_counted_waiting() {
    let pg = LocalPostgres::start_primary().unwrap();
    let p = pool(&pg, "default_pool_size = 1", Limits::default());
    let held = p.checkout().await.unwrap();
    let p2 = p.clone();
    let waiter = tokio::spawn(async move { p2.checkout().await.map(|c| c.conn.id) });
    wait_for("the client is in line", || p.stats().waiting == 1).await;
    waiter.abort();
    wait_for("the client left the line", || p.stats().waiting == 0).await;
    assert_eq!(p.stats().max_wait, Duration::ZERO);
    p.release(held.conn, true);
    assert_eq!(
        (p.stats().idle, p.stats().open()),
        (1, 1),
        "the server went back, not to the gone client"
    );
}
