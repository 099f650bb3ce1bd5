//! Latency with many clients connected and a few of them busy, for bench/pgbench.sh:
//!
//!     cargo bench --bench many_clients -- PORT CLIENTS BUSY SECONDS
//!
//! logs CLIENTS clients in to 127.0.0.1:PORT (user and database `postgres`, the password from
//! PGPASSWORD), then for SECONDS has BUSY of them at a time run pgbench's `-S` statement, each
//! time taking the client that has waited longest: every client works now and then and idles
//! in between, as an application's connection pool does. Prints one line: transactions, p50,
//! p99 and max latency in ms. Logins are bounded by 10 minutes, the run by SECONDS.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// Logins under way at once.
const LOGINS_AT_ONCE: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [port, clients, busy, seconds] = &args[..] else {
        eprintln!("usage: many_clients PORT CLIENTS BUSY SECONDS");
        std::process::exit(2);
    };
    let number = |s: &str| s.parse::<u64>().expect("a number");
    let (port, clients, busy) = (
        number(port),
        number(clients) as usize,
        number(busy) as usize,
    );
    let seconds = Duration::from_secs(number(seconds));
    let password = std::env::var("PGPASSWORD").unwrap_or_default();
    let conn_str =
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres password='{password}'");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let idle = tokio::time::timeout(Duration::from_secs(600), log_in(&conn_str, clients))
            .await
            .expect("logins took more than 10 minutes");
        let latencies = run(idle, busy, seconds).await;
        report(latencies);
    });
}

async fn log_in(conn_str: &str, clients: usize) -> VecDeque<Client> {
    let limit = Arc::new(tokio::sync::Semaphore::new(LOGINS_AT_ONCE));
    let logins: Vec<_> = (0..clients)
        .map(|_| {
            let (limit, conn_str) = (limit.clone(), conn_str.to_owned());
            tokio::spawn(async move {
                let _turn = limit.acquire_owned().await.expect("semaphore");
                let (client, conn) = tokio_postgres::connect(&conn_str, NoTls)
                    .await
                    .expect("login");
                tokio::spawn(conn);
                client
            })
        })
        .collect();
    let mut idle = VecDeque::with_capacity(clients);
    for login in logins {
        idle.push_back(login.await.expect("login task"));
    }
    idle
}

/// BUSY workers, each taking the longest-idle client for one transaction, until SECONDS
/// pass; every transaction's latency.
async fn run(idle: VecDeque<Client>, busy: usize, seconds: Duration) -> Vec<Duration> {
    let idle = Arc::new(Mutex::new(idle));
    let end = Instant::now() + seconds;
    let workers: Vec<_> = (0..busy)
        .map(|worker| {
            let idle = idle.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut aid = 1 + worker as u64 * 7919;
                while Instant::now() < end {
                    let client = idle.lock().unwrap().pop_front().expect("a client");
                    aid = aid * 48271 % 1_000_000 + 1;
                    let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
                    let start = Instant::now();
                    client.simple_query(&sql).await.expect("query");
                    latencies.push(start.elapsed());
                    idle.lock().unwrap().push_back(client);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("worker"));
    }
    all
}

fn report(mut latencies: Vec<Duration>) {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[i].as_secs_f64() * 1000.0
    };
    println!(
        "{} {:.2} {:.2} {:.2}",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
