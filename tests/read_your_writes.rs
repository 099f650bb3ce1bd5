//! Read-your-writes by WAL position, against a real primary and two streaming replicas, one
//! of which applies the WAL 200 ms late (`recovery_min_apply_delay`): a read after a write
//! sees the write, through one connection, through two of one pool, or with the position
//! carried by hand; reads with no write before them still go to replicas.

mod support;

use pgsluice::router::RouteReason;
use std::collections::HashMap;
use support::{connect, Pooler, Replicated, APP_PASSWORD};
use tokio_postgres::Client;

/// A primary with two replicas, the second 200 ms behind, and table `ryw` on all three.
fn delayed() -> Replicated {
    let pg = Replicated::start();
    let late = &pg.replicas[1];
    late.psql("ALTER SYSTEM SET recovery_min_apply_delay = '200ms'")
        .unwrap();
    late.psql("SELECT pg_reload_conf()").unwrap();
    pg.primary
        .psql_in(
            "app",
            "CREATE TABLE ryw (id int PRIMARY KEY, v int); ALTER TABLE ryw OWNER TO app",
        )
        .unwrap();
    for r in &pg.replicas {
        assert!(
            support::wait_for(std::time::Duration::from_secs(20), || {
                r.psql_in("app", "SELECT count(*) FROM pg_class WHERE relname = 'ryw'")
                    .is_ok_and(|out| out.trim() == "1")
            }),
            "the table reached every replica"
        );
    }
    pg
}

/// The row `id` as the read sees it, and which server answered.
async fn read(client: &Client, id: i32) -> (Option<i32>, u16) {
    let sql = format!("SELECT (SELECT v FROM ryw WHERE id = {id}), inet_server_port()::text");
    let msgs = client.simple_query(&sql).await.unwrap();
    let row = msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    let v = row.get(0).map(|v| v.parse().unwrap());
    (v, row.get(1).unwrap().parse().unwrap())
}

/// Writes row `id` one of three ways: a simple autocommit INSERT, an extended-protocol one
/// with a parameter, or an INSERT in an explicit transaction.
async fn write(client: &mut Client, id: i32) {
    match id % 3 {
        0 => {
            client
                .simple_query(&format!("INSERT INTO ryw VALUES ({id}, {id})"))
                .await
                .unwrap();
        }
        1 => {
            client
                .execute("INSERT INTO ryw VALUES ($1, $1)", &[&id])
                .await
                .unwrap();
        }
        _ => {
            let tx = client.transaction().await.unwrap();
            tx.execute("INSERT INTO ryw VALUES ($1, $1)", &[&id])
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    }
}

/// Writes rows `ids` on `writer` and reads each back at once on `reader`: the misses, and
/// where the reads ran.
async fn pairs(
    writer: &mut Client,
    reader: Option<&Client>,
    ids: std::ops::Range<i32>,
) -> (usize, HashMap<u16, usize>) {
    let mut misses = 0;
    let mut at = HashMap::new();
    for id in ids {
        write(writer, id).await;
        let (v, port) = read(reader.unwrap_or(writer), id).await;
        if v != Some(id) {
            misses += 1;
        }
        *at.entry(port).or_insert(0) += 1;
    }
    (misses, at)
}

/// `16/B374D848` as a number.
fn position(lsn: &str) -> u64 {
    let (hi, lo) = lsn.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The sum of the samples of `name` whose labels include each of `labels`.
fn metric_sum(pooler: &Pooler, name: &str, labels: &[&str]) -> f64 {
    pooler
        .metrics()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reads_its_own_writes_and_carries_its_position() {
    let pg = delayed();
    let pooler = pg.pooler("default_pool_size = 4", "");
    let (primary, late) = (pg.primary.port, pg.replicas[1].port);
    let mut client = connect(&pooler, "app", APP_PASSWORD).await;

    // Before any write, reads go to both replicas.
    let fresh = connect(&pooler, "app", APP_PASSWORD).await;
    let mut seen = HashMap::new();
    for _ in 0..20 {
        *seen.entry(read(&fresh, -1).await.1).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both replicas, no primary: {seen:?}");
    assert!(!seen.contains_key(&primary), "{seen:?}");

    let (misses, at) = pairs(&mut client, None, 0..1000).await;
    assert_eq!(misses, 0, "reads after writes on one connection: {at:?}");
    assert!(
        at.get(&late).copied().unwrap_or(0) == 0,
        "the late replica never had the row in time: {at:?}"
    );
    let to_replica = metric_sum(
        &pooler,
        "pgsluice_read_your_writes_wait_seconds_count",
        &["outcome=\"replica\""],
    );
    let to_primary = pooler.ctx.routes.of("app").get(RouteReason::ReadYourWrites);
    println!("1000 pairs: reads at {at:?}; waited then replica {to_replica}, primary {to_primary}");

    // A position carried from one connection to another by hand.
    let msgs = client.simple_query("SHOW pgsluice.lsn").await.unwrap();
    let lsn = match &msgs[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
        m => panic!("{m:?}"),
    };
    assert_ne!(lsn, "0/0");
    let mut last = position(&lsn);
    let mut carried = 0;
    for id in 1000..1050 {
        write(&mut client, id).await;
        let msgs = client.simple_query("SHOW pgsluice.lsn").await.unwrap();
        let tokio_postgres::SimpleQueryMessage::Row(r) = &msgs[1] else {
            panic!()
        };
        let lsn = r.get(0).unwrap().to_owned();
        // Each way of writing moves the floor: behind a simple Query (pipelined), or after
        // an extended-protocol unit.
        assert!(position(&lsn) > last, "write {id}: {lsn}");
        last = position(&lsn);
        let other = if id % 2 == 0 {
            let c = connect(&pooler, "app", APP_PASSWORD).await;
            c.simple_query(&format!("SET pgsluice.min_lsn = '{lsn}'"))
                .await
                .unwrap();
            c
        } else {
            let conn_str = format!(
                "{} options='-c pgsluice.min_lsn={lsn}'",
                pooler.conn_str("app", APP_PASSWORD)
            );
            let (c, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        };
        if read(&other, id).await.0 == Some(id) {
            carried += 1;
        }
    }
    assert_eq!(carried, 50, "SET pgsluice.min_lsn on a fresh connection");
    let bad = fresh
        .simple_query("SET pgsluice.min_lsn = 'soon'")
        .await
        .unwrap_err();
    assert_eq!(bad.code().unwrap().code(), "22023");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_reads_the_writes_of_all_its_connections_and_off_misses() {
    let pg = delayed();
    let pooled = pg.pooler("read_your_writes = \"pool\"", "");
    let mut writer = connect(&pooled, "app", APP_PASSWORD).await;
    let reader = connect(&pooled, "app", APP_PASSWORD).await;
    let (misses, at) = pairs(&mut writer, Some(&reader), 0..200).await;
    assert_eq!(misses, 0, "two connections of one pool: {at:?}");

    // Without it, the late replica misses what was just written: the check above can fail.
    let off = pg.pooler("read_your_writes = \"off\"", "");
    let mut writer = connect(&off, "app", APP_PASSWORD).await;
    let reader = connect(&off, "app", APP_PASSWORD).await;
    let (misses, at) = pairs(&mut writer, Some(&reader), 200..400).await;
    println!("read_your_writes = off: {misses} of 200 missed; reads at {at:?}");
    assert!(misses >= 50, "{misses} of 200 missed: {at:?}");
    assert_eq!(off.ctx.routes.of("app").get(RouteReason::ReadYourWrites), 0);
}
