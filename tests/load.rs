//! Many clients over few servers: real load from pgbench and from hundreds of tokio-postgres
//! clients, with the server side watched in pg_stat_activity.

mod support;

use support::{pgbench, primary, Pooler, APP_PASSWORD};

fn assert_clean_run(text: &str, transactions: usize) {
    assert!(
        text.contains(&format!(
            "number of transactions actually processed: {transactions}/{transactions}"
        )),
        "{text}"
    );
    assert!(
        text.contains("number of failed transactions: 0 (0.000%)"),
        "{text}"
    );
}

#[test]
fn pgbench_every_query_mode_through_a_small_pool() {
    let pg = primary();
    pgbench(pg.port, &["-i", "-s", "1", "-q"]);
    let pooler = Pooler::start(
        &pg,
        "default_pool_size = 4\nmax_client_conn = 100\nquery_wait_timeout = 20",
    );
    // -j 2 for 16 clients: pgbench prepares each client's statements synchronously in its
    // thread's loop, while that thread's other clients hold servers inside transactions. It
    // goes on only because a prepare of statements the pool knows is answered without a
    // server (with any pooler that asks a server for it, it waits until query_wait_timeout).
    for mode in ["simple", "extended", "prepared"] {
        // -n: no VACUUM/TRUNCATE first, so the history of every run is kept.
        let text = pgbench(
            pooler.port(),
            &["-n", "-M", mode, "-c", "16", "-j", "2", "-t", "100"],
        );
        assert_clean_run(&text, 1600);
    }
    for mode in ["simple", "prepared"] {
        let args = ["-n", "-M", mode, "-S", "-c", "32", "-j", "32", "-t", "200"];
        assert_clean_run(&pgbench(pooler.port(), &args), 6400);
    }
    // Every update landed: 1600 TPC-B transactions per mode, each inserting one history row.
    let history = pg.psql_in("app", "SELECT count(*) FROM pgbench_history");
    assert_eq!(history.unwrap(), "4800");
}

/// 500 concurrent clients over a pool of 10: the primary never sees more than 10 server
/// connections for that user, and every client's work is done.
#[test]
fn five_hundred_clients_share_ten_servers() {
    let pg = primary();
    pg.psql_in("app", "CREATE TABLE counter (id int PRIMARY KEY, n int); INSERT INTO counter VALUES (1, 0); ALTER TABLE counter OWNER TO app").unwrap();
    let pooler = Pooler::start(
        &pg,
        "default_pool_size = 10\nmax_client_conn = 600\nquery_wait_timeout = 60",
    );
    let watch = support::ActivityWatch::start(&pg, "usename = 'app'");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dsn = pooler.conn_str("app", APP_PASSWORD);
    let done = rt.block_on(async move {
        let mut tasks = Vec::new();
        for i in 0..500 {
            let dsn = dsn.clone();
            tasks.push(tokio::spawn(async move {
                let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                for _ in 0..3 {
                    c.simple_query("BEGIN; UPDATE counter SET n = n + 1 WHERE id = 1; SELECT pg_sleep(0.001); COMMIT")
                        .await
                        .unwrap();
                }
                let rows = c.simple_query(&format!("SELECT {i}")).await.unwrap();
                assert_eq!(rows.len(), 3);
                1usize
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap();
        }
        done
    });
    let max = watch.stop();
    assert_eq!(done, 500);
    assert_eq!(pg.psql_in("app", "SELECT n FROM counter").unwrap(), "1500");
    assert!(
        (1..=10).contains(&max),
        "primary saw {max} server connections for app"
    );
}
