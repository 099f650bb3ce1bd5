//! Named prepared statements under transaction pooling: clients keep their statements
//! whichever server they get, with many more clients than servers.

mod support;

use std::time::Duration;
use support::{connect, primary, Pooler, APP_PASSWORD};

async fn run_clients(pooler: &Pooler, clients: usize, rounds: usize) {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let c = connect(pooler, "app", APP_PASSWORD).await;
        tasks.push(tokio::spawn(async move {
            let by_id = c
                .prepare("SELECT id, v FROM kv WHERE id = $1")
                .await
                .unwrap();
            let add = c.prepare("SELECT $1::int + $2::int").await.unwrap();
            for r in 0..rounds {
                let id = ((i + r) % 100) as i32;
                let row = c.query_one(&by_id, &[&id]).await.unwrap();
                assert_eq!(row.get::<_, String>(1), format!("v{id}"));
                let sum: i32 = c
                    .query_one(&add, &[&(i as i32), &(r as i32)])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(sum, (i + r) as i32);
                // Statements made and dropped (Close) on the way.
                let tmp = c
                    .prepare(&format!("SELECT {r} AS n, $1::text AS t"))
                    .await
                    .unwrap();
                let t: String = c.query_one(&tmp, &[&"x"]).await.unwrap().get(1);
                assert_eq!(t, "x");
                drop(tmp);
                if r % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn setup(pooler: &Pooler) {
    let c = connect(pooler, "app", APP_PASSWORD).await;
    c.batch_execute("CREATE TABLE kv (id int PRIMARY KEY, v text); INSERT INTO kv SELECT g, 'v' || g FROM generate_series(0, 99) g")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_survive_transaction_pooling() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 3");
    setup(&pooler).await;
    run_clients(&pooler, 40, 30).await;
    // Statements are shared: the servers hold a handful, not one per client.
    let count = pg
        .psql_in(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
        )
        .unwrap();
    assert!(count.parse::<i32>().unwrap() <= 3, "{count} servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_evicted_and_prepared_again() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 2\nmax_prepared_statements = 2");
    setup(&pooler).await;
    run_clients(&pooler, 10, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_errors_are_postgres_errors() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 2");
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    let err = c.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR)
    );
    let err = c.prepare("SELECT * FROM missing_table").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
    );
    // The session is still fine, and a DISCARD ALL by the client does not break its statements.
    let s = c.prepare("SELECT 5").await.unwrap();
    c.batch_execute("DISCARD ALL").await.unwrap();
    let five: i32 = c.query_one(&s, &[]).await.unwrap().get(0);
    assert_eq!(five, 5);
    // A transaction with prepared statements in it.
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    let s2 = tx.prepare("SELECT $1::int * 2").await.unwrap();
    let v: i32 = tx.query_one(&s2, &[&21]).await.unwrap().get(0);
    tx.commit().await.unwrap();
    assert_eq!(v, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_statements_too() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 2\npool_mode = \"session\"");
    setup(&pooler).await;
    run_clients(&pooler, 2, 10).await;
    run_clients(&pooler, 2, 10).await;
}

/// After `ALTER TABLE … ADD COLUMN`, `SELECT *` prepared before it fails once, as on
/// PostgreSQL; prepared again, by that client or any other, it works on every server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_broken_by_ddl_is_prepared_afresh_everywhere() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 3");
    let setup = connect(&pooler, "app", APP_PASSWORD).await;
    setup
        .batch_execute("CREATE TABLE ddl (a int); INSERT INTO ddl VALUES (1)")
        .await
        .unwrap();
    // The setup client and two more hold all three servers at once, so that every server
    // prepares the statement.
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&pooler, "app", APP_PASSWORD).await);
    }
    setup.batch_execute("BEGIN").await.unwrap();
    let named = setup.prepare("SELECT * FROM ddl").await.unwrap();
    setup.query(&named, &[]).await.unwrap();
    let mut old = Vec::new();
    for c in &clients[..2] {
        let s = c.prepare("SELECT * FROM ddl").await.unwrap();
        c.batch_execute("BEGIN").await.unwrap();
        assert_eq!(c.query_one(&s, &[]).await.unwrap().len(), 1);
        old.push(s);
    }
    for c in clients[..2].iter().chain([&setup]) {
        c.batch_execute("COMMIT").await.unwrap();
    }
    setup
        .batch_execute("ALTER TABLE ddl ADD COLUMN b int DEFAULT 2")
        .await
        .unwrap();
    let e = clients[0].query_one(&old[0], &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    for round in 0..3 {
        for c in &clients {
            let s = c.prepare("SELECT * FROM ddl").await.unwrap();
            let row = c
                .query_one(&s, &[])
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(row.len(), 2);
            assert_eq!(row.get::<_, Option<i32>>(1), Some(2));
        }
    }
}

/// A client's statement, described before `ALTER TABLE … ADD COLUMN`, bound on a server that
/// never prepared it: the server would describe it afresh, with the new column, and give rows
/// the client's description does not match. pgsluice describes it there first and answers
/// the Bind with PostgreSQL's "cached plan must not change result type" (0A000); prepared
/// again, it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_result_is_caught_on_a_server_that_prepares_it_afresh() {
    let pg = primary();
    let pooler = Pooler::start(&pg, "default_pool_size = 2\nadmin_users = [\"app\"]");
    let client = connect(&pooler, "app", APP_PASSWORD).await;
    client
        .batch_execute("CREATE TABLE reshaped (a int); INSERT INTO reshaped VALUES (1)")
        .await
        .unwrap();
    let old = client.prepare("SELECT * FROM reshaped").await.unwrap();
    assert_eq!(client.query_one(&old, &[]).await.unwrap().len(), 1);
    let unchanged = client.prepare("SELECT a FROM reshaped").await.unwrap();
    pg.psql_in("app", "ALTER TABLE reshaped ADD COLUMN b int DEFAULT 2")
        .unwrap();
    // Every server the client had is closed: the next ones prepare the statement afresh.
    pooler.admin_table("pgsluice", "RECONNECT app");
    let e = client.query_one(&old, &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    let message = e.as_db_error().map(|d| d.message().to_owned());
    assert_eq!(
        message.as_deref(),
        Some("cached plan must not change result type")
    );
    let again = client.query_one(&old, &[]).await.unwrap_err();
    assert_eq!(
        again.code().map(|c| c.code()),
        Some("0A000"),
        "until prepared again"
    );
    let new = client.prepare("SELECT * FROM reshaped").await.unwrap();
    let row = client.query_one(&new, &[]).await.unwrap();
    assert_eq!((row.len(), row.get::<_, Option<i32>>(1)), (2, Some(2)));
    // A statement whose result did not change goes on working.
    assert_eq!(client.query(&unchanged, &[]).await.unwrap().len(), 1);
    // Another client that prepares it now gets the new columns at once.
    let other = connect(&pooler, "app", APP_PASSWORD).await;
    let s = other.prepare("SELECT * FROM reshaped").await.unwrap();
    assert_eq!(other.query_one(&s, &[]).await.unwrap().len(), 2);
}

/// The unnamed statement outlives its unit, as on one server: libpq's PQprepare with an empty
/// name, then PQdescribePrepared and PQexecPrepared in units of their own (psql's `\gdesc`),
/// work even when those units run on another server than the Parse did.
#[test]
fn the_unnamed_statement_follows_its_client_to_another_server() {
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;
    use std::io::Write;
    let pg = primary();
    let pooler = Pooler::start(&pg, "auth_type = \"trust\"\ndefault_pool_size = 2");
    let mut a = support::logged_in_trust(&pooler);
    let unit = |s: &mut std::net::TcpStream, build: &dyn Fn(&mut BytesMut)| -> Vec<u8> {
        let mut buf = BytesMut::new();
        build(&mut buf);
        frontend::sync(&mut buf);
        s.write_all(&buf).unwrap();
        support::read_until_ready(s)
    };
    let tags = |reply: &[u8]| -> Vec<u8> {
        let mut tags = Vec::new();
        let mut at = 0;
        while at + 5 <= reply.len() {
            tags.push(reply[at]);
            let len = u32::from_be_bytes(reply[at + 1..at + 5].try_into().unwrap()) as usize;
            at += 1 + len;
        }
        tags
    };
    let parsed = unit(&mut a, &|b| {
        frontend::parse("", "SELECT $1::int + 1 AS n", [23], b).unwrap()
    });
    assert_eq!(tags(&parsed), b"1Z");
    // The one server so far is held: a's next units get another.
    let mut holder = support::logged_in_trust(&pooler);
    holder.write_all(&support::query_message("BEGIN")).unwrap();
    support::read_until_ready(&mut holder);
    let described = unit(&mut a, &|b| frontend::describe(b'S', "", b).unwrap());
    assert_eq!(
        tags(&described),
        b"tTZ",
        "{}",
        String::from_utf8_lossy(&described)
    );
    let ran = unit(&mut a, &|b| {
        frontend::bind(
            "",
            "",
            [1],
            [Some(41i32)],
            |v, buf| {
                buf.extend_from_slice(&v.unwrap().to_be_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            [1],
            b,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, b).unwrap();
    });
    assert_eq!(tags(&ran), b"2DCZ", "{}", String::from_utf8_lossy(&ran));
    // A simple Query ends the unnamed statement, as on PostgreSQL.
    a.write_all(&support::query_message("SELECT 1")).unwrap();
    support::read_until_ready(&mut a);
    let gone = unit(&mut a, &|b| frontend::describe(b'S', "", b).unwrap());
    assert_eq!(tags(&gone), b"EZ");
    holder.write_all(&support::query_message("COMMIT")).unwrap();
    support::read_until_ready(&mut holder);
}
