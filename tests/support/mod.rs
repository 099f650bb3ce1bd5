//! The integration-test harness: a real PostgreSQL primary (from `pgsluice::localpg`) with test
//! roles, and a pgsluice in front of it running on its own runtime thread. Both are torn down
//! when dropped, also when the test fails.
#![allow(dead_code)]

pub mod netns;

use pgsluice::config::Config;
use pgsluice::localpg::LocalPostgres;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const APP_PASSWORD: &str = "app secret";

/// A primary with: role `app` (SCRAM-stored password), role `md5user` (md5-stored),
/// role `cleartext_user` (asked for a cleartext password), database `app`.
pub fn primary() -> LocalPostgres {
    let pg = LocalPostgres::start_primary().expect("start primary");
    pg.psql(&format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"))
        .unwrap();
    pg.psql("SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5 pw'")
        .unwrap();
    pg.psql("CREATE ROLE cleartext_user LOGIN PASSWORD 'clear pw'")
        .unwrap();
    pg.psql("CREATE DATABASE app OWNER app").unwrap();
    pg.psql("GRANT ALL ON DATABASE app TO md5user, cleartext_user")
        .unwrap();
    pg
}

/// A primary as from `primary()`, with table `items` and sequence `ids` in database `app`,
/// and two streaming replicas of it.
pub struct Replicated {
    pub primary: LocalPostgres,
    pub replicas: [LocalPostgres; 2],
}

impl Replicated {
    pub fn start() -> Replicated {
        let primary = primary();
        primary
            .psql_in(
                "app",
                "CREATE TABLE items (id serial PRIMARY KEY, v int); \
                 INSERT INTO items (v) SELECT g FROM generate_series(1, 10) g; \
                 CREATE SEQUENCE ids; \
                 ALTER TABLE items OWNER TO app; ALTER SEQUENCE ids OWNER TO app; \
                 GRANT ALL ON items, ids, items_id_seq TO md5user, cleartext_user",
            )
            .unwrap();
        let replicas = [
            LocalPostgres::start_replica(&primary).expect("replica 1"),
            LocalPostgres::start_replica(&primary).expect("replica 2"),
        ];
        Replicated { primary, replicas }
    }

    /// The `replicas = [...]` line for a `[databases.app]` section.
    pub fn replicas_line(&self) -> String {
        format!(
            "replicas = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
            self.replicas[0].port, self.replicas[1].port
        )
    }

    pub fn pooler(&self, extra: &str, db_extra: &str) -> Pooler {
        Pooler::start_db(
            &self.primary,
            extra,
            &format!("{}\n{db_extra}", self.replicas_line()),
        )
    }
}

pub struct Pooler {
    pub addr: SocketAddr,
    /// Where /metrics, /health and /ready answer.
    pub http: Option<SocketAddr>,
    /// The running pooler's shared state, for looking at counters.
    pub ctx: std::sync::Arc<pgsluice::context::Context>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pooler {
    /// Starts pgsluice on a free port with `extra` general settings, database `app` on `pg`,
    /// and users app / md5user / cleartext_user with their passwords.
    pub fn start(pg: &LocalPostgres, extra: &str) -> Pooler {
        Pooler::start_db(pg, extra, "")
    }

    /// As `start`, with `db_extra` added to the `[databases.app]` section.
    pub fn start_db(pg: &LocalPostgres, extra: &str, db_extra: &str) -> Pooler {
        let text = format!(
            "listen_port = 0\n{extra}\n\
             [databases.app]\nport = {port}\n{db_extra}\n\
             [users.app]\npassword = \"{APP_PASSWORD}\"\n\
             [users.md5user]\npassword = \"md5 pw\"\n\
             [users.cleartext_user]\npassword = \"clear pw\"\n",
            port = pg.port
        );
        Pooler::with_config(Config::parse(&text, "test.toml").expect("test config"))
    }

    pub fn with_config(mut config: Config) -> Pooler {
        // Tests run side by side: the default HTTP port would collide.
        if config.general.http_listen == pgsluice::config::General::default().http_listen {
            config.general.http_listen = "127.0.0.1:0".into();
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let service = pgsluice::service::Service::bind(config)
                    .await
                    .expect("bind");
                addr_tx
                    .send((
                        service.local_addr(),
                        service.http_addr(),
                        service.ctx.clone(),
                    ))
                    .unwrap();
                tokio::select! {
                    _ = service.serve() => {}
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_secs(2));
        });
        let (addr, http, ctx) = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("pooler listening");
        Pooler {
            addr,
            http,
            ctx,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A libpq-style connection string for tokio-postgres or psql.
    pub fn conn_str(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password='{password}' dbname=app",
            self.port()
        )
    }

    /// GET over plain HTTP/1.1 from the pooler's HTTP listener: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.http.expect("http listener")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, body.to_owned())
    }

    /// The /metrics text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// An admin console command's header and rows (`|`-separated), through psql as `app` on
    /// database `db` (pgsluice or pgbouncer); the configuration must list app in admin_users.
    pub fn admin_table(&self, db: &str, command: &str) -> (Vec<String>, Vec<String>) {
        let out = self.psql_as(
            "app",
            APP_PASSWORD,
            db,
            &["-P", "tuples_only=off", "-F", "|", "-c", command],
        );
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text
            .lines()
            .filter(|l| !l.starts_with('('))
            .map(str::to_owned);
        let header = lines.next().unwrap_or_default();
        (
            header.split('|').map(str::to_owned).collect(),
            lines.collect(),
        )
    }

    /// One column of an admin console command's rows.
    pub fn admin_column(&self, command: &str, column: &str) -> Vec<String> {
        let (header, rows) = self.admin_table("pgsluice", command);
        let at = header
            .iter()
            .position(|h| h == column)
            .unwrap_or_else(|| panic!("{command} has no column {column}: {header:?}"));
        rows.iter()
            .map(|l| l.split('|').nth(at).unwrap_or("").to_owned())
            .collect()
    }

    /// psql through the pooler as `app`; returns the raw output.
    pub fn psql(&self, sql: &str) -> Output {
        self.psql_as("app", APP_PASSWORD, "app", &["-c", sql])
    }

    pub fn psql_as(&self, user: &str, password: &str, db: &str, args: &[&str]) -> Output {
        Command::new(pgsluice::localpg::pg_bindir().join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args(["-p", &self.port().to_string(), "-U", user, "-d", db])
            .args(args)
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("run psql")
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs pgbench against database `app` as `app` on `port`; fails the test if pgbench fails.
/// Returns its output, stdout then stderr.
pub fn pgbench(port: u16, args: &[&str]) -> String {
    let out = Command::new(pgsluice::localpg::pg_bindir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app"])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

pub fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Polls `check` until it returns true or `within` passes.
pub fn wait_for(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// Clients of the pooler waiting for a server or for RESUME, as SHOW POOLS counts them.
pub fn clients_waiting(pooler: &Pooler) -> usize {
    pooler
        .ctx
        .pools
        .all_members()
        .iter()
        .map(|m| m.client_counts(&m.pool_stats()).waiting)
        .sum()
}

/// A query whose text contains `text` is running on `pg` right now.
pub fn running(pg: &LocalPostgres, text: &str) -> bool {
    running_on(pg.port, text)
}

/// The pid of a backend of one of `servers` running a query that contains `marker`, once it
/// runs (None if none does within 15 s).
pub fn backend_running(servers: &[LocalPostgres], marker: &str) -> Option<String> {
    let sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE '%{marker}%' \
         AND pid <> pg_backend_pid() AND state = 'active'"
    );
    let mut pid = None;
    wait_for(Duration::from_secs(15), || {
        pid = servers
            .iter()
            .find_map(|pg| pg.psql(&sql).ok().filter(|p| !p.is_empty()));
        pid.is_some()
    });
    pid
}

/// Sends signal `name` (STOP, CONT, KILL, …) to process `pid`.
pub fn signal(pid: &str, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// `running`, for the server listening on `port`.
pub fn running_on(port: u16, text: &str) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE '%{text}%' AND pid <> pg_backend_pid()"
    );
    let out = Command::new(pgsluice::localpg::pg_bindir().join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-Atqc", &sql])
        .output()
        .expect("run psql");
    String::from_utf8_lossy(&out.stdout).trim() != "0"
}

/// The pgsluice binary run as its own process on `config` (a TOML text written to `dir`),
/// with a listening port and an HTTP port of its own; killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub port: u16,
    pub http: u16,
}

impl Process {
    /// Starts it with `general` settings in front of a database `app` on `pg_port`, and waits
    /// until /ready says 200.
    pub fn start(pg_port: u16, dir: &std::path::Path, name: &str, general: &str) -> Process {
        let ports = (
            pgsluice::localpg::free_port(),
            pgsluice::localpg::free_port(),
        );
        Process::start_on(pg_port, dir, name, general, ports)
    }

    /// `start`, listening on `port` with /ready on `http`.
    pub fn start_on(
        pg_port: u16,
        dir: &std::path::Path,
        name: &str,
        general: &str,
        ports: (u16, u16),
    ) -> Process {
        Process::start_db(pg_port, dir, name, general, "", ports)
    }

    /// `start_on`, with `db_extra` added to the `[databases.app]` section (replicas, say).
    pub fn start_db(
        pg_port: u16,
        dir: &std::path::Path,
        name: &str,
        general: &str,
        db_extra: &str,
        (port, http): (u16, u16),
    ) -> Process {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            Process::config(pg_port, general, db_extra, (port, http)),
        )
        .unwrap();
        let child = Process::spawn(Command::new(env!("CARGO_BIN_EXE_pgsluice")), &path);
        let p = Process { child, port, http };
        assert!(wait_for(Duration::from_secs(10), || p.ready() == Some(200)));
        p
    }

    /// `command` (the pgsluice binary, or a command that runs it) run on the configuration
    /// at `path`, its output dropped.
    pub fn spawn(mut command: Command, path: &std::path::Path) -> std::process::Child {
        command
            .args(["run", "--config"])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The configuration `start_db` writes.
    pub fn config(pg_port: u16, general: &str, db_extra: &str, (port, http): (u16, u16)) -> String {
        format!(
            "listen_port = {port}\nhttp_listen = \"127.0.0.1:{http}\"\n{general}\n\
             [databases.app]\nport = {pg_port}\n{db_extra}\n\
             [users.app]\npassword = \"{APP_PASSWORD}\"\n"
        )
    }

    /// A connection string for user `app`.
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password='{APP_PASSWORD}' dbname=app",
            self.port
        )
    }

    /// The status /ready answers with, if it answers.
    pub fn ready(&self) -> Option<u16> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.get(9..12)?.parse().ok()
    }

    /// Sends it a signal, by name (TERM, INT, HUP).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// The exit status, waiting at most `within`.
    pub fn exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of /proc/PID/status in KiB ("VmRSS:", "VmHWM:").
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The files process `pid` has open.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The last column of the last row a simple query returned, as a port number: which server
/// answered, with `SELECT inet_server_port()`.
pub async fn port_of(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<u16, tokio_postgres::Error> {
    let msgs = client.simple_query(sql).await?;
    let row = msgs
        .iter()
        .rev()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"));
    Ok(row.get(row.len() - 1).unwrap().parse().unwrap())
}

pub async fn connect(pooler: &Pooler, user: &str, password: &str) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(&pooler.conn_str(user, password), tokio_postgres::NoTls)
            .await
            .expect("connect through pgsluice");
    tokio::spawn(conn);
    client
}

/// Samples `SELECT count(*) FROM pg_stat_activity WHERE {filter}` on its own thread until
/// stopped, and keeps the highest count seen.
pub struct ActivityWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl ActivityWatch {
    pub fn start(pg: &LocalPostgres, filter: &str) -> ActivityWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let max = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop2, max2, port) = (stop.clone(), max.clone(), pg.port);
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {filter}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
                let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let mut first = Some(ready_tx);
                while !stop2.load(Ordering::Relaxed) {
                    let n: i64 = c.query_one(&sql, &[]).await.unwrap().get(0);
                    max2.fetch_max(n as usize, Ordering::Relaxed);
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("watcher connected");
        ActivityWatch { stop, max, thread }
    }

    /// Stops sampling and returns the highest count seen.
    pub fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap();
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// psql through the pooler as `app` in the background, for tests that kill it midway.
pub fn spawn_psql(
    pooler: &Pooler,
    args: &[&str],
    stdin: std::process::Stdio,
) -> std::process::Child {
    Command::new(pgsluice::localpg::pg_bindir().join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &pooler.port().to_string(),
            "-U",
            "app",
            "-d",
            "app",
        ])
        .args(args)
        .env("PGPASSWORD", APP_PASSWORD)
        .stdin(stdin)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run psql")
}

/// A plain socket to the pooler with a read timeout, for tests that speak the protocol by hand.
pub fn raw_connect(pooler: &Pooler) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(pooler.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut buf).unwrap();
    buf.to_vec()
}

/// Reads until what has arrived ends with a ReadyForQuery, and returns it all.
pub fn read_until_ready(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !(got.len() >= 6 && got[got.len() - 6] == b'Z') {
        // A signal (a child process of the harness ending) may interrupt the read.
        let n = match s.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.unwrap(),
        };
        assert!(n > 0, "connection closed: {got:?}");
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// The first column of the first row `sql` returns, run by `c` as a simple Query.
pub async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(r.get(0).unwrap_or("NULL").to_owned())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Logs in as `app` to database `app` with no password (auth_type = "trust").
pub fn logged_in_trust(pooler: &Pooler) -> std::net::TcpStream {
    logged_in_trust_at(pooler.port())
}

/// `logged_in_trust`, to a pooler on `port` (a `Process`, say); reads time out after 10 s.
pub fn logged_in_trust_at(port: u16) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "app"), ("database", "app")],
        &mut buf,
    )
    .unwrap();
    s.write_all(&buf).unwrap();
    read_until_ready(&mut s);
    s
}
