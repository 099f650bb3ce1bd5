//! Two pgsluice processes with the same configuration (but their ports) in front of one
//! database, clients spread over both as a TCP load balancer would: every result is right on
//! both, and each instance keeps to its own pool.

mod support;

use support::{primary, Process, APP_PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_serve_clients_side_by_side() {
    let pg = primary();
    pg.psql_in(
        "app",
        "CREATE TABLE ledger (client int, n int); ALTER TABLE ledger OWNER TO app",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let start = |name| Process::start(pg.port, dir.path(), name, "default_pool_size = 3");
    let instances = [start("one"), start("two")];
    let watch = support::ActivityWatch::start(&pg, "usename = 'app'");
    let mut tasks = Vec::new();
    for client in 0..8 {
        // Round robin over the instances, as a balancer would place connections.
        let port = instances[client % 2].port;
        tasks.push(tokio::spawn(async move {
            let conn =
                format!("host=127.0.0.1 port={port} user=app password='{APP_PASSWORD}' dbname=app");
            let (mut c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let client = client as i32;
            for n in 0..50i32 {
                let tx = c.transaction().await.unwrap();
                tx.execute("INSERT INTO ledger VALUES ($1, $2)", &[&client, &n])
                    .await
                    .unwrap();
                let row = tx
                    .query_one(
                        "SELECT count(*), coalesce(sum(n), 0) FROM ledger WHERE client = $1",
                        &[&client],
                    )
                    .await
                    .unwrap();
                // Within its transaction a client sees exactly its own writes so far.
                assert_eq!(row.get::<_, i64>(0), i64::from(n) + 1);
                assert_eq!(row.get::<_, i64>(1), i64::from(n * (n + 1) / 2));
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let servers = watch.stop();
    assert_eq!(
        pg.psql_in("app", "SELECT count(*), count(DISTINCT client) FROM ledger")
            .unwrap(),
        "400|8"
    );
    assert!(
        servers <= 6,
        "each instance keeps to its pool of 3: {servers} server connections"
    );
}
