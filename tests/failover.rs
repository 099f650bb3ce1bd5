//! A replica dies under load and comes back: reads outside transactions never see an error,
//! and the replica gets reads again once it passes a health check; a cancel sent to a replica
//! that is then lost holds for the read placed again. With `role = "auto"`, a promoted
//! replica takes the writes once the primary is gone.

mod support;

use pgsluice::router::RouteReason;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{backend_running, connect, port_of, signal, Replicated, APP_PASSWORD};

/// A read whose cancel went to a replica that could not act on it (its backend stopped) and
/// was then lost (the backend killed): the read, placed again on another node, is answered
/// as cancelled, as the client asked, instead of running in full there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_a_lost_replica_holds_for_the_read_placed_again() {
    let pg = Replicated::start();
    let pooler = pg.pooler("", "");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    let token = client.cancel_token();
    let slow = tokio::spawn(async move {
        client
            .simple_query("SELECT pg_sleep(30), 'lost cancel'")
            .await
            .map(|_| ())
    });
    let pid = backend_running(&pg.replicas, "lost cancel").expect("the read runs on a replica");
    signal(&pid, "STOP");
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    signal(&pid, "KILL");
    let e = slow.await.unwrap().expect_err("the read was cancelled");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{e}"
    );
}

#[derive(Default)]
struct Seen {
    /// Reads per port, before the restart and after it.
    before: HashMap<u16, usize>,
    after: HashMap<u16, usize>,
    errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_costs_reads_no_error_and_comes_back() {
    let pg = Arc::new(Replicated::start());
    let pooler = pg.pooler(
        "ban_time = 2\nhealth_check_interval = 1\nserver_connect_timeout = 5",
        "",
    );
    let victim = pg.replicas[0].port;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let restarted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let client = connect(&pooler, "app", APP_PASSWORD).await;
        // Half the clients use the extended protocol with a prepared statement.
        let prepared = if worker % 2 == 1 {
            Some(
                client
                    .prepare("SELECT inet_server_port(), pg_sleep(0.002)")
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        let (seen, restarted, stop) = (seen.clone(), restarted.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // Bounded: the test stops the loop, and it never runs past this many reads.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Restart state read before the query: a read that began before the
                // restart finished is not counted as after it.
                let after = restarted.load(Ordering::Relaxed);
                let r = match &prepared {
                    Some(stmt) => client
                        .query_one(stmt, &[])
                        .await
                        .map(|row| row.get::<_, i32>(0) as u16),
                    None => port_of(&client, "SELECT pg_sleep(0.002), inet_server_port()").await,
                };
                let mut seen = seen.lock().unwrap();
                match r {
                    Ok(port) if after => *seen.after.entry(port).or_insert(0) += 1,
                    Ok(port) => *seen.before.entry(port).or_insert(0) += 1,
                    Err(e) => seen.errors.push(e.to_string()),
                }
            }
        }));
    }
    let reads_before = |n: usize| seen.lock().unwrap().before.values().sum::<usize>() >= n;
    assert!(support::wait_for(Duration::from_secs(15), || reads_before(
        40
    )));
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.replicas[0].stop(true))
        .await
        .unwrap()
        .expect("stop replica");
    // The replica is banned: by reads that met it dead (and were retried elsewhere), or by
    // a health check that got there first, as it may on a loaded machine.
    let routes = pooler.ctx.routes.of("app");
    let cluster = pooler.ctx.clusters.get("app").unwrap();
    let failed = || cluster.nodes[1].usable() == pgsluice::cluster::Usable::Banned;
    assert!(support::wait_for(Duration::from_secs(15), failed));
    eprintln!(
        "reads retried elsewhere: {}",
        routes.get(RouteReason::Retry)
    );
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.replicas[0].start())
        .await
        .unwrap()
        .expect("start replica");
    restarted.store(true, Ordering::Relaxed);
    // ban_time is 2 s and checks run every second: reads should be back within seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if seen
            .lock()
            .unwrap()
            .after
            .get(&victim)
            .copied()
            .unwrap_or(0)
            >= 20
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.errors.is_empty(),
        "client-visible errors: {:?}",
        seen.errors
    );
    assert!(
        seen.before.contains_key(&victim),
        "the replica served reads before it died: {:?}",
        seen.before
    );
    assert!(
        seen.after.get(&victim).copied().unwrap_or(0) >= 20,
        "reads came back to the restarted replica: {:?}",
        seen.after
    );
    eprintln!(
        "before {:?} after {:?} retries {}",
        seen.before,
        seen.after,
        routes.get(RouteReason::Retry)
    );
    assert!(
        routes.get(RouteReason::Retry) > 0,
        "the retry counter moved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_transaction_the_client_sees_the_failure() {
    let pg = Replicated::start();
    let pooler = pg.pooler("ban_time = 60", "");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    client.simple_query("BEGIN READ ONLY").await.unwrap();
    let port = port_of(&client, "SELECT inet_server_port()").await.unwrap();
    let replica = pg
        .replicas
        .iter()
        .find(|r| r.port == port)
        .expect("on a replica");
    replica.stop(true).unwrap();
    assert!(
        port_of(&client, "SELECT inet_server_port()").await.is_err(),
        "a retry could hide a lost write: the transaction's failure is the client's"
    );
    // Other clients carry on, on the other replica.
    let other = connect(&pooler, "app", APP_PASSWORD).await;
    for _ in 0..10 {
        let p = port_of(&other, "SELECT inet_server_port()").await.unwrap();
        assert_ne!(p, port);
    }
}

/// With the default health_check_interval (5 s) and ban_time (60 s): a replica down for 10 s
/// is banned briefly, its ban doubles while its checks fail, and once it is back it gets reads
/// within 10 s of its restart, not after a full ban_time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_gets_reads_within_ten_seconds_of_its_restart() {
    let pg = Arc::new(Replicated::start());
    let pooler = pg.pooler("", "");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    let cluster = pooler.ctx.clusters.get("app").unwrap();
    let victim = pg.replicas[0].port;
    let read = || port_of(&client, "SELECT inet_server_port()");
    let mut served = false;
    for _ in 0..20 {
        served |= read().await.unwrap() == victim;
    }
    assert!(served, "the replica serves reads at first");
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.replicas[0].stop(true))
        .await
        .unwrap()
        .expect("stop replica");
    // Reads go on, and meet the dead replica or see it banned by a check.
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.nodes[1].usable() != pgsluice::cluster::Usable::Banned {
        assert!(
            Instant::now() < deadline,
            "the stopped replica was never banned"
        );
        read().await.expect("reads go elsewhere");
    }
    // The outage itself: ten seconds down, as after a crash and a restart.
    let down_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < down_until {
        assert_ne!(read().await.expect("reads go elsewhere"), victim);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.replicas[0].start())
        .await
        .unwrap()
        .expect("start replica");
    let restarted = Instant::now();
    loop {
        if read().await.expect("reads go on") == victim {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "no read reached the restarted replica within 10 s: {:?}",
            cluster.nodes[1].health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("reads back {:?} after the restart", restarted.elapsed());
}

/// The port a write ran on, or the error it got.
async fn write(client: &tokio_postgres::Client) -> Result<u16, tokio_postgres::Error> {
    port_of(
        client,
        "INSERT INTO items (v) VALUES (-1) RETURNING inet_server_port()",
    )
    .await
}

/// `role = "auto"`: the primary stops, replica 1 is promoted, and writes in a bounded loop go
/// to it within two health check intervals of the promotion, with no restart or reload. A
/// client between transactions sees no error: its write waits through the old primary's
/// failed logins and moves to the new one once the health check finds it. SHOW NODES shows
/// the new roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica() {
    let pg = Arc::new(Replicated::start());
    let interval = Duration::from_secs(1);
    let pooler = pg.pooler(
        "health_check_interval = 1\nadmin_users = [\"app\"]",
        "role = \"auto\"",
    );
    let cluster = pooler.ctx.clusters.get("app").unwrap();
    let mut client = connect(&pooler, "app", APP_PASSWORD).await;
    assert_eq!(write(&client).await.unwrap(), pg.primary.port);
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.primary.stop(false))
        .await
        .unwrap()
        .expect("stop the primary");
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.replicas[0].promote())
        .await
        .unwrap()
        .expect("promote replica 1");
    let promoted = Instant::now();
    let mut failures = Vec::new();
    let new_primary = pg.replicas[0].port;
    loop {
        match write(&client).await {
            Ok(port) => {
                assert_eq!(port, new_primary, "a write went to a replica");
                break;
            }
            Err(e) => {
                let code = e.code().map(|c| c.code().to_owned());
                let clean = ["08006", "57P01", "57P02", "57P03", "08P01"];
                assert!(
                    code.as_deref().is_some_and(|c| clean.contains(&c)),
                    "not a clean error: {e:?}"
                );
                failures.push(code.unwrap_or_default());
                // A FATAL error ends the session: the application connects again.
                client = connect(&pooler, "app", APP_PASSWORD).await;
            }
        }
        assert!(
            promoted.elapsed() < 2 * interval + Duration::from_millis(500),
            "writes did not reach the new primary within two health check intervals: {failures:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failures.is_empty(),
        "a client between transactions saw {failures:?}"
    );
    eprintln!(
        "writes on the new primary {:?} after the promotion, {} failed meanwhile: {failures:?}",
        promoted.elapsed(),
        failures.len()
    );
    assert_eq!(cluster.primary(), 1);
    let (_, rows) = pooler.admin_table("pgsluice", "SHOW NODES");
    let roles: Vec<&str> = rows
        .iter()
        .map(|r| r.split('|').nth(2).unwrap_or(""))
        .collect();
    assert_eq!(roles, ["replica", "primary", "replica"], "{rows:?}");
    // Reads still work, and more writes land on the new primary.
    for _ in 0..5 {
        assert_eq!(write(&client).await.unwrap(), new_primary);
        port_of(&client, "SELECT inet_server_port()").await.unwrap();
    }
}

/// `role = "auto"`: a replica promoted while the primary still runs makes two primaries:
/// writes are refused with a clear error and /ready says 503, until the old one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_refuse_writes_until_one_remains() {
    let pg = Arc::new(Replicated::start());
    let pooler = pg.pooler("health_check_interval = 1", "role = \"auto\"");
    let cluster = pooler.ctx.clusters.get("app").unwrap();
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    assert_eq!(write(&client).await.unwrap(), pg.primary.port);
    assert!(support::wait_for(Duration::from_secs(10), || pooler
        .http_get("/ready")
        .0
        == 200));
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.replicas[0].promote())
        .await
        .unwrap()
        .expect("promote replica 1");
    let contested = || cluster.leader() == pgsluice::cluster::Leader::Contested;
    assert!(support::wait_for(Duration::from_secs(5), contested));
    let err = write(&client)
        .await
        .expect_err("a write with two primaries");
    let db = err.as_db_error().expect("an error from pgsluice");
    assert_eq!(db.code().code(), "08006");
    assert!(
        db.message()
            .contains("more than one node claims to be the primary"),
        "{db:?}"
    );
    let (status, body) = pooler.http_get("/ready");
    assert_eq!(status, 503, "{body}");
    // Reads go on, to the replica that is still one.
    assert_eq!(
        port_of(&client, "SELECT inet_server_port()").await.unwrap(),
        pg.replicas[1].port
    );
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.primary.stop(false))
        .await
        .unwrap()
        .expect("stop the old primary");
    assert!(support::wait_for(Duration::from_secs(5), || !contested()));
    assert_eq!(write(&client).await.unwrap(), pg.replicas[0].port);
    assert!(support::wait_for(Duration::from_secs(5), || pooler
        .http_get("/ready")
        .0
        == 200));
}
