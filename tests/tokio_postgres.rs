//! tokio-postgres through pgsluice: queries, transactions, COPY, cancel, session parameters.

mod support;

use futures_util::SinkExt;
use std::time::Duration;
use support::{connect, primary, Pooler, APP_PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_transactions_and_copy() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1");
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let row = c.query_one("SELECT $1::int + 1", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);

    let mut c = c;
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO items VALUES (1, 'one')", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO items VALUES (2, 'two')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i32> = c
        .query("SELECT id FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![2]);

    let sink = c.copy_in("COPY items FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let data: String = (10..1010).map(|i| format!("{i}\tv{i}\n")).collect();
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1000);
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1001);

    // A copy the client abandons half way (CopyFail) leaves nothing behind.
    let mut sink = Box::pin(c.copy_in("COPY items FROM STDIN").await.unwrap());
    sink.send(bytes::Bytes::from_static(b"5000\tx\n"))
        .await
        .unwrap();
    drop(sink);
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1001);

    let out = c
        .copy_out("COPY (SELECT id FROM items ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(out);
    let mut lines = 0;
    while let Some(chunk) = futures_util::StreamExt::next(&mut out).await {
        lines += chunk.unwrap().iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(lines, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 2");
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    let token = c.cancel_token();
    let port = pg.port;
    let canceller = tokio::spawn(async move {
        let running = tokio::task::spawn_blocking(move || {
            support::wait_for(Duration::from_secs(10), || {
                support::running_on(port, "pg_sleep")
            })
        });
        assert!(running.await.unwrap(), "the query started");
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let started = std::time::Instant::now();
    let err = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // The session goes on.
    assert_eq!(row_text(&c.simple_query("SELECT 1").await.unwrap()), "1");
}

/// A query still waiting for a server when its client cancels it is answered as PostgreSQL
/// answers a cancelled one, and never runs: on one server the cancel would have met it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_query_waiting_for_a_server() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1");
    let holder = connect(&pooler, "app", APP_PASSWORD).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    let token = c.cancel_token();
    let waiting = tokio::spawn(async move {
        let err = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
        (err, c)
    });
    let queued = tokio::task::spawn_blocking(move || {
        support::wait_for(Duration::from_secs(10), || {
            support::clients_waiting(&pooler) == 1
        });
        pooler
    });
    let pooler = queued.await.unwrap();
    assert_eq!(support::clients_waiting(&pooler), 1, "the query waits");
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (err, c) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the cancel answered the waiting query")
        .unwrap();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    // It never reaches the server once the holder lets go, and the session goes on.
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(row_text(&c.simple_query("SELECT 1").await.unwrap()), "1");
    assert!(!support::running_on(pg.port, "pg_sleep(30)"));
    drop(pooler);
}

/// A cancel request that reaches a server as its client's query ends never meets the query
/// of the client that would get the server next: a server a client's cancel was sent to is
/// not pooled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_never_reaches_the_next_clients_query() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1");
    let x = connect(&pooler, "app", APP_PASSWORD).await;
    let y = connect(&pooler, "app", APP_PASSWORD).await;
    let token = x.cancel_token();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // X's queries are short: most cancels arrive as one ends and the server changes hands.
    let xs = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut cancelled = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = x.simple_query("SELECT pg_sleep(0.001)").await {
                    assert_eq!(
                        e.code(),
                        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
                    );
                    cancelled += 1;
                }
            }
            cancelled
        })
    };
    let cancels = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                token.cancel_query(tokio_postgres::NoTls).await.unwrap();
                sent += 1;
            }
            sent
        })
    };
    for _ in 0..300 {
        let r = y.simple_query("SELECT pg_sleep(0.002), 'y'").await;
        assert!(r.is_ok(), "X's cancel reached Y's query: {r:?}");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = cancels.await.unwrap();
    let cancelled = xs.await.unwrap();
    eprintln!("300 queries of Y untouched by {sent} cancels for X ({cancelled} of X's cancelled)");
    assert!(cancelled > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_parameters_follow_the_client() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 1");
    let conn = format!(
        "{} application_name=first options='-c TimeZone=Asia/Tokyo'",
        pooler.conn_str("app", APP_PASSWORD)
    );
    let (a, ca) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(ca);
    let b = connect(&pooler, "app", APP_PASSWORD).await;
    // One server for both: each client must still see its own settings.
    for _ in 0..3 {
        let tz = a.simple_query("SHOW TimeZone").await.unwrap();
        let b_tz = b.simple_query("SHOW TimeZone").await.unwrap();
        assert_eq!(row_text(&tz), "Asia/Tokyo");
        assert_ne!(row_text(&b_tz), "Asia/Tokyo");
        let app = a.simple_query("SHOW application_name").await.unwrap();
        assert_eq!(row_text(&app), "first");
    }
    // A SET of a reported parameter sticks to the client that made it.
    b.simple_query("SET application_name = 'second'")
        .await
        .unwrap();
    assert_eq!(
        row_text(&a.simple_query("SHOW application_name").await.unwrap()),
        "first"
    );
    assert_eq!(
        row_text(&b.simple_query("SHOW application_name").await.unwrap()),
        "second"
    );
}

fn row_text(msgs: &[tokio_postgres::SimpleQueryMessage]) -> String {
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}
