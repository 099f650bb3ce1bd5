//! Classifier throughput: `cargo bench --bench classify`. Statements per second are
//! reported by divan as items/s.

use divan::counter::ItemsCount;
use pgsluice::router::classify::classify;

fn main() {
    divan::main();
}

const STATEMENTS: &[&str] = &[
    "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "INSERT INTO orders (customer_id, total) VALUES ($1, $2) RETURNING id",
    "WITH recent AS (SELECT * FROM orders WHERE ts > now() - interval '1h') SELECT count(*) FROM recent",
    "SELECT * FROM jobs WHERE state = 'ready' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    "SELECT data->>'name' FROM docs WHERE data @> '{\"k\": 1}'::jsonb AND id = ANY($1)",
    "BEGIN READ ONLY",
];

#[divan::bench]
fn uncached(bencher: divan::Bencher) {
    bencher
        .counter(ItemsCount::new(STATEMENTS.len()))
        .bench(|| {
            for s in STATEMENTS {
                divan::black_box(classify(divan::black_box(s), &[]));
            }
        });
}
