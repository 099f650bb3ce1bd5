//! The session loop: a client between logins and logout.
//!
//! `State::Idle` holds no server. The first message that needs one checks a server out of the
//! pool, re-applies this client's session parameters if that server differs, and moves to
//! `State::Linked`, where bytes flow both ways until the server owes nothing and reports an
//! idle transaction status (transaction mode) or until the client leaves (session mode).
//! A client that leaves while linked never passes its state on: its query is cancelled, its
//! transaction rolled back, and the server is reused only if it then reports idle.

use super::cancel::Registration;
use super::login::{LoggedIn, TRACKED};
use super::params::SessionParams;
use super::statements::{ClientStatements, Registry, Statement};
use crate::config::{Config, General, PoolMode};
use crate::pool::{Pool, PoolError};
use crate::protocol::backend::{self, Action, Event, Scanner, TxStatus};
use crate::protocol::{frontend, sqlstate, ProtocolError};
use crate::server::tracker::{Reply, Tracker};
use crate::server::ServerConn;
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Stop reading from one side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// Read granularity: big enough that a typical transaction is one read.
const READ_CHUNK: usize = 16 * 1024;
/// With at most this many clients connected, an idle client keeps its buffers: memory is
/// plentiful then, and reallocating them per transaction is a cost every query pays. Beyond
/// it, idle clients give their buffers back (the budget is 2 KiB per idle client).
const KEEP_BUFFERS_UP_TO: usize = 64;
/// How long cleaning up after a departed client may take before the server is closed instead.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(10);

/// A server checked out by this client, and what it still owes.
struct Link {
    conn: ServerConn,
    scanner: Scanner,
    tracker: Tracker,
    to_server: BytesMut,
}

enum State {
    Idle,
    Linked(Box<Link>),
}

/// How a linked stretch ended.
enum Unlink {
    /// Transaction mode: the server owes nothing and is idle.
    Release,
    /// The client sent Terminate and everything before it has been answered.
    Terminate,
    ClientGone,
    ServerGone,
    Violation(ProtocolError),
    IdleTransactionTimeout,
}

struct Session<'a> {
    general: &'a General,
    pool: Arc<Pool>,
    mode: PoolMode,
    client: &'a mut TcpStream,
    cbuf: BytesMut,
    to_client: BytesMut,
    params: SessionParams,
    reg: &'a Registration<'a>,
    registry: &'a Registry,
    statements: ClientStatements,
    /// Clients connected to this process, to decide whether idle buffers are kept.
    clients: &'a std::sync::atomic::AtomicUsize,
    /// The tracker and server-bound buffer of the last link, kept for the next one.
    spare: (Tracker, BytesMut),
}

/// A name no statement of ours ever has: closing it is a no-op the server still answers.
const NO_STATEMENT: &[u8] = b"pgsluice_none";

pub async fn run(
    config: &Config,
    registry: &Registry,
    clients: &std::sync::atomic::AtomicUsize,
    login: LoggedIn,
    client: &mut TcpStream,
    reg: &Registration<'_>,
) -> &'static str {
    let mode = login.pool.settings.pool_mode;
    let mut s = Session {
        general: &config.general,
        pool: login.pool,
        mode,
        client,
        cbuf: login.buf,
        to_client: BytesMut::new(),
        params: SessionParams::new(login.params),
        reg,
        registry,
        statements: ClientStatements::default(),
        clients,
        spare: (Tracker::default(), BytesMut::new()),
    };
    s.serve().await
}

impl Session<'_> {
    async fn serve(&mut self) -> &'static str {
        let mut state = State::Idle;
        loop {
            state = match state {
                State::Idle => match self.idle_step().await {
                    // Boxed: linking is a brief state, and an idle client should not carry
                    // its size.
                    Ok(true) => match Box::pin(self.link()).await {
                        Ok(link) => State::Linked(link),
                        Err(reason) => return reason,
                    },
                    Ok(false) => State::Idle,
                    Err(reason) => return reason,
                },
                State::Linked(mut link) => {
                    let how = Box::pin(self.pump(&mut link)).await;
                    self.reg.slot.set(None);
                    match how {
                        Unlink::Release => {
                            let Link {
                                conn,
                                mut tracker,
                                to_server,
                                ..
                            } = *link;
                            self.pool.release(conn, true);
                            tracker.reset();
                            self.spare = (tracker, to_server);
                            State::Idle
                        }
                        Unlink::ServerGone => {
                            self.pool.release(link.conn, false);
                            self.fatal(sqlstate::CONNECTION_FAILURE, "server conn crashed?")
                                .await;
                            return "server connection lost";
                        }
                        Unlink::Terminate => {
                            return self.end(link, "client terminated", None).await
                        }
                        Unlink::ClientGone => {
                            return self.end(link, "client disconnected", None).await
                        }
                        Unlink::Violation(e) => {
                            let message = e.to_string();
                            return self.end(link, "protocol violation", Some(&message)).await;
                        }
                        Unlink::IdleTransactionTimeout => {
                            let message = Some("idle transaction timeout");
                            return self.end(link, "idle_transaction_timeout", message).await;
                        }
                    }
                }
            }
        }
    }

    /// The client is leaving (or being sent away with `fatal`): tell it, then make the server
    /// safe for someone else.
    async fn end(
        &mut self,
        link: Box<Link>,
        reason: &'static str,
        fatal: Option<&str>,
    ) -> &'static str {
        if let Some(message) = fatal {
            self.fatal(sqlstate::PROTOCOL_VIOLATION, message).await;
        }
        Box::pin(self.finish(link)).await;
        reason
    }

    async fn fatal(&mut self, code: &str, message: &str) {
        backend::error_response(&mut self.to_client, "FATAL", code, message);
        let _ = self.client.write_all(&self.to_client).await;
        self.to_client.clear();
        let _ = self.client.shutdown().await;
    }

    /// Without a server: wait for the client's next message. True when it needs a server.
    async fn idle_step(&mut self) -> Result<bool, &'static str> {
        if !self.to_client.is_empty() {
            self.client
                .write_all(&self.to_client)
                .await
                .map_err(|_| "client disconnected")?;
            self.to_client.clear();
        }
        let header = match frontend::header(&self.cbuf, self.general.max_packet_size) {
            Ok(h) => h,
            Err(e) => {
                self.fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                    .await;
                return Err("protocol violation");
            }
        };
        let Some(h) = header.filter(|h| self.cbuf.len() >= h.len) else {
            self.read_idle().await?;
            return Ok(false);
        };
        let msg = match frontend::parse(h.tag, &self.cbuf[5..h.len]) {
            Ok(m) => m,
            Err(e) => {
                self.fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                    .await;
                return Err("protocol violation");
            }
        };
        if let frontend::Message::Close { kind: b'S', name } = msg {
            if self.general.max_prepared_statements > 0 && !name.is_empty() {
                // Only this client's name goes (as inside a transaction): no server needed.
                self.statements.remove(name);
                self.cbuf.advance(h.len);
                self.to_client.extend_from_slice(backend::CLOSE_COMPLETE);
                return Ok(false);
            }
        }
        match h.tag {
            b'X' => Err("client terminated"),
            // Nothing is open: answer a lone Sync ourselves and ignore Flush.
            b'S' | b'H' => {
                self.cbuf.advance(h.len);
                if h.tag == b'S' {
                    backend::ready_for_query(&mut self.to_client, TxStatus::Idle);
                }
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    /// Checks out a server and brings its session parameters in line with this client's.
    async fn link(&mut self) -> Result<Box<Link>, &'static str> {
        let pool = self.pool.clone();
        let result = {
            let waiting = pool.checkout();
            tokio::pin!(waiting);
            tokio::select! {
                // Checkout first: when a server is free there is no need to look at the client.
                biased;
                r = &mut waiting => r,
                // A client that leaves while it waits gives up its place in the queue.
                gone = client_gone(self.client) => {
                    if gone {
                        return Err("client disconnected while waiting");
                    }
                    waiting.await
                }
            }
        };
        let checkout = match result {
            Ok(c) => c,
            Err(e) => {
                let code = match e {
                    PoolError::Connect(_) => sqlstate::CONNECTION_FAILURE,
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                self.fatal(code, &e.to_string()).await;
                return Err(match e {
                    PoolError::WaitTimeout => "query_wait_timeout",
                    _ => "server unavailable",
                });
            }
        };
        let mut link = Box::new(Link {
            conn: checkout.conn,
            scanner: Scanner::default(),
            tracker: std::mem::take(&mut self.spare.0),
            to_server: std::mem::take(&mut self.spare.1),
        });
        self.reg.slot.set(Some(link.conn.cancel_key.clone()));
        if let Err(message) = self.apply_params(&mut link).await {
            self.reg.slot.set(None);
            let reusable = link.tracker.idle();
            self.pool.release(link.conn, reusable);
            self.fatal(sqlstate::PROTOCOL_VIOLATION, &message).await;
            return Err("invalid session parameter");
        }
        Ok(link)
    }

    /// Waits for client bytes with no server held. An idle client keeps no read buffer.
    async fn read_idle(&mut self) -> Result<(), &'static str> {
        let many = self.clients.load(std::sync::atomic::Ordering::Relaxed) > KEEP_BUFFERS_UP_TO;
        if self.cbuf.is_empty() && (many || self.cbuf.capacity() > 4 * READ_CHUNK) {
            self.cbuf = BytesMut::new();
            self.to_client = BytesMut::new();
            self.spare = (Tracker::default(), BytesMut::new());
        }
        let wait = self.client.readable();
        match self.general.client_idle_timeout.enabled() {
            // Boxed: a timer is large, and every idle client would carry its space otherwise.
            Some(t) => {
                if Box::pin(tokio::time::timeout(t, wait)).await.is_err() {
                    self.fatal(sqlstate::PROTOCOL_VIOLATION, "client_idle_timeout")
                        .await;
                    return Err("client_idle_timeout");
                }
            }
            None => {
                let _ = wait.await;
            }
        }
        self.cbuf.reserve(READ_CHUNK);
        match self.client.read_buf(&mut self.cbuf).await {
            Ok(n) if n > 0 => Ok(()),
            _ => Err("client disconnected"),
        }
    }

    /// Brings the server's session parameters in line with this client's before its work runs.
    async fn apply_params(&mut self, link: &mut Link) -> Result<(), String> {
        let wanted = self.params.fingerprint();
        if link.conn.params_synced == Some(wanted) {
            return Ok(());
        }
        let mut sql = String::new();
        for (name, value) in self.params.iter() {
            if link.conn.params.get(name).map(String::as_str) != Some(value) {
                sql.push_str(&format!("SET {name} = {};", quote_literal(value)));
            }
        }
        if !sql.is_empty() {
            frontend::encode_query(&mut link.to_server, &sql);
            link.tracker.sent(b'Q');
            let mut failure = None;
            let deadline = Instant::now() + self.general.server_connect_timeout.0;
            let done = drain(link, deadline, &mut self.params, &mut failure).await;
            if let Some(message) = failure {
                return Err(message);
            }
            if !done || !link.tracker.idle() {
                return Err("could not apply session parameters".into());
            }
            // Settings the server does not report: remember what we set.
            for (name, value) in self.params.iter() {
                if !link.conn.params.contains_key(name) {
                    link.conn.params.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        link.conn.params_synced = Some(self.params.fingerprint());
        Ok(())
    }

    /// Moves every complete client frame into the server's output, mapping named prepared
    /// statements to the pooler's. Stops after Terminate.
    fn take_client_frames(&mut self, link: &mut Link) -> Result<bool, ProtocolError> {
        let map = self.general.max_prepared_statements > 0;
        loop {
            let Some(h) = frontend::header(&self.cbuf, self.general.max_packet_size)? else {
                return Ok(false);
            };
            if self.cbuf.len() < h.len {
                return Ok(false);
            }
            // Borrowed, not split off: splitting would turn the buffer into a shared one,
            // an allocation per transaction.
            let frame = &self.cbuf[..h.len];
            let msg = frontend::parse(h.tag, &frame[5..])?;
            let out = &mut link.to_server;
            match msg {
                frontend::Message::Terminate => {
                    self.cbuf.advance(h.len);
                    return Ok(true);
                }
                frontend::Message::Parse {
                    name, definition, ..
                } if map && !name.is_empty() => {
                    let stmt = self.registry.get(definition);
                    self.statements.insert(name, stmt.clone());
                    if link.conn.prepared.touch(stmt.id) {
                        // Already prepared there: a no-op Close yields the reply the client
                        // expects, in its place among the other replies.
                        frontend::encode_target(out, b'C', b'S', NO_STATEMENT);
                        link.tracker.close_sent(Reply::AsParseComplete);
                    } else {
                        prepare_on_server(
                            link,
                            &stmt,
                            self.general.max_prepared_statements,
                            Reply::Forward,
                        );
                    }
                }
                frontend::Message::Bind {
                    portal,
                    statement,
                    params,
                } if map && !statement.is_empty() => {
                    match self.statements.get(statement) {
                        Some(stmt) => {
                            ensure_prepared(link, stmt, self.general.max_prepared_statements);
                            frontend::encode_bind(&mut link.to_server, portal, &stmt.name, params);
                        }
                        // Unknown to us: the server answers with PostgreSQL's own error.
                        None => out.extend_from_slice(frame),
                    }
                }
                frontend::Message::Describe { kind: b'S', name } if map && !name.is_empty() => {
                    match self.statements.get(name) {
                        Some(stmt) => {
                            ensure_prepared(link, stmt, self.general.max_prepared_statements);
                            frontend::encode_target(&mut link.to_server, b'D', b'S', &stmt.name);
                        }
                        None => out.extend_from_slice(frame),
                    }
                }
                frontend::Message::Close { kind: b'S', name } if map && !name.is_empty() => {
                    // The server's statement may serve other clients: only the name goes.
                    self.statements.remove(name);
                    frontend::encode_target(out, b'C', b'S', NO_STATEMENT);
                    link.tracker.close_sent(Reply::Forward);
                }
                frontend::Message::Parse { .. } => {
                    link.tracker.parse_sent(None, Reply::Forward);
                    out.extend_from_slice(frame);
                }
                frontend::Message::Close { .. } => {
                    link.tracker.close_sent(Reply::Forward);
                    out.extend_from_slice(frame);
                }
                frontend::Message::Sync => {
                    link.conn.prepared.new_batch();
                    out.extend_from_slice(frame);
                }
                _ => out.extend_from_slice(frame),
            }
            self.cbuf.advance(h.len);
            link.tracker.sent(h.tag);
        }
    }

    /// Forwards both ways until the link must end.
    async fn pump(&mut self, link: &mut Link) -> Unlink {
        let mut terminating = false;
        let mut forwarded = false;
        let idle_tx = self.general.idle_transaction_timeout.enabled();
        loop {
            // Release before taking the client's next transaction, so that clients waiting
            // for a server get their turn even against a client that never pauses.
            let settled = link.to_server.is_empty() && link.conn.buf.is_empty();
            if forwarded
                && settled
                && !terminating
                && self.mode == PoolMode::Transaction
                && link.tracker.idle()
            {
                return Unlink::Release;
            }
            if !terminating {
                let before = link.to_server.len();
                match self.take_client_frames(link) {
                    Ok(t) => terminating = t,
                    Err(e) => return Unlink::Violation(e),
                }
                forwarded |= link.to_server.len() > before;
            }
            let settled = link.to_server.is_empty() && link.conn.buf.is_empty();
            if settled && terminating && !link.tracker.busy() {
                let _ = self.client.write_all(&self.to_client).await;
                self.to_client.clear();
                return Unlink::Terminate;
            }
            let waiting_in_tx = idle_tx.filter(|_| {
                link.tracker.status != TxStatus::Idle
                    && !link.tracker.busy()
                    && link.to_server.is_empty()
            });
            let Link {
                conn,
                scanner,
                tracker,
                to_server,
            } = link;
            let (mut srv_r, mut srv_w) = conn.stream.split();
            let (mut cli_r, mut cli_w) = self.client.split();
            if self.cbuf.capacity() - self.cbuf.len() < 1024 {
                self.cbuf.reserve(READ_CHUNK);
            }
            if conn.buf.capacity() - conn.buf.len() < 1024 {
                conn.buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                r = srv_w.write(to_server), if !to_server.is_empty() => match r {
                    Ok(n) if n > 0 => to_server.advance(n),
                    _ => return Unlink::ServerGone,
                },
                r = cli_w.write(&self.to_client), if !self.to_client.is_empty() => match r {
                    Ok(n) if n > 0 => self.to_client.advance(n),
                    _ => return Unlink::ClientGone,
                },
                r = srv_r.read_buf(&mut conn.buf), if self.to_client.len() < HIGH_WATER => match r {
                    Ok(n) if n > 0 => {
                        if absorb(conn, scanner, tracker, &mut self.params, &mut None, Some(&mut self.to_client)).is_err() {
                            return Unlink::ServerGone;
                        }
                    }
                    _ => return Unlink::ServerGone,
                },
                r = cli_r.read_buf(&mut self.cbuf), if !terminating && to_server.len() < HIGH_WATER => match r {
                    Ok(n) if n > 0 => {}
                    _ => return Unlink::ClientGone,
                },
                _ = sleep_or_never(waiting_in_tx) => return Unlink::IdleTransactionTimeout,
            }
        }
    }

    /// After the client has gone: make the server safe for someone else, or close it.
    async fn finish(&mut self, mut link: Box<Link>) {
        let reset = match self.mode {
            PoolMode::Session => {
                Some(self.general.server_reset_query.as_str()).filter(|q| !q.is_empty())
            }
            PoolMode::Transaction => None,
        };
        let reusable = cleanup(&mut link, reset, &mut self.params).await;
        self.pool.release(link.conn, reusable);
    }
}

/// Resolves true when the client has closed its connection, false as soon as it has sent more
/// bytes (which stay unread).
async fn client_gone(client: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    !matches!(client.peek(&mut probe).await, Ok(n) if n > 0)
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Takes in what the server sent: updates the tracker, parameters and prepared statements,
/// and moves what the client should see to `out` (or discards it when `out` is None).
fn absorb(
    conn: &mut ServerConn,
    scanner: &mut Scanner,
    tracker: &mut Tracker,
    client_params: &mut SessionParams,
    failure: &mut Option<String>,
    mut out: Option<&mut BytesMut>,
) -> Result<(), ProtocolError> {
    loop {
        let ServerConn {
            buf,
            params,
            prepared,
            params_synced,
            ..
        } = &mut *conn;
        let scanned = scanner.scan(buf, |ev| match ev {
            Event::ReadyForQuery(status) => {
                tracker.ready_for_query(status, |id| prepared.forget(id));
                Action::Forward
            }
            Event::CopyIn => {
                tracker.copy_in();
                Action::Forward
            }
            Event::ParameterStatus { name, value } => {
                let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                let value = String::from_utf8_lossy(value).into_owned();
                if TRACKED.contains(&name.as_str()) {
                    client_params.set(&name, &value);
                }
                // The server changed under us: compare in full at the next checkout.
                *params_synced = None;
                params.insert(name, value);
                Action::Forward
            }
            Event::Error { message, .. } => {
                if failure.is_none() {
                    *failure = Some(String::from_utf8_lossy(message).into_owned());
                }
                Action::Forward
            }
            Event::ParseComplete => {
                let (statement, reply) = tracker.parse_complete();
                if let Some(id) = statement {
                    prepared.confirm(id);
                }
                reply_action(reply)
            }
            Event::CloseComplete => reply_action(tracker.close_complete()),
            Event::CommandComplete(tag) => {
                if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
                    prepared.clear();
                }
                Action::Forward
            }
        })?;
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(&buf[..scanned.forward]);
        }
        buf.advance(scanned.forward);
        match scanned.edit {
            None => return Ok(()),
            Some((len, action)) => {
                if let (Action::Replace(bytes), Some(out)) = (action, out.as_deref_mut()) {
                    out.extend_from_slice(bytes);
                }
                buf.advance(len);
            }
        }
    }
}

fn reply_action(reply: Reply) -> Action {
    match reply {
        Reply::Forward => Action::Forward,
        Reply::Drop => Action::Drop,
        Reply::AsParseComplete => Action::Replace(backend::PARSE_COMPLETE),
    }
}

/// Sends a Parse of the pooler's statement, closing the least recently used one first when
/// the server's cache is full.
fn prepare_on_server(link: &mut Link, stmt: &Statement, capacity: usize, reply: Reply) {
    if let Some(victim) = link.conn.prepared.insert(stmt.id, capacity) {
        let name = format!("pgsluice_{victim}");
        frontend::encode_target(&mut link.to_server, b'C', b'S', name.as_bytes());
        link.tracker.close_sent(Reply::Drop);
    }
    frontend::encode_parse(&mut link.to_server, &stmt.name, &stmt.definition);
    link.tracker.parse_sent(Some(stmt.id), reply);
}

/// Before a Bind or Describe of a statement: prepare it on this server if it is not there.
fn ensure_prepared(link: &mut Link, stmt: &Statement, capacity: usize) {
    if !link.conn.prepared.touch(stmt.id) {
        prepare_on_server(link, stmt, capacity, Reply::Drop);
    }
}

/// Reads and discards server replies until nothing is owed. False if the deadline passed or
/// the server broke; then the connection must not be reused.
async fn drain(
    link: &mut Link,
    deadline: Instant,
    client_params: &mut SessionParams,
    failure: &mut Option<String>,
) -> bool {
    let work = async {
        if !link.to_server.is_empty() {
            link.conn.stream.write_all(&link.to_server).await.ok()?;
            link.to_server.clear();
        }
        while link.tracker.busy() {
            link.conn.buf.reserve(READ_CHUNK);
            if link.conn.stream.read_buf(&mut link.conn.buf).await.ok()? == 0 {
                return None;
            }
            let Link {
                conn,
                scanner,
                tracker,
                ..
            } = &mut *link;
            absorb(conn, scanner, tracker, client_params, failure, None).ok()?;
        }
        Some(())
    };
    matches!(
        tokio::time::timeout_at(deadline.into(), work).await,
        Ok(Some(()))
    ) && link.conn.buf.is_empty()
}

/// Cancels what runs, ends a COPY or open batch, rolls back, runs the reset query. True when
/// the server ends up idle and may be pooled again.
async fn cleanup(link: &mut Link, reset: Option<&str>, client_params: &mut SessionParams) -> bool {
    let deadline = Instant::now() + CLEANUP_DEADLINE;
    let mut ignored = None;
    if link.tracker.busy() {
        let key = link.conn.cancel_key.clone();
        if tokio::time::timeout_at(deadline.into(), crate::server::cancel(&key))
            .await
            .is_err()
        {
            return false;
        }
    }
    if link.tracker.in_copy_in() {
        frontend::encode_copy_fail(&mut link.to_server, "client disconnected");
        link.tracker.sent(b'f');
    }
    if link.tracker.unsynced() {
        frontend::encode_sync(&mut link.to_server);
        link.tracker.sent(b'S');
    }
    if !drain(link, deadline, client_params, &mut ignored).await {
        return false;
    }
    if link.tracker.status != TxStatus::Idle {
        frontend::encode_query(&mut link.to_server, "ROLLBACK");
        link.tracker.sent(b'Q');
        if !drain(link, deadline, client_params, &mut ignored).await {
            return false;
        }
    }
    if let Some(sql) = reset {
        frontend::encode_query(&mut link.to_server, sql);
        link.tracker.sent(b'Q');
        if !drain(link, deadline, client_params, &mut ignored).await {
            return false;
        }
    }
    link.tracker.idle()
}

/// A string literal safe under any standard_conforming_strings setting.
fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}
