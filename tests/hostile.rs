//! Hostile clients beside ordinary ones: slowloris clients that send their startup packet a
//! byte a second (or send it whole and never answer the password request), clients that ask
//! for 100 MB results and never read them, and a flood of wrong passwords, half of them for a
//! user auth_query looks up. Ordinary clients run a query loop first alone, then beside all of
//! that.
//!
//! Checked here: the ordinary clients see no error; every slow client is closed by
//! client_login_timeout; a non-reader's server is taken back once its socket has not moved for
//! tcp_user_timeout (the next non-reader in the queue gets it), while the client is still
//! connected; every wrong password gets 28P01, and the looked-up user costs the server a few
//! lookups, not one an attempt; afterwards no server is busy and the pooler serves.
//!
//! `bench/hostile.sh` runs it at full scale against a release build (PGSLUICE_HOSTILE_FULL=1:
//! 2,000 slow clients, 500 non-readers, 1,000 wrong passwords a second; PGSLUICE_HOSTILE_SLOW,
//! _NON_READERS and _WRONG change one). It first aims the same attack at a second pooler on
//! the machine, as a control: on one box the attackers take cores from everyone, so the
//! ordinary clients' p99 under attack is held to twice the p99 they had while the attack went
//! elsewhere, and both are printed beside the quiet run's, with the pooler's CPU and peak RSS.

mod support;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{primary, query_message as query, wait_for, Process, APP_PASSWORD};

/// How big the attack is.
struct Scale {
    slow: usize,
    non_readers: usize,
    wrong_per_second: usize,
    /// Seconds of the quiet run and of the hostile one.
    seconds: u64,
}

impl Scale {
    fn from_env() -> (Scale, bool) {
        let full = std::env::var_os("PGSLUICE_HOSTILE_FULL").is_some();
        let scale = if full {
            Scale {
                slow: 2000,
                non_readers: 500,
                wrong_per_second: 1000,
                seconds: 20,
            }
        } else {
            Scale {
                slow: 400,
                non_readers: 40,
                wrong_per_second: 200,
                seconds: 8,
            }
        };
        let count = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let scale = Scale {
            slow: count("PGSLUICE_HOSTILE_SLOW", scale.slow),
            non_readers: count("PGSLUICE_HOSTILE_NON_READERS", scale.non_readers),
            wrong_per_second: count("PGSLUICE_HOSTILE_WRONG", scale.wrong_per_second),
            ..scale
        };
        (scale, full)
    }
}

/// Ordinary clients, each on its own connection.
const ORDINARY: usize = 8;
/// client_login_timeout and tcp_user_timeout of the pooler, in seconds.
const LOGIN_TIMEOUT: u64 = 4;
const USER_TIMEOUT: u64 = 3;

fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::startup_message([("user", user), ("database", database)], &mut buf).unwrap();
    buf.to_vec()
}

/// Reads one message: its type and body.
fn message(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// The SQLSTATE of an ErrorResponse's body.
fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// An md5 login (auth_type = "md5"); Ok(None) once logged in, Ok(Some(sqlstate)) when refused.
fn md5_login(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> std::io::Result<(TcpStream, Option<String>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&startup(user, db))?;
    loop {
        let (kind, body) = message(&mut s)?;
        match kind {
            b'R' if body[..4] == [0, 0, 0, 5] => {
                let salt = [body[4], body[5], body[6], body[7]];
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    password.as_bytes(),
                    salt,
                );
                let mut buf = BytesMut::new();
                frontend::password_message(hash.as_bytes(), &mut buf).unwrap();
                s.write_all(&buf)?;
            }
            b'R' if body[..4] == [0, 0, 0, 0] => {}
            b'R' => panic!("{user}: not an md5 login: {body:?}"),
            b'E' => return Ok((s, Some(sqlstate(&body)))),
            b'Z' => return Ok((s, None)),
            _ => {}
        }
    }
}

/// Latencies of ordinary clients' queries, in microseconds, and the errors they met.
#[derive(Default)]
struct Run {
    micros: Vec<u64>,
    errors: Vec<String>,
}

impl Run {
    fn percentile(&mut self, p: f64) -> f64 {
        self.micros.sort_unstable();
        let i = ((self.micros.len() as f64 - 1.0) * p).round() as usize;
        self.micros.get(i).copied().unwrap_or_default() as f64 / 1000.0
    }
}

/// ORDINARY clients, each running `SELECT` queries back to back (a transaction every fourth)
/// for `seconds`.
fn ordinary(port: u16, seconds: u64) -> Run {
    let threads: Vec<_> = (0..ORDINARY)
        .map(|i| {
            std::thread::spawn(move || {
                let mut run = Run::default();
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let (mut s, refused) = match md5_login(port, "app", APP_PASSWORD, "app") {
                    Ok(login) => login,
                    Err(e) => {
                        run.errors.push(format!("login: {e}"));
                        return run;
                    }
                };
                if let Some(code) = refused {
                    run.errors.push(format!("login refused: {code}"));
                    return run;
                }
                let mut n = 0usize;
                while Instant::now() < deadline {
                    n += 1;
                    let sql = if n % 4 == 0 {
                        format!("BEGIN; SELECT {i} + {n}; COMMIT")
                    } else {
                        format!("SELECT {i} + {n}")
                    };
                    let started = Instant::now();
                    if let Err(e) = s.write_all(&query(&sql)) {
                        run.errors.push(format!("write: {e}"));
                        return run;
                    }
                    loop {
                        match message(&mut s) {
                            Ok((b'Z', _)) => break,
                            Ok((b'E', body)) => run.errors.push(sqlstate(&body)),
                            Ok(_) => {}
                            Err(e) => {
                                run.errors.push(format!("read: {e}"));
                                return run;
                            }
                        }
                    }
                    run.micros.push(started.elapsed().as_micros() as u64);
                }
                run
            })
        })
        .collect();
    let mut all = Run::default();
    for t in threads {
        let run = t.join().unwrap();
        all.micros.extend(run.micros);
        all.errors.extend(run.errors);
    }
    all
}

/// Slow clients, on non-blocking sockets from one thread: the even ones send their startup
/// packet a byte a second, the odd ones send it whole and never answer the password request.
/// Returns, once every one is closed (or `within` has passed), how many the pooler closed and
/// the longest any of them stayed open.
fn slowloris(
    port: u16,
    count: usize,
    within: Duration,
    started: &AtomicUsize,
) -> (usize, Duration) {
    let packet = startup("app", "app");
    let mut open: Vec<(TcpStream, Instant, usize, Option<Duration>)> = Vec::new();
    for i in 0..count {
        let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        s.set_nonblocking(true).unwrap();
        let sent = if i % 2 == 1 { packet.len() } else { 0 };
        if sent > 0 {
            let _ = (&s).write_all(&packet);
        }
        open.push((s, Instant::now(), sent, None));
        started.fetch_add(1, Ordering::Relaxed);
    }
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 512];
    while Instant::now() < deadline && open.iter().any(|c| c.3.is_none()) {
        for (s, at, sent, closed) in open.iter_mut().filter(|c| c.3.is_none()) {
            // Whatever the pooler says (its password request, its goodbye) is read, and an
            // end of stream closes the client.
            loop {
                match s.read(&mut chunk) {
                    Ok(0) => {
                        *closed = Some(at.elapsed());
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *closed = Some(at.elapsed());
                        break;
                    }
                }
            }
            if closed.is_none()
                && *sent < packet.len()
                && s.write(&packet[*sent..*sent + 1]).is_ok()
            {
                *sent += 1;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let closed: Vec<Duration> = open.iter().filter_map(|c| c.3).collect();
    let longest = closed.iter().max().copied().unwrap_or_default();
    (closed.len(), longest)
}

/// Clients that ask for a 100 MB result and never read it; kept open until `release`.
fn non_readers(port: u16, count: usize, release: &AtomicBool) -> usize {
    let mut held = Vec::new();
    for _ in 0..count {
        let Ok((mut s, None)) = md5_login(port, "app", APP_PASSWORD, "bulk") else {
            continue;
        };
        if s.write_all(&query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 100000)",
        ))
        .is_ok()
        {
            held.push(s);
        }
    }
    let n = held.len();
    while !release.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}

/// Wrong passwords at `per_second`, alternating between a configured user and one auth_query
/// looks up; returns the SQLSTATEs they got, as (28P01 count, others).
fn wrong_passwords(port: u16, per_second: usize, seconds: u64) -> (usize, Vec<String>) {
    let threads = 2;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut refused, mut other) = (0, Vec::new());
                let gap = Duration::from_secs_f64(threads as f64 / per_second as f64);
                let start = Instant::now();
                let mut n = 0u32;
                while start.elapsed() < Duration::from_secs(seconds) {
                    let user = if (n + t) % 2 == 0 { "app" } else { "looked_up" };
                    match md5_login(port, user, "not the password", "app") {
                        Ok((_, Some(code))) if code == "28P01" => refused += 1,
                        Ok((_, code)) => other.push(format!("{user}: {code:?}")),
                        Err(e) => other.push(format!("{user}: {e}")),
                    }
                    n += 1;
                    let next = start + gap * n;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                (refused, other)
            })
        })
        .collect();
    let mut all = (0, Vec::new());
    for h in handles {
        let (r, o) = h.join().unwrap();
        all.0 += r;
        all.1.extend(o);
    }
    all
}

/// Watches the non-readers' queries on the server at `port` until `until`: how many ran
/// (each seen by its backend and start), and the longest any ran.
fn watch_bulk(port: u16, until: Instant) -> (usize, f64) {
    let sql = "SELECT pid || ' ' || query_start || '|' || extract(epoch FROM now() - query_start) \
               FROM pg_stat_activity WHERE state = 'active' \
               AND query LIKE '%generate_series(1, 100000)%' AND pid <> pg_backend_pid()";
    let mut seen = std::collections::HashSet::new();
    let mut oldest = 0f64;
    while Instant::now() < until {
        let out = std::process::Command::new(pgsluice::localpg::pg_bindir().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-Atqc", sql])
            .output()
            .expect("run psql");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (query, age) = line.split_once('|').unwrap();
            seen.insert(query.to_owned());
            oldest = oldest.max(age.parse().unwrap());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    (seen.len(), oldest)
}

/// The CPU time the process has used, in seconds (utime + stime).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The pooler's resident set and its peak, in KiB, and its open files.
fn footprint(pid: u32) -> (u64, u64, usize) {
    let kib = |field| support::status_kib(pid, field);
    (kib("VmRSS:"), kib("VmHWM:"), support::open_files(pid))
}

/// The attack under way against one pooler.
struct Attack {
    slow: std::thread::JoinHandle<(usize, Duration)>,
    readers: std::thread::JoinHandle<usize>,
    wrong: std::thread::JoinHandle<(usize, Vec<String>)>,
    bulk: std::thread::JoinHandle<(usize, f64)>,
    release: Arc<AtomicBool>,
}

/// What the attack met.
struct Outcome {
    /// Slow clients closed, and the longest one stayed.
    closed: usize,
    longest: Duration,
    /// Non-readers that sent their query; how many of those queries ran, the longest.
    held: usize,
    queries: usize,
    oldest: f64,
    /// Wrong passwords refused with 28P01, and any other answer.
    refused: usize,
    other: Vec<String>,
}

impl Attack {
    /// Starts every kind of hostile client against the pooler on `port` (whose database
    /// `bulk` runs on the server at `pg_port`); returns once the slow clients are connected.
    fn start(port: u16, pg_port: u16, scale: &Scale) -> Attack {
        let slow_started = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let slow = {
            let started = slow_started.clone();
            let (count, within) = (scale.slow, Duration::from_secs(LOGIN_TIMEOUT + 30));
            std::thread::spawn(move || slowloris(port, count, within, &started))
        };
        let readers = {
            let (count, release) = (scale.non_readers, release.clone());
            std::thread::spawn(move || non_readers(port, count, &release))
        };
        let wrong = {
            let (rate, seconds) = (scale.wrong_per_second, scale.seconds);
            std::thread::spawn(move || wrong_passwords(port, rate, seconds))
        };
        let bulk = {
            let watch = Duration::from_secs((USER_TIMEOUT * 6).max(scale.seconds + 10));
            let until = Instant::now() + watch;
            std::thread::spawn(move || watch_bulk(pg_port, until))
        };
        assert!(wait_for(Duration::from_secs(60), || {
            slow_started.load(Ordering::Relaxed) >= scale.slow
        }));
        Attack {
            slow,
            readers,
            wrong,
            bulk,
            release,
        }
    }

    /// Waits for the attack to end, then lets the non-readers go.
    fn finish(self) -> Outcome {
        let (refused, other) = self.wrong.join().unwrap();
        let (closed, longest) = self.slow.join().unwrap();
        let (queries, oldest) = self.bulk.join().unwrap();
        self.release.store(true, Ordering::Relaxed);
        let held = self.readers.join().unwrap();
        Outcome {
            closed,
            longest,
            held,
            queries,
            oldest,
            refused,
            other,
        }
    }
}

#[test]
fn hostile_clients_leave_ordinary_ones_served() {
    let (scale, full) = Scale::from_env();
    let pg = primary();
    pg.psql_in(
        "app",
        "SET password_encryption = 'md5'; CREATE ROLE looked_up LOGIN PASSWORD 'its own'; \
         CREATE SEQUENCE public.lookups; \
         CREATE FUNCTION public.lookup(u name) RETURNS TABLE (usename name, passwd text) \
         LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN PERFORM nextval('public.lookups'); \
         RETURN QUERY SELECT rolname, rolpassword FROM pg_authid WHERE rolname = u; END $$",
    )
    .unwrap();
    let lookups = || -> i64 {
        let sql = "SELECT last_value - 1 + is_called::int FROM public.lookups";
        pg.psql_in("app", sql).unwrap().trim().parse().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let general = format!(
        "auth_type = \"md5\"\n\
         auth_user = \"postgres\"\n\
         auth_query = \"SELECT * FROM public.lookup($1)\"\n\
         max_client_conn = {max}\n\
         default_pool_size = 8\n\
         query_wait_timeout = 120\n\
         client_login_timeout = {LOGIN_TIMEOUT}\n\
         tcp_user_timeout = {user_timeout}\n\
         [databases.bulk]\nport = {port}\ndbname = \"app\"\npool_size = 4\n",
        max = scale.slow + scale.non_readers + 500,
        user_timeout = USER_TIMEOUT * 1000,
        port = pg.port,
    );
    let pooler = Process::start(pg.port, dir.path(), "hostile", &general);
    let (port, pid) = (pooler.port, pooler.child.id());

    let cpu_start = cpu_seconds(pid);
    let mut quiet = ordinary(port, scale.seconds);
    let cpu_quiet = cpu_seconds(pid) - cpu_start;
    assert!(quiet.errors.is_empty(), "quiet run: {:?}", quiet.errors);
    let (rss_quiet, _, fds_quiet) = footprint(pid);

    // The control, at full scale: the same attack on another pooler on this machine, which
    // costs the ordinary clients what it takes of the machine's cores, but nothing of
    // their pooler's.
    let mut control = if full {
        let decoy = Process::start(pg.port, dir.path(), "decoy", &general);
        let attack = Attack::start(decoy.port, pg.port, &scale);
        let run = ordinary(port, scale.seconds);
        attack.finish();
        run
    } else {
        Run::default()
    };

    let lookups_before = lookups();
    let attack = Attack::start(port, pg.port, &scale);
    let cpu_start = cpu_seconds(pid);
    let mut hostile = ordinary(port, scale.seconds);
    let cpu_hostile = cpu_seconds(pid) - cpu_start;
    let (_, peak, fds_hostile) = footprint(pid);
    let o = attack.finish();
    let lookups_made = lookups() - lookups_before;

    let (q50, q99) = (quiet.percentile(0.5), quiet.percentile(0.99));
    let (h50, h99) = (hostile.percentile(0.5), hostile.percentile(0.99));
    let (c50, c99) = (control.percentile(0.5), control.percentile(0.99));
    let cpu = |seconds: f64| seconds * 100.0 / scale.seconds as f64;
    let control_line = if full {
        format!(
            "with the attack on another pooler p50 {c50:.2} ms p99 {c99:.2} ms ({} queries); ",
            control.micros.len()
        )
    } else {
        String::new()
    };
    let elsewhere = if full {
        format!(", / attack elsewhere {:.2}", h99 / c99)
    } else {
        String::new()
    };
    eprintln!(
        "hostile clients: {} slow ({} closed, the last after {:.1} s), {} non-readers ({} of \
         their queries ran, the longest {:.1} s), {} wrong passwords ({lookups_made} lookups); \
         ordinary clients' latency: quiet p50 {q50:.2} ms p99 {q99:.2} ms ({} queries); \
         {control_line}under attack p50 {h50:.2} ms p99 {h99:.2} ms ({} queries); p99 under \
         attack / quiet {:.2}{elsewhere}; pooler CPU {:.0} % of a core quiet, {:.0} % under \
         attack; RSS {rss_quiet} KiB quiet, peak {peak} KiB; {fds_quiet} files quiet, \
         {fds_hostile} under attack",
        scale.slow,
        o.closed,
        o.longest.as_secs_f64(),
        o.held,
        o.queries,
        o.oldest,
        o.refused,
        quiet.micros.len(),
        hostile.micros.len(),
        h99 / q99,
        cpu(cpu_quiet),
        cpu(cpu_hostile),
    );
    assert!(control.errors.is_empty(), "control: {:?}", control.errors);
    assert!(
        hostile.errors.is_empty(),
        "under attack: {:?}",
        hostile.errors
    );
    assert_eq!(o.closed, scale.slow, "slow clients still open");
    let bound = Duration::from_secs(LOGIN_TIMEOUT + 3);
    assert!(o.longest < bound, "a slow client stayed {:?}", o.longest);
    assert_eq!(
        o.held, scale.non_readers,
        "non-readers that could not log in"
    );
    // The non-readers' servers come back while the clients stay connected: their sockets
    // stopped moving for tcp_user_timeout, and the next ones in the queue get them.
    let bound = (USER_TIMEOUT * 3 + 3) as f64;
    assert!(
        o.oldest < bound,
        "a non-reader held its server {:.1} s",
        o.oldest
    );
    assert!(
        o.queries > 4,
        "the non-readers' servers never changed hands"
    );
    assert!(o.other.is_empty(), "wrong passwords: {:?}", o.other);
    assert!(o.refused > 0);
    // One lookup the first time, then at most a burst of three and one a second.
    let bound = 4 + scale.seconds as i64 + 2;
    assert!(
        lookups_made <= bound,
        "{lookups_made} lookups for {} wrong passwords (at most {bound})",
        o.refused
    );
    if full {
        assert!(
            h99 <= 2.0 * c99,
            "p99 {h99:.2} ms under attack, {c99:.2} ms with the attack elsewhere"
        );
    }

    // Afterwards: no server is busy, and the pooler still serves.
    let busy_bulk = || support::running_on(pg.port, "generate_series(1, 100000)");
    assert!(wait_for(Duration::from_secs(20), || !busy_bulk()));
    let after = ordinary(port, 1);
    assert!(after.errors.is_empty(), "after: {:?}", after.errors);
}
