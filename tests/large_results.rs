//! Results larger than memory stream: a 2 GB COPY through pgsluice leaves its peak RSS under
//! 64 MB, and clients that stop reading 100 MB results hold no more than their socket
//! buffers' worth, and cost nothing once they go.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{primary, query_message as query, Process};

fn login(port: u16) -> TcpStream {
    let s = support::logged_in_trust_at(port);
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s
}

/// The process's peak and current resident set, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    (
        support::status_kib(pid, "VmHWM:"),
        support::status_kib(pid, "VmRSS:"),
    )
}

/// Reads messages until ReadyForQuery; returns the bytes of CopyData received.
fn read_copy(s: &mut TcpStream) -> u64 {
    let mut head = [0u8; 5];
    let mut body = Vec::new();
    let mut copied = 0;
    loop {
        s.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
        body.resize(len, 0);
        s.read_exact(&mut body).unwrap();
        match head[0] {
            b'd' => copied += len as u64,
            b'E' => panic!("{}", String::from_utf8_lossy(&body)),
            b'Z' => return copied,
            _ => {}
        }
    }
}

#[test]
fn large_results_stream_in_bounded_memory() {
    let pg = primary();
    let dir = tempfile::tempdir().unwrap();
    let pooler = Process::start(
        pg.port,
        dir.path(),
        "large",
        "auth_type = \"trust\"\ndefault_pool_size = 20\nquery_wait_timeout = 120",
    );
    let pid = pooler.child.id();

    // 2,000,000 rows of 1,000 bytes.
    let mut s = login(pooler.port);
    let started = Instant::now();
    s.write_all(&query(
        "COPY (SELECT repeat('x', 999) FROM generate_series(1, 2000000)) TO STDOUT",
    ))
    .unwrap();
    let copied = read_copy(&mut s);
    let took = started.elapsed();
    assert_eq!(copied, 2_000_000_000);
    let (peak, _) = memory_kib(pid);
    eprintln!(
        "2 GB through in {:.1} s ({:.0} MB/s); peak RSS {peak} KiB",
        took.as_secs_f64(),
        copied as f64 / 1e6 / took.as_secs_f64()
    );
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB streaming 2 GB");
    drop(s);

    // Clients that ask for 100 MB each and never read it: twenty hold the pool's servers,
    // the rest wait for one.
    let readers: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = login(pooler.port);
            s.write_all(&query(
                "SELECT repeat('x', 1000) FROM generate_series(1, 100000)",
            ))
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let (_, stalled) = memory_kib(pid);
    eprintln!("RSS with 40 clients not reading 100 MB results: {stalled} KiB");
    assert!(stalled < 64 * 1024, "RSS {stalled} KiB");
    drop(readers);

    // Their servers come back: a client gets one at once.
    let mut s = login(pooler.port);
    s.write_all(&query("COPY (SELECT 1) TO STDOUT")).unwrap();
    assert_eq!(read_copy(&mut s), 2);
}
