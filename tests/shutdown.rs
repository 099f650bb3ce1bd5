//! Graceful shutdown of the real binary: SIGTERM drains (a transaction in flight commits,
//! idle clients are closed with 57P01, /ready turns 503, the exit status is 0); SIGINT closes
//! at once and rolls back.

mod support;

use pgsluice::demo::free_port;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{primary, APP_PASSWORD};

struct Process {
    child: Child,
    port: u16,
    http: u16,
}

impl Process {
    fn start(pg_port: u16, dir: &std::path::Path) -> Process {
        let (port, http) = (free_port(), free_port());
        let path = dir.join("pgsluice.toml");
        std::fs::write(
            &path,
            format!(
                "listen_port = {port}\nhttp_listen = \"127.0.0.1:{http}\"\nshutdown_timeout = 30\n\
                 [databases.app]\nport = {pg_port}\n[users.app]\npassword = \"{APP_PASSWORD}\"\n"
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Process { child, port, http };
        assert!(support::wait_for(Duration::from_secs(10), || p.ready() == Some(200)));
        p
    }

    fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password='{APP_PASSWORD}' dbname=app",
            self.port
        )
    }

    fn ready(&self) -> Option<u16> {
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

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// The exit status, waiting at most `within`.
    fn exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
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

async fn client(
    conn: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    (client, tokio::spawn(connection))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transaction_commit_and_exits_0() {
    let pg = primary();
    pg.psql_in("app", "CREATE TABLE t (x int); ALTER TABLE t OWNER TO app")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(pg.port, dir.path());

    let (tx, _tx_conn) = client(&p.conn_str()).await;
    tx.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let (idle, idle_conn) = client(&p.conn_str()).await;
    idle.simple_query("SELECT 1").await.unwrap();

    p.signal("TERM");
    assert!(
        support::wait_for(Duration::from_secs(5), || p.ready() == Some(503)),
        "/ready turns 503 at once"
    );
    // The idle client is closed as PostgreSQL closes it on a shutdown.
    let closed = tokio::time::timeout(Duration::from_secs(5), idle_conn)
        .await
        .expect("idle client closed")
        .unwrap();
    let err = closed.expect_err("closed with an error");
    assert_eq!(err.code().map(|c| c.code()), Some("57P01"), "{err}");
    // No new clients.
    assert!(
        tokio_postgres::connect(&p.conn_str(), tokio_postgres::NoTls)
            .await
            .is_err()
    );

    // The transaction in flight goes on and commits.
    tx.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap();
    let status = p.exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert_eq!(pg.psql_in("app", "SELECT count(*) FROM t").unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_at_once_and_rolls_back() {
    let pg = primary();
    pg.psql_in("app", "CREATE TABLE t (x int); ALTER TABLE t OWNER TO app")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(pg.port, dir.path());
    let (tx, tx_conn) = client(&p.conn_str()).await;
    tx.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    p.signal("INT");
    let closed = tokio::time::timeout(Duration::from_secs(5), tx_conn)
        .await
        .expect("client closed")
        .unwrap();
    assert_eq!(closed.unwrap_err().code().map(|c| c.code()), Some("57P01"));
    let status = p.exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert_eq!(pg.psql_in("app", "SELECT count(*) FROM t").unwrap(), "0");
    assert!(
        support::wait_for(Duration::from_secs(5), || {
            pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
                .unwrap()
                == "0"
        }),
        "no server connection left behind"
    );
}
