//! Idle clients parked without a task of their own (more than 64 connected): what they set
//! and prepared is there when they come back, KILL, cancel requests, client_idle_timeout
//! and a shutdown reach them while they are parked, and one that works in a rhythm is not
//! parked between its transactions.

mod support;

use std::time::Duration;
use support::{wait_for, Pooler};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// More clients than the 64 up to which nothing is parked.
const MANY: usize = 80;
const TRUST: &str = "auth_type = \"trust\"\nadmin_users = [\"app\"]";

/// `n` clients logged in as app (all at once), each with its connection's task: true if the
/// connection ended with the error a shutdown or KILL sends (57P01).
async fn clients(pooler: &Pooler, n: usize) -> Connected {
    let conn_str = pooler.conn_str("app", "");
    let logins: Vec<_> = (0..n)
        .map(|_| {
            let conn_str = conn_str.clone();
            tokio::spawn(async move { tokio_postgres::connect(&conn_str, NoTls).await })
        })
        .collect();
    let mut all = Vec::new();
    for login in logins {
        let (client, conn) = login.await.unwrap().expect("connect");
        let ended = tokio::spawn(async move {
            let code = conn.await.err().and_then(|e| e.code().cloned());
            code.is_some_and(|c| c.code() == "57P01")
        });
        all.push((client, ended));
    }
    all
}

fn parked(pooler: &Pooler) -> i64 {
    pooler.ctx.metrics.parked.get()
}

fn all_parked(pooler: &Pooler, n: usize) -> bool {
    wait_for(Duration::from_secs(10), || parked(pooler) >= n as i64)
}

type Connected = Vec<(Client, tokio::task::JoinHandle<bool>)>;

/// Whether every one of `clients` has seen its connection close within `within`.
fn all_closed(clients: &Connected, within: Duration) -> bool {
    wait_for(within, || clients.iter().all(|(c, _)| c.is_closed()))
}

fn text(messages: &[SimpleQueryMessage]) -> String {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_come_back_with_their_settings_and_statements() {
    let pg = support::primary();
    let pooler = Pooler::start(&pg, TRUST);
    let all = clients(&pooler, MANY).await;
    let mut statements = Vec::new();
    for (i, (client, _)) in all.iter().enumerate() {
        client
            .batch_execute(&format!("SET application_name = 'parked{i}'"))
            .await
            .unwrap();
        statements.push(client.prepare("SELECT $1::int + 1").await.unwrap());
    }
    assert!(all_parked(&pooler, MANY), "parked: {}", parked(&pooler));
    let (status, metrics) = pooler.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pgsluice_clients_parked{instance="),
        "{metrics}"
    );
    // Each takes up where it left off: its setting, its prepared statement.
    for (i, ((client, _), statement)) in all.iter().zip(&statements).enumerate() {
        let name = client.simple_query("SHOW application_name").await.unwrap();
        assert_eq!(text(&name), format!("parked{i}"));
        let row = client.query_one(statement, &[&(i as i32)]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i as i32 + 1);
    }
    // And parks again once idle.
    assert!(
        all_parked(&pooler, MANY),
        "parked again: {}",
        parked(&pooler)
    );
    for (client, _) in &all {
        let rows = client.query("SELECT 41 + 1", &[]).await.unwrap();
        assert_eq!(rows[0].get::<_, i32>(0), 42);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_and_kill_reach_parked_clients() {
    let pg = support::primary();
    let pooler = Pooler::start(&pg, TRUST);
    let all = clients(&pooler, MANY).await;
    assert!(all_parked(&pooler, MANY), "parked: {}", parked(&pooler));
    // A cancel request meets no query: the client goes on as before. (Sent, the request is
    // not waited for: its wake taking the client up says it has arrived.)
    let (first, _) = &all[0];
    first.cancel_token().cancel_query(NoTls).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || parked(&pooler) < MANY as i64));
    let rows = first.query("SELECT 1", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 1);
    // KILL closes every parked client of the database, with the error a shutdown gives.
    let admin = tokio_postgres::connect(
        &pooler
            .conn_str("app", "")
            .replace("dbname=app", "dbname=pgsluice"),
        NoTls,
    )
    .await
    .map(|(c, conn)| {
        tokio::spawn(conn);
        c
    })
    .unwrap();
    assert!(all_parked(&pooler, MANY), "parked: {}", parked(&pooler));
    admin.simple_query("KILL app").await.unwrap();
    assert!(
        all_closed(&all, Duration::from_secs(5)),
        "parked clients still open after KILL"
    );
    for (_, ended) in all {
        assert!(ended.await.unwrap(), "a killed client did not get 57P01");
    }
    assert_eq!(parked(&pooler), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_and_shutdown_reach_parked_clients() {
    let pg = support::primary();
    let pooler = Pooler::start(&pg, &format!("{TRUST}\nclient_idle_timeout = 6"));
    let timed_out = clients(&pooler, MANY).await;
    assert!(all_parked(&pooler, MANY), "parked: {}", parked(&pooler));
    assert!(
        all_closed(&timed_out, Duration::from_secs(10)),
        "parked clients outlived client_idle_timeout"
    );
    assert_eq!(parked(&pooler), 0, "timed-out clients still parked");

    let pooler = Pooler::start(&pg, TRUST);
    let all = clients(&pooler, MANY).await;
    assert!(all_parked(&pooler, MANY), "parked: {}", parked(&pooler));
    pooler.ctx.shutdown(false);
    assert!(
        all_closed(&all, Duration::from_secs(5)),
        "parked clients still open after a shutdown"
    );
    for (_, ended) in all {
        assert!(
            ended.await.unwrap(),
            "a client closed by the shutdown did not get 57P01"
        );
    }
    assert!(wait_for(Duration::from_secs(5), || pooler
        .ctx
        .client_count()
        == 0));
}

/// A client that comes back in a rhythm (every half second here) is not parked between its
/// transactions once its pauses are seen, also when it was taken up from the lot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_a_rhythm_is_not_parked_between_its_transactions() {
    let pg = support::primary();
    let pooler = Pooler::start(&pg, TRUST);
    let all = clients(&pooler, MANY).await;
    assert!(all_parked(&pooler, MANY), "parked: {}", parked(&pooler));
    let parkings = || pooler.ctx.metrics.parkings.get();
    let (a, _) = &all[0];
    // Taken up from the lot; then its pauses are seen.
    for _ in 0..3 {
        a.simple_query("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = parkings();
    for _ in 0..6 {
        a.simple_query("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        parkings(),
        before,
        "parked between transactions half a second apart"
    );
}
