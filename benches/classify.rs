//! Classifier throughput: `cargo bench --bench classify`. Statements per second are
//! reported by divan as items/s.

use divan::counter::ItemsCount;
use pgsluice::router::classify::classify;
use pgsluice::router::WriteFunctions;

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
    let none = WriteFunctions::default();
    bencher
        .counter(ItemsCount::new(STATEMENTS.len()))
        .bench(|| {
            for s in STATEMENTS {
                divan::black_box(classify(divan::black_box(s), &none));
            }
        });
}

/// With 1,000 VOLATILE user functions read from the catalog, as a large schema has.
#[divan::bench]
fn uncached_with_catalog(bencher: divan::Bencher) {
    let names: Vec<String> = (0..1000).map(|i| format!("app_function_{i}")).collect();
    let catalog = WriteFunctions::new(names.iter().map(String::as_str));
    bencher
        .counter(ItemsCount::new(STATEMENTS.len()))
        .bench(|| {
            for s in STATEMENTS {
                divan::black_box(classify(divan::black_box(s), &catalog));
            }
        });
}

/// The extended protocol's path: a statement is classified once, when first asked, and a
/// later Bind finds its class through the statement registry, keyed by the query text.
#[divan::bench]
fn cached(bencher: divan::Bencher) {
    let registry = pgsluice::context::statements::Registry::default();
    let defs: Vec<Vec<u8>> = STATEMENTS
        .iter()
        .map(|s| [s.as_bytes(), b"\0\0\0"].concat())
        .collect();
    // Held, as clients hold the statements they prepared.
    let held: Vec<_> = defs.iter().map(|d| registry.get(d)).collect();
    for s in &held {
        s.class(&WriteFunctions::default());
    }
    bencher
        .counter(ItemsCount::new(STATEMENTS.len()))
        .bench(|| {
            let none = WriteFunctions::default();
            for d in &defs {
                divan::black_box(registry.get(divan::black_box(d)).class(&none));
            }
        });
}
