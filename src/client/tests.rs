//! The session state machine against a real PostgreSQL, driven from a raw client socket:
//! which messages need a server, when a server is held and released, and how each way of
//! ending leaves the server.

use super::end::End;
use super::login::LoggedIn;
use super::session;
use crate::config::Config;
use crate::context::Context;
use crate::localpg::LocalPostgres;
use crate::pool::{Members, PoolStats};
use crate::protocol::{backend, frontend, sqlstate};
use crate::router::policy::RouteMode;
use crate::stream::Stream;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the client saw: message types in order, the SQLSTATE of any error, and the status
/// of the last ReadyForQuery.
#[derive(Debug, Default)]
struct Seen {
    tags: Vec<u8>,
    codes: Vec<String>,
    status: Option<u8>,
}

/// The test's side of the connection.
struct Client {
    socket: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.unwrap();
    }

    async fn query(&mut self, sql: &str) -> Seen {
        let mut out = BytesMut::new();
        frontend::encode_query(&mut out, sql);
        self.send(&out).await;
        self.until_ready().await
    }

    /// Reads messages up to a ReadyForQuery, or until the connection closes.
    async fn until_ready(&mut self) -> Seen {
        let mut seen = Seen::default();
        loop {
            while self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize + 1;
                if self.buf.len() < len {
                    break;
                }
                let msg = self.buf.split_to(len);
                seen.tags.push(msg[0]);
                match msg[0] {
                    b'E' => {
                        let code = backend::error_field(&msg[5..], b'C').unwrap();
                        seen.codes.push(String::from_utf8_lossy(code).into_owned());
                    }
                    b'Z' => {
                        seen.status = Some(msg[5]);
                        return seen;
                    }
                    _ => {}
                }
            }
            let read =
                tokio::time::timeout(Duration::from_secs(10), self.socket.read_buf(&mut self.buf));
            if read.await.expect("an answer within 10 s").unwrap() == 0 {
                return seen;
            }
        }
    }
}

/// A pooler context for `postgres` on `pg` (trusted), and a client of it.
struct Setup {
    ctx: Arc<Context>,
    config: Arc<Config>,
    members: Arc<Members>,
}

impl Setup {
    fn new(pg: &LocalPostgres, extra: &str) -> Setup {
        let text = format!(
            "auth_type = \"trust\"\n{extra}\n[databases.postgres]\nport = {}\n",
            pg.port
        );
        let config = Config::parse(&text, "test").unwrap();
        let ctx = Context::new(config);
        let config = ctx.config.load_full();
        let members = ctx
            .pools
            .members(&config, &ctx.clusters, "postgres", "postgres")
            .unwrap();
        Setup {
            ctx,
            config,
            members,
        }
    }

    fn primary(&self) -> PoolStats {
        self.members.primary().stats()
    }

    /// Runs one session while `drive` plays the client; returns how the session ended.
    async fn session<F, Fut>(&self, drive: F) -> End
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server_side, peer) = listener.accept().await.unwrap();
        let reg = self
            .ctx
            .cancels
            .register(crate::context::clients::Peer::Tcp(peer));
        let login = LoggedIn {
            user: "postgres".into(),
            database: "postgres".into(),
            members: self.members.clone(),
            connected: self.members.connect(&self.ctx.config.load()).unwrap(),
            route: RouteMode::Auto,
            floor: crate::cluster::Lsn(0),
            params: Vec::new(),
            buf: BytesMut::new(),
        };
        let client = Client {
            socket,
            buf: BytesMut::new(),
        };
        let mut conn = session::Client {
            stream: Stream::Plain(server_side),
            reg,
            admitted: self.ctx.admit().expect("admitted"),
        };
        let (rest, buf) = session::Resting::new(&self.ctx, self.config.clone(), login);
        let run = session::serve(&mut conn, Box::new(rest), buf);
        let (end, ()) = tokio::join!(run, drive(client));
        match end {
            Err(end) => end,
            Ok(_) => panic!("a session with few clients parked"),
        }
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn terminate() -> BytesMut {
    let mut out = BytesMut::new();
    frontend::encode_terminate(&mut out);
    out
}

#[tokio::test]
async fn a_lone_sync_is_answered_without_a_server() {
    let pg = LocalPostgres::start_primary().unwrap();
    let s = Setup::new(&pg, "");
    let end = s
        .session(|mut c| async move {
            let mut out = BytesMut::new();
            frontend::encode_sync(&mut out);
            c.send(&out).await;
            let seen = c.until_ready().await;
            assert_eq!((seen.tags, seen.status), (b"Z".to_vec(), Some(b'I')));
            c.send(&terminate()).await;
        })
        .await;
    assert!(matches!(end, End::Terminated), "{end}");
    assert_eq!(s.primary().open(), 0, "no server was needed");
}

#[tokio::test]
async fn a_transaction_holds_its_server_until_it_ends() {
    let pg = LocalPostgres::start_primary().unwrap();
    let s = Setup::new(&pg, "");
    let stats = || s.members.primary().stats();
    let end = s
        .session(|mut c| async move {
            assert_eq!(c.query("BEGIN").await.status, Some(b'T'));
            assert_eq!(stats().active, 1, "linked inside the transaction");
            assert_eq!(c.query("SELECT 1").await.status, Some(b'T'));
            assert_eq!(c.query("COMMIT").await.status, Some(b'I'));
            wait_for("the server is back", || stats().idle == 1).await;
            assert_eq!(stats().active, 0);
            c.send(&terminate()).await;
        })
        .await;
    assert!(matches!(end, End::Terminated), "{end}");
    assert_eq!(
        (s.primary().idle, s.primary().open()),
        (1, 1),
        "kept for the next client"
    );
}

#[tokio::test]
async fn a_client_that_vanishes_in_a_transaction_leaves_nothing_behind() {
    let pg = LocalPostgres::start_primary().unwrap();
    let s = Setup::new(&pg, "");
    let end = s
        .session(|mut c| async move {
            assert_eq!(c.query("BEGIN").await.status, Some(b'T'));
            let created = c.query("CREATE TABLE half_done (x int)").await;
            assert_eq!(created.status, Some(b'T'));
            drop(c);
        })
        .await;
    assert!(matches!(end, End::ClientGone), "{end}");
    assert_eq!(s.primary().idle, 1, "rolled back and pooled again");
    let table = pg.psql("SELECT to_regclass('half_done') IS NULL").unwrap();
    assert_eq!(table, "t", "the transaction was rolled back");
}

#[tokio::test]
async fn a_protocol_violation_while_linked_ends_with_08p01_and_rolls_back() {
    let pg = LocalPostgres::start_primary().unwrap();
    let s = Setup::new(&pg, "");
    let end = s
        .session(|mut c| async move {
            assert_eq!(c.query("BEGIN").await.status, Some(b'T'));
            c.send(b"Z\0\0\0\x04").await;
            let seen = c.until_ready().await;
            assert_eq!(seen.codes, [sqlstate::PROTOCOL_VIOLATION]);
            assert_eq!(seen.status, None, "the connection closes");
        })
        .await;
    assert!(matches!(end, End::Violation(_)), "{end}");
    assert_eq!(s.primary().idle, 1, "rolled back and pooled again");
}

#[tokio::test]
async fn a_shutdown_reaches_an_idle_client_as_57p01() {
    let pg = LocalPostgres::start_primary().unwrap();
    let s = Setup::new(&pg, "");
    let ctx = s.ctx.clone();
    let end = s
        .session(|mut c| async move {
            assert_eq!(c.query("SELECT 1").await.status, Some(b'I'));
            ctx.shutdown(false);
            let seen = c.until_ready().await;
            assert_eq!(seen.codes, [sqlstate::ADMIN_SHUTDOWN]);
        })
        .await;
    assert!(matches!(end, End::Shutdown), "{end}");
}

#[tokio::test]
async fn a_failed_unit_is_answered_and_the_session_goes_on() {
    let pg = LocalPostgres::start_primary().unwrap();
    let s = Setup::new(&pg, "");
    let end = s
        .session(|mut c| async move {
            let failed = c.query("SELECT * FROM no_such_table").await;
            assert_eq!(
                (failed.codes.as_slice(), failed.status),
                (&["42P01".to_owned()][..], Some(b'I'))
            );
            let mut out = BytesMut::new();
            frontend::encode_parse(&mut out, b"", b"SELECT 1\0\0\0");
            frontend::encode_bind(&mut out, b"", b"", b"\0\0\0\0\0\0");
            // Execute of the unnamed portal, all rows.
            out.extend_from_slice(b"E\0\0\0\x09\0\0\0\0\0");
            frontend::encode_sync(&mut out);
            c.send(&out).await;
            let seen = c.until_ready().await;
            assert_eq!(
                seen.tags, b"12DCZ",
                "ParseComplete, BindComplete, DataRow, CommandComplete"
            );
            c.send(&terminate()).await;
        })
        .await;
    assert!(matches!(end, End::Terminated), "{end}");
}
