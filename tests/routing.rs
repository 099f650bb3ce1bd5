//! Read/write routing against a real primary and two streaming replicas: where each kind of
//! statement runs is read back with `inet_server_port()`.

mod support;

use pgsluice::cluster::Usable;
use pgsluice::router::RouteReason;
use support::{connect, Pooler, Replicated, APP_PASSWORD};
use tokio_postgres::SimpleQueryMessage;

/// Which server answered `sql`.
async fn port_of(client: &tokio_postgres::Client, sql: &str) -> u16 {
    support::port_of(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn counter(pooler: &Pooler, reason: RouteReason) -> u64 {
    pooler.ctx.routes.of("app").get(reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_round_robin_to_replicas_and_writes_to_the_primary() {
    let pg = Replicated::start();
    let pooler = pg.pooler("", "");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    let primary = pg.primary.port;
    let [r1, r2] = [pg.replicas[0].port, pg.replicas[1].port];

    let mut seen = std::collections::HashMap::new();
    for _ in 0..200 {
        *seen
            .entry(port_of(&client, "SELECT inet_server_port()").await)
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get(&primary), None, "{seen:?}");
    assert!(seen[&r1] >= 50 && seen[&r2] >= 50, "{seen:?}");
    let reads = counter(&pooler, RouteReason::Read);
    assert!(reads >= 200, "{reads}");

    for sql in [
        "INSERT INTO items (v) VALUES (1) RETURNING inet_server_port()",
        "UPDATE items SET v = v + 1 WHERE id = 1 RETURNING inet_server_port()",
        "DELETE FROM items WHERE id = 2 RETURNING inet_server_port()",
        "SELECT inet_server_port() FROM items WHERE id = 1 FOR UPDATE",
        "SELECT inet_server_port() FROM items LIMIT 1 FOR SHARE",
        "WITH n AS (INSERT INTO items (v) VALUES (5) RETURNING id) SELECT inet_server_port() FROM n",
        "SELECT nextval('ids'), inet_server_port()",
        "INSERT INTO items (v) VALUES (7); SELECT inet_server_port()",
        "SELECT pg_advisory_lock(1), pg_advisory_unlock(1), inet_server_port()",
    ] {
        assert_eq!(port_of(&client, sql).await, primary, "{sql}");
    }
    assert_eq!(counter(&pooler, RouteReason::Locking), 2);
    assert_eq!(counter(&pooler, RouteReason::WriteFunction), 2);

    // Every statement of a transaction with a write runs on the primary, also the reads.
    client.simple_query("BEGIN").await.unwrap();
    assert_eq!(port_of(&client, "SELECT inet_server_port()").await, primary);
    client
        .simple_query("INSERT INTO items (v) VALUES (8)")
        .await
        .unwrap();
    assert_eq!(port_of(&client, "SELECT inet_server_port()").await, primary);
    client.simple_query("COMMIT").await.unwrap();

    // A read-only transaction may go to a replica, and stays on one server throughout. (On
    // a connection that wrote nothing: this one's reads wait for a replica to replay its
    // writes, for read_your_writes_wait at most, and may go to the primary on a busy box.)
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    client.simple_query("BEGIN READ ONLY").await.unwrap();
    let first = port_of(&client, "SELECT inet_server_port()").await;
    assert!(first == r1 || first == r2, "{first}");
    for _ in 0..4 {
        assert_eq!(port_of(&client, "SELECT inet_server_port()").await, first);
    }
    let err = client
        .simple_query("INSERT INTO items (v) VALUES (9)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25006", "{err}");
    client.simple_query("ROLLBACK").await.unwrap();
    client
        .simple_query("START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY")
        .await
        .unwrap();
    assert_eq!(port_of(&client, "SELECT inet_server_port()").await, primary);
    client.simple_query("COMMIT").await.unwrap();

    // Reads of a connection without writes go to the replicas. (Not this one's: its COMMIT
    // on the primary asks the next read to see that position, which on a busy box a
    // replica may not have replayed within read_your_writes_wait.)
    let fresh = connect(&pooler, "app", APP_PASSWORD).await;
    let replica = port_of(&fresh, "SELECT inet_server_port()").await;
    assert_ne!(replica, primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_force_a_route() {
    let pg = Replicated::start();
    let pooler = pg.pooler("", "");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    let primary = pg.primary.port;

    let sql = "/* pgsluice: primary */ SELECT inet_server_port()";
    assert_eq!(port_of(&client, sql).await, primary);
    let sql = "SELECT inet_server_port() /* pgsluice: replica */";
    assert_ne!(port_of(&client, sql).await, primary);
    // A literal that looks like a hint is not one.
    let sql = "SELECT '/* pgsluice: primary */', inet_server_port()";
    assert_ne!(port_of(&client, sql).await, primary);

    client
        .simple_query("SET pgsluice.route TO primary")
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(port_of(&client, "SELECT inet_server_port()").await, primary);
    }
    let shown = client.simple_query("SHOW pgsluice.route").await.unwrap();
    assert!(
        shown
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("primary"))),
        "SHOW pgsluice.route"
    );
    let err = client
        .simple_query("SET pgsluice.route TO sideways")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023");
    client.simple_query("RESET pgsluice.route").await.unwrap();
    assert_ne!(port_of(&client, "SELECT inet_server_port()").await, primary);
    // The hint wins, also for a write: which then fails on the replica, as asked.
    let err = client
        .simple_query("/* pgsluice: replica */ INSERT INTO items (v) VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25006", "{err}");

    // The startup option, as libpq sends it from options=-c pgsluice.route=primary.
    let conn = format!(
        "{} options='-c pgsluice.route=primary'",
        pooler.conn_str("app", APP_PASSWORD)
    );
    let (pinned, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        assert_eq!(port_of(&pinned, "SELECT inet_server_port()").await, primary);
    }
    let out = pooler.psql_as(
        "app",
        APP_PASSWORD,
        "app",
        &["-c", "SELECT inet_server_port()"],
    );
    assert!(out.status.success());
    assert!(counter(&pooler, RouteReason::Hint) >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_routes_at_parse_and_bind() {
    let pg = Replicated::start();
    let pooler = pg.pooler("", "");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    let primary = pg.primary.port;

    let writes = counter(&pooler, RouteReason::Write);
    let read = client.prepare("SELECT inet_server_port()").await.unwrap();
    assert_eq!(
        counter(&pooler, RouteReason::Write),
        writes,
        "Parse + Describe of a read is a read"
    );
    let mut seen = std::collections::HashMap::new();
    for _ in 0..40 {
        let row = client.query_one(&read, &[]).await.unwrap();
        *seen.entry(row.get::<_, i32>(0) as u16).or_insert(0) += 1;
    }
    assert_eq!(seen.get(&primary), None, "{seen:?}");
    assert_eq!(seen.len(), 2, "both replicas: {seen:?}");

    let write = client
        .prepare("INSERT INTO items (v) VALUES ($1) RETURNING inet_server_port()")
        .await
        .unwrap();
    for i in 0..5 {
        let row = client.query_one(&write, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0) as u16, primary);
    }
    let lock = "SELECT inet_server_port() FROM items WHERE id = $1 FOR UPDATE";
    let row = client.query_one(lock, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0) as u16, primary);

    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let row = tx.query_one(&read, &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0) as u16, primary, "a transaction's read");
    tx.execute("INSERT INTO items (v) VALUES (1)", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[test]
fn pgbench_prepared_through_replicas() {
    let pg = Replicated::start();
    pg.primary
        .psql_in("app", "GRANT CREATE ON SCHEMA public TO app")
        .unwrap();
    let pooler = pg.pooler("", "");
    let bench = |args: &[&str]| support::pgbench(pooler.port(), args);
    bench(&["-i", "-s", "1", "-q"]);
    // The tables reach the replicas by streaming; wait until both have them.
    for r in &pg.replicas {
        assert!(support::wait_for(
            std::time::Duration::from_secs(20),
            || {
                r.psql_in("app", "SELECT count(*) FROM pgbench_branches")
                    .is_ok_and(|n| n == "1")
            }
        ));
    }
    let reads = counter(&pooler, RouteReason::Read);
    // -j = -c: pgbench's synchronous prepare needs a thread per client through a
    // transaction pooler.
    let text = bench(&["-M", "prepared", "-S", "-c", "4", "-j", "4", "-t", "100"]);
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    assert!(
        counter(&pooler, RouteReason::Read) >= reads + 400,
        "every -S transaction is a read on a replica"
    );
    let text = bench(&["-M", "prepared", "-c", "4", "-j", "4", "-t", "50"]);
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    let text = bench(&["-M", "extended", "-S", "-c", "4", "-j", "4", "-t", "100"]);
    assert!(text.contains("number of failed transactions: 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_gets_no_reads_until_it_catches_up() {
    let pg = Replicated::start();
    let pooler = pg.pooler(
        // Well above the WAL autovacuum and checkpoints write, well below a big insert's.
        "health_check_interval = \"200ms\"\nmax_replica_lag_bytes = 262144",
        "",
    );
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    let cluster = pooler.ctx.clusters.get("app").unwrap();
    let usable = |i: usize| cluster.nodes[i].usable();
    let wait = |i: usize, want| {
        support::wait_for(std::time::Duration::from_secs(15), || usable(i) == want)
    };
    port_of(&client, "SELECT inet_server_port()").await;
    // A pause is only requested at first: wait until replay has stopped.
    let pause = |r: &pgsluice::localpg::LocalPostgres| {
        r.psql("SELECT pg_wal_replay_pause()").unwrap();
        assert!(support::wait_for(
            std::time::Duration::from_secs(10),
            || { r.psql("SELECT pg_get_wal_replay_pause_state()").unwrap() == "paused" }
        ));
    };
    let insert = || {
        pg.primary
            .psql_in(
                "app",
                "INSERT INTO items (v) SELECT g FROM generate_series(1, 20000) g",
            )
            .unwrap()
    };
    let behind = &pg.replicas[0];
    pause(behind);
    insert();
    assert!(wait(1, Usable::Lagging), "{:?}", usable(1));
    assert!(cluster.nodes[1].lag().0 > 262144);
    // The other replica may lag for a moment while it replays the insert: wait until it
    // has, and a health check has seen that.
    let rows = pg
        .primary
        .psql_in("app", "SELECT count(*) FROM items")
        .unwrap();
    assert!(support::wait_for(
        std::time::Duration::from_secs(15),
        || {
            pg.replicas[1]
                .psql_in("app", "SELECT count(*) FROM items")
                .unwrap()
                == rows
        }
    ));
    // A round of checks that began after the catch-up: none still in flight saw it behind.
    let round = cluster.health_rounds();
    assert!(support::wait_for(
        std::time::Duration::from_secs(15),
        || cluster.health_rounds() >= round + 2
    ));
    assert!(wait(2, Usable::Yes), "{:?}", usable(2));
    for _ in 0..20 {
        let port = port_of(&client, "SELECT inet_server_port()").await;
        assert_eq!(
            port,
            pg.replicas[1].port,
            "nodes: {:?}",
            (0..3)
                .map(|i| (usable(i), cluster.nodes[i].lag()))
                .collect::<Vec<_>>()
        );
    }
    // Both behind: reads go to the primary, counted as such.
    pause(&pg.replicas[1]);
    insert();
    assert!(wait(2, Usable::Lagging), "{:?}", usable(2));
    assert_eq!(
        port_of(&client, "SELECT inet_server_port()").await,
        pg.primary.port
    );
    assert!(counter(&pooler, RouteReason::Lag) >= 1);

    for r in &pg.replicas {
        r.psql("SELECT pg_wal_replay_resume()").unwrap();
    }
    assert!(wait(1, Usable::Yes) && wait(2, Usable::Yes));
    let mut ports = std::collections::HashSet::new();
    for _ in 0..10 {
        ports.insert(port_of(&client, "SELECT inet_server_port()").await);
    }
    assert!(ports.contains(&behind.port), "{ports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_pinned_to_the_primary_unless_it_asks_for_a_replica() {
    let pg = Replicated::start();
    let pooler = pg.pooler("pool_mode = \"session\"", "");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(
            port_of(&client, "SELECT inet_server_port()").await,
            pg.primary.port
        );
    }
    let conn = format!(
        "{} options='-c pgsluice.route=replica'",
        pooler.conn_str("app", APP_PASSWORD)
    );
    let (reader, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let port = port_of(&reader, "SELECT inet_server_port()").await;
    assert_ne!(port, pg.primary.port);
    assert_eq!(port_of(&reader, "SELECT inet_server_port()").await, port);
}

/// The row count of `audit`, and of its distinct values: each call wrote once.
fn audited(pg: &Replicated) -> String {
    pg.primary
        .psql_in("app", "SELECT count(*), count(DISTINCT n) FROM audit")
        .unwrap()
}

async fn value_of(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// A read calling a user function that writes: the catalog says which are VOLATILE, and those
/// go to the primary (STABLE ones still read on replicas). One created since the catalog was
/// read is refused by the replica with 25006 before anything of its answer reached the client:
/// it runs again on the primary, the client sees only the result, and its text or prepared
/// statement goes to the primary from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_write_run_on_the_primary() {
    let pg = Replicated::start();
    let note = |name: &str| {
        format!(
            "CREATE FUNCTION {name}(n int) RETURNS int LANGUAGE sql VOLATILE \
             AS $$ INSERT INTO audit VALUES (n) RETURNING n $$; \
             ALTER FUNCTION {name}(int) OWNER TO app"
        )
    };
    pg.primary
        .psql_in(
            "app",
            &format!(
                "CREATE TABLE audit (n int); ALTER TABLE audit OWNER TO app; {}; \
                 CREATE FUNCTION tally() RETURNS bigint LANGUAGE sql STABLE \
                 AS $$ SELECT count(*) FROM audit $$",
                note("note")
            ),
        )
        .unwrap();
    let on_replicas = |function: &str| {
        for r in &pg.replicas {
            let sql = format!("SELECT to_regproc('{function}') IS NOT NULL");
            assert!(support::wait_for(
                std::time::Duration::from_secs(15),
                || r.psql_in("app", &sql).is_ok_and(|t| t == "t")
            ));
        }
    };
    on_replicas("note");
    let pooler = pg.pooler("catalog_refresh_interval = 3600", "");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    let catalog = pooler.ctx.catalogs.of("app");
    assert!(
        support::wait_for(std::time::Duration::from_secs(15), || catalog
            .functions()
            .contains("note")),
        "the catalog was read once a client's login was known"
    );
    assert!(!catalog.functions().contains("tally"), "STABLE");

    let retries = counter(&pooler, RouteReason::Retry);
    let by_function = counter(&pooler, RouteReason::WriteFunction);
    for n in 0..20 {
        assert_eq!(
            value_of(&client, &format!("SELECT note({n})")).await,
            Some(n.to_string())
        );
    }
    assert_eq!(audited(&pg), "20|20", "each call wrote once");
    assert_eq!(
        counter(&pooler, RouteReason::Retry),
        retries,
        "no replica was tried"
    );
    assert_eq!(
        counter(&pooler, RouteReason::WriteFunction),
        by_function + 20
    );
    // Another client (this one's reads wait for its writes to be replayed).
    let reader = connect(&pooler, "app", APP_PASSWORD).await;
    let primary = pg.primary.port;
    let sql = "SELECT tally(), inet_server_port()";
    assert_ne!(
        port_of(&reader, sql).await,
        primary,
        "a STABLE function reads on a replica"
    );

    // Created after the catalog was read.
    pg.primary.psql_in("app", &note("late_note")).unwrap();
    on_replicas("late_note");
    let retries = counter(&pooler, RouteReason::Retry);
    for n in 20..25 {
        assert_eq!(
            value_of(&client, "SELECT late_note(20)").await.as_deref(),
            Some("20"),
            "call {n}"
        );
    }
    assert_eq!(
        counter(&pooler, RouteReason::Retry),
        retries + 1,
        "the first call was refused by a replica and run again; its text is remembered"
    );
    // A prepared statement: its first Bind is retried, later ones go to the primary.
    let statement = client.prepare("SELECT late_note($1)").await.unwrap();
    for n in 25..30 {
        let row = client.query_one(&statement, &[&n]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), n);
    }
    assert_eq!(counter(&pooler, RouteReason::Retry), retries + 2);
    assert_eq!(audited(&pg), "30|26", "each call wrote once");
    // Reads that do not write still go to replicas.
    assert_ne!(port_of(&reader, "SELECT inet_server_port()").await, primary);
}
