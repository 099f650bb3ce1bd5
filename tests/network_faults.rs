//! A replica behind a network path that turns slow, then lossy, then silent (no reset): reads
//! go on without an error through the other replica or the primary, and the replica serves
//! again once its path is back. The path is a veth pair into a network namespace this test
//! makes (it needs root, as CI has); the kernel here has no netem, so tbf shapes it: a slow
//! link (each packet waits its turn at 16 kbit/s), a queue too short for it (packets dropped),
//! and the far end's link down (everything dropped, nothing refused).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::netns::{run, Netns};
use support::{connect, port_of, Pooler, APP_PASSWORD};

/// Traffic shaping on the path into the namespace.
trait Shaping {
    fn shape(&self, verb: &str, tbf: &[&str]);
    fn dropped(&self) -> u64;
}

impl Shaping for Netns {
    /// The same traffic shaping on both ends of the path.
    fn shape(&self, verb: &str, tbf: &[&str]) {
        let mut host = vec!["tc", "qdisc", verb, "dev", &self.host_if, "root", "tbf"];
        host.extend_from_slice(tbf);
        run(&host);
        let mut far = vec!["tc", "qdisc", verb, "dev", &self.ns_if, "root", "tbf"];
        far.extend_from_slice(tbf);
        self.inside(&far);
    }

    /// Packets the shaping dropped, both ways.
    fn dropped(&self) -> u64 {
        let count = |stats: String| -> u64 {
            eprintln!("{stats}");
            stats
                .split("dropped ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        count(run(&["tc", "-s", "qdisc", "show", "dev", &self.host_if]))
            + count(self.inside(&["tc", "-s", "qdisc", "show", "dev", &self.ns_if]))
    }
}

#[derive(Default)]
struct Reads {
    /// (when, which server answered) for each read, or its error.
    answers: Vec<(Instant, Result<u16, String>)>,
}

impl Reads {
    fn between(&self, from: Instant, to: Instant) -> (HashMap<u16, usize>, Vec<String>) {
        let mut by_port = HashMap::new();
        let mut errors = Vec::new();
        for (at, r) in &self.answers {
            if *at < from || *at >= to {
                continue;
            }
            match r {
                Ok(port) => *by_port.entry(*port).or_insert(0) += 1,
                Err(e) => errors.push(e.clone()),
            }
        }
        (by_port, errors)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_slow_lossy_then_silent_path_costs_reads_nothing() {
    let net = Netns::create(1);
    let primary = support::primary();
    primary
        .open_to(&net.host_ip, &format!("{}/30", net.ns_ip))
        .expect("primary reachable from the namespace");
    let far = pgsluice::localpg::LocalPostgres::start_replica_in(
        &primary,
        &net.name,
        &net.ns_ip,
        &net.host_ip,
    )
    .expect("replica in the namespace");
    let near = pgsluice::localpg::LocalPostgres::start_replica(&primary).expect("replica");
    let pooler = Pooler::start_db(
        &primary,
        "health_check_interval = 1\nban_time = 4\nserver_connect_timeout = 2\n\
         tcp_user_timeout = 2000\ntcp_keepidle = 1\ntcp_keepintvl = 1\ntcp_keepcnt = 2\n\
         default_pool_size = 4",
        &format!(
            "replicas = [\"{}:{}\", \"127.0.0.1:{}\"]",
            net.ns_ip, far.port, near.port
        ),
    );

    let reads = Arc::new(Mutex::new(Reads::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let client = connect(&pooler, "app", APP_PASSWORD).await;
        let (reads, stop) = (reads.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // Bounded by the phases below (about a minute) and by 2,000 reads each.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let answer = tokio::time::timeout(
                    Duration::from_secs(20),
                    port_of(&client, "SELECT pg_sleep(0.05), inet_server_port()"),
                )
                .await;
                let r = match answer {
                    Ok(Ok(port)) => Ok(port),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer within 20 s".into()),
                };
                reads.lock().unwrap().answers.push((Instant::now(), r));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let served_by_far = |from: Instant| {
        let (by_port, _) = reads.lock().unwrap().between(from, Instant::now());
        by_port.get(&far.port).copied().unwrap_or(0)
    };
    let wait_until = |what: &str, within: Duration, check: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < within, "{what} within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let start = Instant::now();
    wait_until(
        "the far replica serves reads",
        Duration::from_secs(15),
        &|| served_by_far(start) > 0,
    );
    let mut phases = vec![("clear", start, Instant::now())];
    let phase = |name: &'static str, secs: u64, phases: &mut Vec<_>| {
        let from = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        phases.push((name, from, Instant::now()));
    };

    // Slow: 16 kbit/s each way, a queue that holds two seconds of it.
    net.shape("add", &["rate", "16kbit", "burst", "1600", "latency", "2s"]);
    phase("slow", 5, &mut phases);
    // Lossy: the same rate, a queue of 300 bytes: what does not fit is dropped.
    net.shape(
        "change",
        &["rate", "16kbit", "burst", "1600", "limit", "300"],
    );
    phase("lossy", 6, &mut phases);
    let dropped = net.dropped();
    // Clear again, until the far replica has reads on the fly when its path goes silent.
    run(&["tc", "qdisc", "del", "dev", &net.host_if, "root"]);
    net.inside(&["tc", "qdisc", "del", "dev", &net.ns_if, "root"]);
    let clear = Instant::now();
    wait_until(
        "the far replica serves again once its path is clear",
        Duration::from_secs(30),
        &|| served_by_far(clear) >= 20,
    );
    phases.push(("clear again", clear, Instant::now()));
    // Silent: the far end's link goes down; nothing arrives, nothing is refused. The reads
    // it was answering are lost with it: tcp_user_timeout ends their connections, and they
    // run again elsewhere.
    net.inside(&["ip", "link", "set", &net.ns_if, "down"]);
    phase("silent", 10, &mut phases);
    let silent_end = Instant::now();
    let (late, _) = reads
        .lock()
        .unwrap()
        .between(silent_end - Duration::from_secs(4), silent_end);
    // Back: link up.
    net.inside(&["ip", "link", "set", &net.ns_if, "up"]);
    let back = Instant::now();
    wait_until(
        "the far replica serves again after its path is back",
        Duration::from_secs(30),
        &|| served_by_far(back) > 0,
    );
    phases.push(("back", back, Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let reads = reads.lock().unwrap();
    for (name, from, to) in &phases {
        let (by_port, errors) = reads.between(*from, *to);
        eprintln!(
            "{name}: {:.1} s, reads by port {by_port:?} (far {}, near {}, primary {}), {} errors",
            (*to - *from).as_secs_f64(),
            far.port,
            near.port,
            primary.port,
            errors.len()
        );
        assert!(errors.is_empty(), "{name}: {errors:?}");
        assert!(!by_port.is_empty(), "{name}: no read answered");
    }
    assert!(dropped > 0, "the lossy link dropped no packet");
    assert_eq!(
        late.get(&far.port),
        None,
        "the silent replica still got reads in the last 4 s: {late:?}"
    );
    assert!(
        late.values().sum::<usize>() > 0,
        "no reads late in the silence"
    );
}
