//! currval and lastval in transaction mode with two replicas: they run on the primary and
//! answer with the client's own sequence values, or are refused with 55000; never with the
//! value of another client's nextval.

mod support;

use std::time::Duration;
use support::{connect, one, Replicated, APP_PASSWORD};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Asserts that `sql`, run by `c`, is refused as a read of another client's values.
async fn refused(c: &Client, sql: &str) {
    let e = c
        .simple_query(sql)
        .await
        .expect_err(&format!("{sql} ran on another client's values"));
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    assert_eq!(db.code().code(), "55000", "{sql}: {db}");
    assert!(db.message().contains("transaction pooling"), "{db}");
    assert_eq!(db.where_(), None, "{sql}: {db:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currval_and_lastval_answer_for_their_own_client_or_not_at_all() {
    let cluster = Replicated::start();
    // One server on the primary: every other client's work lands on the server A used.
    let pooler = cluster.pooler("default_pool_size = 1", "");
    let a = connect(&pooler, "app", APP_PASSWORD).await;
    let b = connect(&pooler, "app", APP_PASSWORD).await;
    let insert = "INSERT INTO items (v) VALUES (100) RETURNING id";

    // No one between A's INSERT and its lastval: the server is still A's.
    let id_a = one(&a, insert).await;
    assert_eq!(one(&a, "SELECT lastval()").await, id_a);
    assert_eq!(one(&a, "SELECT currval('items_id_seq')").await, id_a);
    // A read (to a replica) between changes nothing.
    assert_eq!(one(&a, "SELECT count(*) > 0 FROM items").await, "t");
    assert_eq!(one(&a, "SELECT lastval()").await, id_a);

    // B's INSERT ran on that server since: A's lastval there would answer B's id.
    let id_b = one(&b, insert).await;
    assert_ne!(id_a, id_b);
    assert_eq!(one(&b, "SELECT lastval()").await, id_b);
    refused(&a, "SELECT lastval()").await;
    refused(&a, "SELECT currval('items_id_seq')").await;
    // Through a prepared statement (Parse, then Bind on a later link) alike.
    let stmt = a.prepare("SELECT lastval()").await.unwrap();
    let e = a.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("55000"), "{e}");
    // The refusal failed nothing else: the next statement runs.
    assert_eq!(one(&a, "SELECT 1").await, "1");
    // A's refused statements used B's server meanwhile: B's values there are intact, but
    // whether they are is not known, and B is refused too.
    refused(&b, "SELECT lastval()").await;

    // In the transaction (or the Query) that calls nextval, on any server, they answer.
    let _ = one(&b, insert).await;
    let rows = a
        .simple_query(&format!(
            "BEGIN; {insert}; SELECT currval('items_id_seq'); COMMIT"
        ))
        .await
        .unwrap();
    let ids: Vec<String> = rows
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], ids[1], "currval in the INSERT's transaction");
    let _ = one(&b, insert).await;
    a.batch_execute("BEGIN").await.unwrap();
    let id = one(&a, insert).await;
    let got = a
        .query_one("SELECT lastval()", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(got.to_string(), id, "extended protocol, same transaction");
    let _ = one(&b, insert).await;
    let id = one(&a, "SELECT nextval('ids')").await;
    assert_eq!(one(&a, "SELECT currval('ids')").await, id);
}

/// A read of a sequence itself goes to the primary: a replica has the value the primary
/// logged, up to 32 ahead of the one it gave out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_sequence_answers_as_the_primary_would() {
    let cluster = Replicated::start();
    cluster
        .primary
        .psql_in(
            "app",
            "CREATE SEQUENCE counted; CREATE SEQUENCE \"Quoted\"; \
             GRANT SELECT ON counted, \"Quoted\" TO app; \
             SELECT nextval('counted'), nextval('\"Quoted\"')",
        )
        .unwrap();
    // What a replica would answer: the logged values, once replayed.
    for replica in &cluster.replicas {
        let logged = |sql: &str| {
            let value = replica.psql_in("app", sql).unwrap_or_default();
            value.parse::<i64>().is_ok_and(|v| v > 1)
        };
        assert!(support::wait_for(Duration::from_secs(15), || {
            logged("SELECT last_value FROM counted") && logged("SELECT last_value FROM \"Quoted\"")
        }));
    }
    let pooler = cluster.pooler("", "");
    let c = connect(&pooler, "app", APP_PASSWORD).await;
    // The catalog is read once a login has given the pooler its credentials.
    let catalog = pooler.ctx.catalogs.of("app");
    assert!(support::wait_for(Duration::from_secs(15), || {
        catalog.functions().sequences() >= 4
    }));
    // Several times: reads take turns over the replicas.
    for _ in 0..4 {
        assert_eq!(one(&c, "SELECT last_value FROM counted").await, "1");
        assert_eq!(
            one(&c, "SELECT last_value FROM public.\"Quoted\"").await,
            "1"
        );
        assert_eq!(one(&c, "SELECT count(*) FROM items").await, "10");
    }
}
