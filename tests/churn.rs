//! Long churn: a mixed load through pgsluice in front of a primary and two replicas, with
//! clients that connect for one transaction and leave, simple, extended and prepared queries,
//! COPY in and out, cancels, a reload at a fixed interval (each changing a pool size) and a
//! replica restarted halfway. It ends with no unexpected error, the pooler's open files where
//! the warm-up left them, and SHOW POOLS back to the configured minimums.
//!
//! `cargo test` runs it for 24 s with a reload every 3 s; `bench/churn.sh` runs it for 10
//! minutes with a reload every 30 s against a release build (PGSLUICE_CHURN_SECONDS,
//! PGSLUICE_CHURN_RELOAD), where it also holds the RSS after the run to within 10 % of the
//! RSS after the warm-up.

mod support;

use futures_util::SinkExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{wait_for, Process, Replicated};
use tokio_postgres::{Client, NoTls};

/// Clients of each kind, running at once.
const PER_KIND: usize = 3;
const MIN_POOL: usize = 2;

/// What the load met.
#[derive(Default)]
struct Tally {
    done: AtomicUsize,
    cancelled: AtomicUsize,
    /// Errors of work on the replica while it restarted (57P01, 08006 and such), allowed.
    restart: AtomicUsize,
    unexpected: Mutex<Vec<String>>,
}

/// When the replica restart began and when it ended (None: not yet).
#[derive(Default)]
struct Window(Mutex<Option<(Instant, Option<Instant>)>>);

impl Window {
    fn covers(&self, at: Instant) -> bool {
        match *self.0.lock().unwrap() {
            Some((from, to)) => at >= from && to.is_none_or(|to| at <= to + Duration::from_secs(5)),
            None => false,
        }
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("{e}"))
}

/// What a failure of `what` means: fine within the replica restart when it is one of the
/// server-gone codes; a fault otherwise.
fn failed(tally: &Tally, window: &Window, what: &str, e: &tokio_postgres::Error, at: Instant) {
    let code = sqlstate(e);
    let gone = matches!(
        code.as_str(),
        "57P01" | "57P02" | "57P03" | "08006" | "08003"
    );
    if gone && window.covers(at) {
        tally.restart.fetch_add(1, Ordering::Relaxed);
    } else {
        tally
            .unexpected
            .lock()
            .unwrap()
            .push(format!("{what}: {code}: {e:?}"));
    }
}

async fn connect(conn: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// One unit of work of `kind`, on `client` (or a new connection for kind 0).
async fn work(
    kind: usize,
    conn: &str,
    client: &Client,
    n: i64,
) -> Result<(), tokio_postgres::Error> {
    match kind {
        // A connection for one transaction.
        0 => {
            let c = connect(conn).await?;
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO churn (v) VALUES ({n}); COMMIT"
            ))
            .await?;
            let rows = c.simple_query("SELECT count(*) FROM items").await?;
            assert!(rows.len() >= 2);
        }
        // Simple protocol: autocommit reads and a write.
        1 => {
            client
                .simple_query("SELECT v FROM items WHERE id = 3")
                .await?;
            client
                .batch_execute(&format!("INSERT INTO churn (v) VALUES ({n})"))
                .await?;
        }
        // Extended protocol, a statement each time, in and out of transactions.
        2 => {
            let row = client.query_one("SELECT $1::int8 + 1", &[&n]).await?;
            assert_eq!(row.get::<_, i64>(0), n + 1);
            client
                .execute(
                    "UPDATE items SET v = v + 0 WHERE id = $1",
                    &[&((n % 10 + 1) as i32)],
                )
                .await?;
        }
        // Prepared once per connection, executed many times.
        3 => {
            let statement = client.prepare("SELECT v FROM items WHERE id = $1").await?;
            for id in 1..=5 {
                client.query(&statement, &[&id]).await?;
            }
        }
        // COPY in and out.
        4 => {
            let sink = client.copy_in("COPY churn (v) FROM STDIN").await?;
            futures_util::pin_mut!(sink);
            sink.send(bytes::Bytes::from(format!("{n}\n{}\n", n + 1)))
                .await?;
            assert_eq!(sink.finish().await?, 2);
            let out = client
                .copy_out("COPY (SELECT id FROM items) TO STDOUT")
                .await?;
            futures_util::pin_mut!(out);
            use futures_util::StreamExt;
            while let Some(chunk) = out.next().await {
                chunk?;
            }
        }
        _ => unreachable!(),
    }
    Ok(())
}

/// A client that starts a long query and cancels it.
async fn cancel_once(conn: &str, tally: &Tally) -> Result<(), tokio_postgres::Error> {
    let c = connect(conn).await?;
    let token = c.cancel_token();
    let slow = c.simple_query("SELECT pg_sleep(10)");
    let cancel = async {
        // Long enough for the query to reach a server (or the pool's queue) however busy
        // the machine: a cancel that reaches PostgreSQL before the query does is dropped
        // there too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    };
    let (slow, cancel) = tokio::join!(slow, cancel);
    cancel?;
    match slow {
        Err(e) if sqlstate(&e) == "57014" => {
            tally.cancelled.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(e),
        Ok(_) => {
            let mut unexpected = tally.unexpected.lock().unwrap();
            unexpected.push("a pg_sleep(10) was not cancelled".into());
            Ok(())
        }
    }
}

async fn load(conn: String, until: Instant, tally: Arc<Tally>, window: Arc<Window>) {
    let mut tasks = Vec::new();
    for kind in 0..6 {
        for i in 0..PER_KIND {
            let (conn, tally, window) = (conn.clone(), tally.clone(), window.clone());
            tasks.push(tokio::spawn(async move {
                let mut client: Option<Client> = None;
                let mut n = (kind * 1_000_000 + i * 100_000) as i64;
                while Instant::now() < until {
                    n += 1;
                    let at = Instant::now();
                    if kind == 5 {
                        if let Err(e) = cancel_once(&conn, &tally).await {
                            failed(&tally, &window, "cancel", &e, at);
                        }
                        continue;
                    }
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        match connect(&conn).await {
                            Ok(c) => client = Some(c),
                            Err(e) => {
                                failed(&tally, &window, "connect", &e, at);
                                // A pause before connecting again (the pooler or its server
                                // may be down for a moment).
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                continue;
                            }
                        }
                    }
                    let c = client.as_ref().unwrap();
                    match work(kind, &conn, c, n).await {
                        Ok(()) => {
                            tally.done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed(&tally, &window, &format!("kind {kind}"), &e, at),
                    }
                    // Now and then a client leaves and comes back.
                    if n % 50 == 0 {
                        client = None;
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn footprint(pid: u32) -> (u64, usize) {
    (support::status_kib(pid, "VmRSS:"), support::open_files(pid))
}

/// SHOW POOLS rows as (database, node, cl_active, cl_waiting, sv_active, sv_idle + sv_used).
async fn pools(admin: &str) -> Vec<(String, String, usize, usize, usize, usize)> {
    let c = connect(admin).await.expect("admin console");
    let rows = c.simple_query("SHOW POOLS").await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .map(|r| {
            let n = |col: &str| r.get(col).unwrap_or("0").parse::<usize>().unwrap_or(0);
            (
                r.get("database").unwrap_or_default().to_owned(),
                r.get("node").unwrap_or_default().to_owned(),
                n("cl_active"),
                n("cl_waiting"),
                n("sv_active"),
                n("sv_idle") + n("sv_used"),
            )
        })
        .collect()
}

#[test]
fn a_long_mixed_load_with_reloads_and_a_replica_restart_leaves_nothing_behind() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seconds = env("PGSLUICE_CHURN_SECONDS", 24);
    let reload_every = Duration::from_secs(env("PGSLUICE_CHURN_RELOAD", 3));
    let bench = std::env::var_os("PGSLUICE_CHURN_SECONDS").is_some();
    let cluster = Replicated::start();
    cluster
        .primary
        .psql_in(
            "app",
            "CREATE TABLE churn (v int8); ALTER TABLE churn OWNER TO app",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ports = (
        pgsluice::localpg::free_port(),
        pgsluice::localpg::free_port(),
    );
    let general = |pool: usize| {
        format!(
            "default_pool_size = {pool}\nmin_pool_size = {MIN_POOL}\nserver_idle_timeout = 2\n\
             max_client_conn = 200\nadmin_users = [\"app\"]\nhealth_check_interval = 1\n\
             query_wait_timeout = 30"
        )
    };
    let replicas = cluster.replicas_line();
    let mut pooler = Process::start_db(
        cluster.primary.port,
        dir.path(),
        "churn",
        &general(6),
        &replicas,
        ports,
    );
    let pid = pooler.child.id();
    let path = dir.path().join("churn.toml");
    let conn = pooler.conn_str();
    let admin = conn.replace("dbname=app", "dbname=pgsluice");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let window = Arc::new(Window::default());
    // Idle: every client gone, nobody waiting, every pool down to its minimum.
    let settle = |what: &str| {
        let settled = wait_for(Duration::from_secs(30), || {
            rt.block_on(pools(&admin))
                .iter()
                .all(|p| p.0 == "pgsluice" || (p.2 == 0 && p.3 == 0 && p.4 == 0 && p.5 <= MIN_POOL))
        });
        let now = rt.block_on(pools(&admin));
        assert!(
            settled,
            "{what}: pools did not come back to their minimums: {now:?}"
        );
        assert!(
            now.iter().any(|p| p.0 == "app" && p.5 == MIN_POOL),
            "{what}: no pool kept min_pool_size: {now:?}"
        );
    };

    // The warm-up: a fifth of the run, with no fault.
    let started = Instant::now();
    let warm = started + Duration::from_secs(seconds / 5);
    rt.block_on(load(conn.clone(), warm, tally.clone(), window.clone()));
    settle("after the warm-up");
    let (rss_warm, fds_warm) = footprint(pid);

    // The rest: reloads at an interval, the replica restarted halfway.
    let until = Instant::now() + Duration::from_secs(seconds - seconds / 5);
    let restart_at = Instant::now() + Duration::from_secs((seconds - seconds / 5) / 2);
    let running = rt.spawn(load(conn.clone(), until, tally.clone(), window.clone()));
    let mut reloads = 0;
    let mut restarted = false;
    let mut next_reload = Instant::now() + reload_every;
    while Instant::now() < until {
        if Instant::now() >= next_reload {
            reloads += 1;
            let pool = if reloads % 2 == 0 { 6 } else { 8 };
            std::fs::write(
                &path,
                Process::config(cluster.primary.port, &general(pool), &replicas, ports),
            )
            .unwrap();
            pooler.signal("HUP");
            next_reload += reload_every;
        }
        if !restarted && Instant::now() >= restart_at {
            restarted = true;
            *window.0.lock().unwrap() = Some((Instant::now(), None));
            cluster.replicas[0].stop(false).unwrap();
            cluster.replicas[0].start().unwrap();
            window.0.lock().unwrap().as_mut().unwrap().1 = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(running).unwrap();
    settle("after the run");
    let (rss_end, fds_end) = footprint(pid);
    assert!(
        pooler.child.try_wait().unwrap().is_none(),
        "the pooler exited"
    );

    let unexpected = tally.unexpected.lock().unwrap().clone();
    eprintln!(
        "churn: {seconds} s, {} units of work, {} cancelled, {reloads} reloads, replica \
         restarted: {restarted}, {} errors while it restarted, {} unexpected; RSS {rss_warm} \
         KiB after the warm-up, {rss_end} KiB at the end ({:+.1} %); open files {fds_warm} \
         then {fds_end}",
        tally.done.load(Ordering::Relaxed),
        tally.cancelled.load(Ordering::Relaxed),
        tally.restart.load(Ordering::Relaxed),
        unexpected.len(),
        (rss_end as f64 / rss_warm as f64 - 1.0) * 100.0,
    );
    assert!(unexpected.is_empty(), "unexpected errors: {unexpected:#?}");
    assert!(restarted && reloads >= 2);
    assert!(tally.cancelled.load(Ordering::Relaxed) > 0);
    // A console connection of the check above may still be closing.
    let fds_back = wait_for(Duration::from_secs(5), || footprint(pid).1 <= fds_warm);
    assert!(
        fds_back,
        "open files grew from {fds_warm} to {}",
        footprint(pid).1
    );
    if bench {
        assert!(
            rss_end as f64 <= rss_warm as f64 * 1.10,
            "RSS grew from {rss_warm} to {rss_end} KiB"
        );
    }
}
