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
use super::{Context, Phase};
use crate::cluster::InFlight;
use crate::config::{Config, PoolMode};
use crate::metrics::PoolMetrics;
use crate::metrics::RouteReason;
use crate::pool::{ClientState, Members, PoolError};
use crate::protocol::backend::{self, Action, Event, Scanner, TxStatus};
use crate::protocol::{frontend, sqlstate, ProtocolError};
use crate::router::classify::{self, Class, Hint, WriteReason};
use crate::router::command::{self, RouteCommand};
use crate::router::policy::{self, RouteMode, Work};
use crate::server::tracker::{Reply, Tracker};
use crate::server::ServerConn;
use crate::stream::Stream;
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Stop reading from one side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// How much of a retryable read's answer may be held back before it goes to the client
/// (and can no longer be retried).
const HOLD_LIMIT: usize = 32 * 1024;
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
    /// The node the server belongs to.
    node: usize,
    /// Counts the link as in flight at its node while it lives (least_outstanding).
    _at: Option<InFlight>,
    /// Take the client's work one unit (a Query, or messages up to Sync) at a time, so that
    /// each implicit transaction is routed on its own.
    one_unit: bool,
    /// While the work may still be retried elsewhere: where this link's output to the
    /// client starts. Nothing goes to the client meanwhile.
    hold: Option<usize>,
    /// The client's messages sent while `hold` is set, to send again elsewhere.
    replay: BytesMut,
    /// Set when the server failed in a way that allows a retry: whether to ban the node.
    retry: Option<Retry>,
    /// When the unit of work now running, and the transaction it belongs to, started.
    unit_start: Option<Instant>,
    xact_start: Option<Instant>,
}

/// Why work is sent again elsewhere.
#[derive(Debug, Clone, Copy)]
struct Retry {
    ban: bool,
    why: &'static str,
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
    /// The process is shutting down: between transactions, or at once.
    Shutdown,
    /// The node failed before any of the answer reached the client: run the work elsewhere.
    Retry(Retry),
}

struct Session<'a> {
    /// The configuration as of this client's current transaction: taken afresh at each
    /// one, so a reload reaches connected clients too.
    config: Arc<Config>,
    ctx: &'a Context,
    members: Arc<Members>,
    mode: PoolMode,
    /// `SET pgsluice.route` or the startup option.
    route: RouteMode,
    /// The node the current work just failed on, and how many times it has been retried.
    avoid: Option<usize>,
    retries: usize,
    client: &'a mut Stream,
    cbuf: BytesMut,
    to_client: BytesMut,
    params: SessionParams,
    reg: &'a Registration<'a>,
    registry: &'a Registry,
    statements: ClientStatements,
    /// Clients connected to this process, to decide whether idle buffers are kept.
    clients: &'a std::sync::atomic::AtomicUsize,
    /// The tracker, server-bound buffer and replay buffer of the last link, kept for the
    /// next one.
    spare: (Tracker, BytesMut, BytesMut),
}

/// A name no statement of ours ever has: closing it is a no-op the server still answers.
const NO_STATEMENT: &[u8] = b"pgsluice_none";

pub async fn run(
    ctx: &Context,
    config: Arc<Config>,
    login: LoggedIn,
    client: &mut Stream,
    reg: &Registration<'_>,
) -> &'static str {
    let (registry, clients) = (&ctx.statements, &ctx.clients);
    let mode = login.members.primary().setup().settings.pool_mode;
    let _connected = login.members.enter(ClientState::Connected);
    let mut s = Session {
        config,
        ctx,
        members: login.members,
        mode,
        route: login.route,
        avoid: None,
        retries: 0,
        client,
        cbuf: login.buf,
        to_client: BytesMut::new(),
        params: SessionParams::new(login.params),
        reg,
        registry,
        statements: ClientStatements::default(),
        clients,
        spare: (Tracker::default(), BytesMut::new(), BytesMut::new()),
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
                        Ok(Some(link)) => State::Linked(link),
                        Ok(None) => State::Idle,
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
                                node,
                                mut replay,
                                ..
                            } = *link;
                            self.members.pools[node].release(conn, true);
                            tracker.reset();
                            replay.clear();
                            self.spare = (tracker, to_server, replay);
                            self.avoid = None;
                            self.retries = 0;
                            State::Idle
                        }
                        Unlink::Retry(retry) => {
                            self.retry_elsewhere(*link, retry);
                            State::Idle
                        }
                        Unlink::ServerGone => {
                            let node = link.node;
                            self.members.pools[node].release(link.conn, false);
                            self.ban(node, "server connection lost");
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
                        Unlink::Shutdown => {
                            return self.shut(Some(link)).await;
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

    /// The process is shutting down, or an admin asked this client to go.
    fn must_go(&self) -> bool {
        self.ctx.phase() != Phase::Running
            || self
                .reg
                .slot
                .killed
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes the client because the process is shutting down, as PostgreSQL does (57P01);
    /// a server it held is made safe first.
    async fn shut(&mut self, link: Option<Box<Link>>) -> &'static str {
        self.fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
        .await;
        if let Some(link) = link {
            Box::pin(self.finish(link)).await;
        }
        "shutting down"
    }

    async fn fatal(&mut self, code: &str, message: &str) {
        backend::error_response(&mut self.to_client, "FATAL", code, message);
        let _ = self.client.write_all(&self.to_client).await;
        self.to_client.clear();
        let _ = self.client.shutdown().await;
    }

    /// Without a server: wait for the client's next message. True when it needs a server.
    async fn idle_step(&mut self) -> Result<bool, &'static str> {
        if self.must_go() {
            return Err(self.shut(None).await);
        }
        if !self.to_client.is_empty() {
            self.client
                .write_all(&self.to_client)
                .await
                .map_err(|_| "client disconnected")?;
            self.to_client.clear();
        }
        let header = match frontend::header(&self.cbuf, self.config.general.max_packet_size) {
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
        if let frontend::Message::Query(sql) = msg {
            if let Some(cmd) = std::str::from_utf8(sql).ok().and_then(command::parse) {
                self.cbuf.advance(h.len);
                self.route_command(cmd);
                return Ok(false);
            }
        }
        if let frontend::Message::Close { kind: b'S', name } = msg {
            if self.config.general.max_prepared_statements > 0 && !name.is_empty() {
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

    /// Answers `SET`/`SHOW pgsluice.route` without a server.
    fn route_command(&mut self, cmd: Result<RouteCommand, command::BadValue>) {
        let out = &mut self.to_client;
        match cmd {
            Ok(RouteCommand::Set(mode)) => {
                self.route = mode;
                backend::command_complete(out, "SET");
            }
            Ok(RouteCommand::Show) => {
                backend::row_description(out, &["pgsluice.route"]);
                backend::data_row(out, &[Some(self.route.name())]);
                backend::command_complete(out, "SHOW");
            }
            Err(e) => backend::error_response(
                out,
                "ERROR",
                sqlstate::INVALID_PARAMETER_VALUE,
                &e.to_string(),
            ),
        }
        backend::ready_for_query(out, TxStatus::Idle);
    }

    /// What the client's next unit of work is: the statements of its Query, or of its
    /// extended-protocol messages up to Sync, as far as they have arrived.
    fn work(&self) -> Work {
        let wf = &self.config.general.write_functions;
        let mut work: Option<Work> = None;
        let mut add = |class: Class, hint: Option<Hint>| {
            work = Some(match work {
                None => Work {
                    class,
                    hint,
                    complete: false,
                },
                Some(w) => w.and(class, hint),
            });
        };
        let unknown = Class::Write(WriteReason::Statement);
        let mut at = 0;
        let mut complete = false;
        // Statements parsed earlier in this unit: already classified at their Parse.
        let mut parsed: Vec<&[u8]> = Vec::new();
        while let Ok(Some(h)) =
            frontend::header(&self.cbuf[at..], self.config.general.max_packet_size)
        {
            let Some(frame) = self.cbuf.get(at..at + h.len) else {
                break;
            };
            at += h.len;
            let Ok(msg) = frontend::parse(h.tag, &frame[5..]) else {
                break;
            };
            let statement = |name: &[u8]| match self.statements.get(name) {
                Some(stmt) => stmt.class(wf),
                None => (unknown, None),
            };
            match msg {
                frontend::Message::Query(sql) => {
                    add_text(&mut add, sql, wf);
                    complete = true;
                    break;
                }
                frontend::Message::Parse { name, query, .. } => {
                    add_text(&mut add, query, wf);
                    parsed.push(name);
                }
                frontend::Message::Bind {
                    statement: name, ..
                }
                | frontend::Message::Describe { kind: b'S', name } => {
                    // The unnamed statement only lives within a unit: it was classified at
                    // its Parse.
                    if !name.is_empty() && !parsed.contains(&name) {
                        let (class, hint) = statement(name);
                        add(class, hint);
                    }
                }
                frontend::Message::Sync => {
                    complete = true;
                    break;
                }
                frontend::Message::Describe { .. }
                | frontend::Message::Execute { .. }
                | frontend::Message::Close { .. }
                | frontend::Message::Flush => {}
                _ => {
                    add(unknown, None);
                    break;
                }
            }
        }
        let mut work = work.unwrap_or(Work {
            class: unknown,
            hint: None,
            complete: false,
        });
        work.complete = complete;
        work
    }

    /// Decides where the client's next work runs, checks out a server there and brings its
    /// session parameters in line with this client's. A replica that cannot be reached is
    /// banned and the work placed again.
    async fn link(&mut self) -> Result<Option<Box<Link>>, &'static str> {
        if !Arc::ptr_eq(&self.ctx.config.load(), &self.config) {
            self.config = self.ctx.config.load_full();
        }
        let cluster = &self.members.cluster;
        self.reg.slot.last_request.store(
            super::cancel::unix_micros(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if cluster.is_paused() {
            // PAUSE: the client waits, in line, until RESUME; leaving meanwhile is fine.
            let _paused = self.members.enter(ClientState::Paused);
            tokio::select! {
                _ = cluster.wait_resumed() => {}
                gone = client_gone(self.client) => {
                    if gone {
                        return Err("client disconnected while paused");
                    }
                    cluster.wait_resumed().await;
                }
            }
        }
        let (decision, checkout) = loop {
            let session = policy::Session {
                pool_mode: self.mode,
                route: self.route,
                avoid: self.avoid,
            };
            let decision = if cluster.has_replicas() || self.route != RouteMode::Auto {
                policy::decide(cluster, &self.work(), &session)
            } else {
                // Nothing to choose from: skip looking at the query at all.
                Ok(policy::Decision {
                    node: 0,
                    reason: RouteReason::Write,
                    retryable: false,
                })
            };
            let mut decision = match decision {
                Ok(d) => d,
                Err(e) => {
                    self.reject_unit(sqlstate::CONNECTION_FAILURE, &e.to_string());
                    return Ok(None);
                }
            };
            // Each node at most once per unit of work.
            decision.retryable &= self.retries < cluster.nodes.len();
            match self.checkout(decision.node).await? {
                Ok(c) => break (decision, c),
                Err(e) if decision.node != 0 && self.retries < cluster.nodes.len() => {
                    tracing::warn!(db = %cluster.database, node = %cluster.nodes[decision.node].addr, error = %e, "replica unavailable, placing the work again");
                    if matches!(e, PoolError::Connect(_)) {
                        self.ban(decision.node, "connection failed");
                    }
                    self.avoid = Some(decision.node);
                    self.retries += 1;
                    cluster.routes.bump(RouteReason::Retry);
                }
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
            }
        };
        let node = decision.node;
        let mut link = Box::new(Link {
            unit_start: None,
            xact_start: None,
            conn: checkout.conn,
            scanner: Scanner::default(),
            tracker: std::mem::take(&mut self.spare.0),
            to_server: std::mem::take(&mut self.spare.1),
            // Links in flight matter only where there is a choice of node.
            _at: cluster.has_replicas().then(|| cluster.link(node)),
            node,
            one_unit: node != 0 || decision.retryable,
            hold: decision.retryable.then_some(self.to_client.len()),
            replay: std::mem::take(&mut self.spare.2),
            retry: None,
        });
        self.reg.slot.set(Some(link.conn.cancel_key.clone()));
        if let Err(message) = self.apply_params(&mut link).await {
            self.reg.slot.set(None);
            let reusable = link.tracker.idle();
            self.members.pools[node].release(link.conn, reusable);
            self.fatal(sqlstate::PROTOCOL_VIOLATION, &message).await;
            return Err("invalid session parameter");
        }
        Ok(Some(link))
    }

    /// Waits for a server of `node`'s pool; a client that leaves meanwhile gives up its place.
    async fn checkout(
        &self,
        node: usize,
    ) -> Result<Result<crate::pool::Checkout, PoolError>, &'static str> {
        let pool = &self.members.pools[node];
        let waiting = pool.checkout();
        tokio::pin!(waiting);
        Ok(tokio::select! {
            // Checkout first: when a server is free there is no need to look at the client.
            biased;
            r = &mut waiting => r,
            gone = client_gone(self.client) => {
                if gone {
                    return Err("client disconnected while waiting");
                }
                waiting.await
            }
        })
    }

    /// Answers the client's next unit of work with an error instead of running it.
    fn reject_unit(&mut self, code: &str, message: &str) {
        while let Ok(Some(h)) = frontend::header(&self.cbuf, self.config.general.max_packet_size) {
            if self.cbuf.len() < h.len {
                break;
            }
            self.cbuf.advance(h.len);
            if matches!(h.tag, b'Q' | b'S') {
                break;
            }
        }
        backend::error_response(&mut self.to_client, "ERROR", code, message);
        backend::ready_for_query(&mut self.to_client, TxStatus::Idle);
    }

    /// Keeps reads away from a node that failed, and closes this pool's idle connections
    /// to it (the health checker does the same for other users' pools).
    fn ban(&self, node: usize, why: &str) {
        let cluster = &self.members.cluster;
        if node != 0 && cluster.ban(node, self.config.general.ban_time.0, why) {
            self.members.pools[node].drain_idle("node banned");
        }
    }

    /// The node failed before any of its answer reached the client: forget what it sent,
    /// put the client's messages back, and let the next link place them elsewhere.
    fn retry_elsewhere(&mut self, link: Link, retry: Retry) {
        let node = link.node;
        tracing::info!(db = %self.members.cluster.database, node = %self.members.cluster.nodes[node].addr, reason = retry.why, "retrying a read on another node");
        self.members.pools[node].release(link.conn, false);
        if retry.ban {
            self.ban(node, retry.why);
        }
        if let Some(mark) = link.hold {
            self.to_client.truncate(mark);
            let mut replay = link.replay;
            replay.extend_from_slice(&self.cbuf);
            self.cbuf = replay;
        }
        self.avoid = Some(node);
        self.retries += 1;
        self.members.cluster.routes.bump(RouteReason::Retry);
    }

    /// Waits for client bytes with no server held. An idle client keeps no read buffer.
    async fn read_idle(&mut self) -> Result<(), &'static str> {
        let Some(tcp) = self.client.tcp().filter(|_| !self.client.is_tls()) else {
            // TLS may hold decrypted bytes the socket no longer shows: read through it
            // instead of waiting for the socket. Boxed, so that plain clients do not carry
            // this path's space.
            return Box::pin(self.read_idle_tls()).await;
        };
        let many = self.clients.load(std::sync::atomic::Ordering::Relaxed) > KEEP_BUFFERS_UP_TO;
        if self.cbuf.is_empty() && (many || self.cbuf.capacity() > 4 * READ_CHUNK) {
            self.cbuf = BytesMut::new();
            self.to_client = BytesMut::new();
            self.spare = (Tracker::default(), BytesMut::new(), BytesMut::new());
        }
        let timeout = self.config.general.client_idle_timeout.enabled();
        let woke = {
            // A shutdown or a KILL wakes the client; idle_step then sees whether it must go.
            let control = self.reg.slot.wake.notified();
            let ready = tcp.readable();
            match timeout {
                // Boxed: a timer is large, and every idle client would carry its space
                // otherwise.
                Some(t) => tokio::select! {
                    _ = ready => Woke::Data,
                    _ = control => Woke::Control,
                    _ = Box::pin(tokio::time::sleep(t)) => Woke::Timeout,
                },
                None => tokio::select! {
                    _ = ready => Woke::Data,
                    _ = control => Woke::Control,
                },
            }
        };
        match woke {
            Woke::Data => {}
            // idle_step looks at what changed.
            Woke::Control => return Ok(()),
            Woke::Timeout => return self.idle_timeout().await,
        }
        self.cbuf.reserve(READ_CHUNK);
        match self.client.read_buf(&mut self.cbuf).await {
            Ok(n) if n > 0 => Ok(()),
            _ => Err("client disconnected"),
        }
    }

    /// `read_idle` for a TLS client: reads through the TLS layer, keeping its buffer.
    async fn read_idle_tls(&mut self) -> Result<(), &'static str> {
        self.cbuf.reserve(READ_CHUNK);
        let timeout = self.config.general.client_idle_timeout.enabled();
        let read = {
            let control = self.reg.slot.wake.notified();
            let timer = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.client.read_buf(&mut self.cbuf) => Ok(r),
                _ = control => Err(Woke::Control),
                _ = timer => Err(Woke::Timeout),
            }
        };
        match read {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(_) => Err("client disconnected"),
            Err(Woke::Timeout) => self.idle_timeout().await,
            Err(_) => Ok(()),
        }
    }

    async fn idle_timeout(&mut self) -> Result<(), &'static str> {
        self.fatal(sqlstate::PROTOCOL_VIOLATION, "client_idle_timeout")
            .await;
        Err("client_idle_timeout")
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
            let deadline = Instant::now() + self.config.general.server_connect_timeout.0;
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
        let map = self.config.general.max_prepared_statements > 0;
        loop {
            let Some(h) = frontend::header(&self.cbuf, self.config.general.max_packet_size)? else {
                return Ok(false);
            };
            if self.cbuf.len() < h.len {
                return Ok(false);
            }
            // Borrowed, not split off: splitting would turn the buffer into a shared one,
            // an allocation per transaction.
            let frame = &self.cbuf[..h.len];
            let msg = frontend::parse(h.tag, &frame[5..])?;
            if link.hold.is_some() {
                link.replay.extend_from_slice(frame);
            }
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
                        self.members.pools[link.node].metrics.prepared_hits.inc();
                        // Already prepared there: a no-op Close yields the reply the client
                        // expects, in its place among the other replies.
                        frontend::encode_target(out, b'C', b'S', NO_STATEMENT);
                        link.tracker.close_sent(Reply::AsParseComplete);
                    } else {
                        prepare_on_server(
                            link,
                            &self.members.pools[link.node].metrics,
                            &stmt,
                            self.config.general.max_prepared_statements,
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
                            ensure_prepared(
                                link,
                                &self.members.pools[link.node].metrics,
                                stmt,
                                self.config.general.max_prepared_statements,
                            );
                            frontend::encode_bind(&mut link.to_server, portal, &stmt.name, params);
                        }
                        // Unknown to us: the server answers with PostgreSQL's own error.
                        None => out.extend_from_slice(frame),
                    }
                }
                frontend::Message::Describe { kind: b'S', name } if map && !name.is_empty() => {
                    match self.statements.get(name) {
                        Some(stmt) => {
                            ensure_prepared(
                                link,
                                &self.members.pools[link.node].metrics,
                                stmt,
                                self.config.general.max_prepared_statements,
                            );
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
            if matches!(h.tag, b'Q' | b'E') {
                self.members.pools[link.node].metrics.queries.inc();
            }
            if link.one_unit && matches!(h.tag, b'Q' | b'S') {
                return Ok(false);
            }
        }
    }

    /// Forwards both ways until the link must end.
    async fn pump(&mut self, link: &mut Link) -> Unlink {
        let mut terminating = false;
        let mut forwarded = false;
        let idle_tx = self.config.general.idle_transaction_timeout.enabled();
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
            // One unit at a time: the next is taken once this one is answered.
            let unit_pending = link.one_unit && link.tracker.busy();
            if !terminating && !unit_pending {
                let before = link.to_server.len();
                let was_busy = link.tracker.busy();
                let unread = self.cbuf.len();
                match self.take_client_frames(link) {
                    Ok(t) => terminating = t,
                    Err(e) => return Unlink::Violation(e),
                }
                let taken = unread.saturating_sub(self.cbuf.len());
                if taken > 0 {
                    let metrics = &self.members.pools[link.node].metrics;
                    metrics.bytes_received.inc_by(taken as u64);
                }
                forwarded |= link.to_server.len() > before;
                if !was_busy && link.tracker.busy() {
                    let now = Instant::now();
                    link.unit_start = Some(now);
                    link.xact_start.get_or_insert(now);
                }
            }
            let settled = link.to_server.is_empty() && link.conn.buf.is_empty();
            if settled && terminating && !link.tracker.busy() {
                let _ = self.client.write_all(&self.to_client).await;
                self.to_client.clear();
                return Unlink::Terminate;
            }
            let phase = self.ctx.phase();
            let between = link.tracker.idle() && settled && !terminating;
            let killed = self
                .reg
                .slot
                .killed
                .load(std::sync::atomic::Ordering::Relaxed);
            if killed || phase == Phase::Closing || (phase == Phase::Draining && between) {
                return Unlink::Shutdown;
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
                hold,
                replay,
                retry,
                unit_start,
                xact_start,
                node,
                ..
            } = link;
            let pool = &self.members.pools[*node];
            let lost = |hold: &Option<usize>| match hold {
                Some(_) => Unlink::Retry(Retry {
                    ban: true,
                    why: "server connection lost",
                }),
                None => Unlink::ServerGone,
            };
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
                    _ => return lost(hold),
                },
                // Held back while the work may still be retried elsewhere.
                r = cli_w.write(&self.to_client), if !self.to_client.is_empty() && hold.is_none() => match r {
                    Ok(n) if n > 0 => self.to_client.advance(n),
                    _ => return Unlink::ClientGone,
                },
                r = srv_r.read_buf(&mut conn.buf), if self.to_client.len() < HIGH_WATER => match r {
                    Ok(n) if n > 0 => {
                        pool.metrics.bytes_sent.inc_by(n as u64);
                        let watch = hold.is_some().then_some(&mut *retry);
                        if absorb(conn, scanner, tracker, &mut self.params, &mut None, Some(&mut self.to_client), watch).is_err() {
                            return lost(hold);
                        }
                        if let Some(r) = retry.take() {
                            return Unlink::Retry(r);
                        }
                        if !tracker.busy() {
                            if let Some(start) = unit_start.take() {
                                let now = Instant::now();
                                pool.metrics.query.observe((now - start).as_secs_f64());
                                if tracker.status == TxStatus::Idle {
                                    let began = xact_start.take().unwrap_or(start);
                                    pool.metrics.transaction.observe((now - began).as_secs_f64());
                                    pool.metrics.transactions.inc();
                                }
                            }
                        }
                        if let Some(mark) = *hold {
                            // Answered, or answering at length: it reaches the client now.
                            if !tracker.busy() || self.to_client.len() - mark > HOLD_LIMIT {
                                *hold = None;
                                replay.clear();
                            }
                        }
                    }
                    _ => return lost(hold),
                },
                r = cli_r.read_buf(&mut self.cbuf), if !terminating && to_server.len() < HIGH_WATER => match r {
                    Ok(n) if n > 0 => {}
                    _ => return Unlink::ClientGone,
                },
                _ = sleep_or_never(waiting_in_tx) => return Unlink::IdleTransactionTimeout,
                // Woken to look at the phase again at the top of the loop.
                _ = self.reg.slot.wake.notified() => {}
            }
        }
    }

    /// After the client has gone: make the server safe for someone else, or close it.
    async fn finish(&mut self, mut link: Box<Link>) {
        let reset = match self.mode {
            PoolMode::Session => {
                Some(self.config.general.server_reset_query.as_str()).filter(|q| !q.is_empty())
            }
            PoolMode::Transaction => None,
        };
        let reusable = cleanup(&mut link, reset, &mut self.params).await;
        self.members.pools[link.node].release(link.conn, reusable);
    }
}

/// Resolves true when the client has closed its connection, false as soon as it has sent more
/// bytes (which stay unread).
async fn client_gone(client: &Stream) -> bool {
    let mut probe = [0u8; 1];
    match client.tcp() {
        Some(tcp) => !matches!(tcp.peek(&mut probe).await, Ok(n) if n > 0),
        None => true,
    }
}

/// What ended an idle client's wait.
enum Woke {
    Data,
    Control,
    Timeout,
}

fn add_text(add: &mut impl FnMut(Class, Option<Hint>), sql: &[u8], write_functions: &[String]) {
    // Keywords are ASCII: text in another encoding classifies the same after a lossy decode.
    let (class, hint) = classify::analyze(&String::from_utf8_lossy(sql), write_functions);
    add(class, hint);
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
    mut retry: Option<&mut Option<Retry>>,
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
            Event::Error { code, message } => {
                if let Some(r) = retry.as_deref_mut() {
                    if let Some(why) = retryable_error(code) {
                        // Not the client's to see: the work runs again elsewhere.
                        r.get_or_insert(why);
                        return Action::Drop;
                    }
                }
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

/// Errors a read may be retried after, and whether its node is then banned.
fn retryable_error(code: &[u8]) -> Option<Retry> {
    let code = std::str::from_utf8(code).ok()?;
    match code {
        sqlstate::ADMIN_SHUTDOWN | sqlstate::CRASH_SHUTDOWN | sqlstate::CANNOT_CONNECT_NOW => {
            Some(Retry {
                ban: true,
                why: "server shutting down",
            })
        }
        // A replica cancels queries that conflict with recovery.
        sqlstate::SERIALIZATION_FAILURE => Some(Retry {
            ban: false,
            why: "conflict with recovery",
        }),
        _ => None,
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
fn prepare_on_server(
    link: &mut Link,
    metrics: &PoolMetrics,
    stmt: &Statement,
    capacity: usize,
    reply: Reply,
) {
    metrics.prepared_misses.inc();
    if let Some(victim) = link.conn.prepared.insert(stmt.id, capacity) {
        metrics.prepared_evictions.inc();
        let name = format!("pgsluice_{victim}");
        frontend::encode_target(&mut link.to_server, b'C', b'S', name.as_bytes());
        link.tracker.close_sent(Reply::Drop);
    }
    frontend::encode_parse(&mut link.to_server, &stmt.name, &stmt.definition);
    link.tracker.parse_sent(Some(stmt.id), reply);
}

/// Before a Bind or Describe of a statement: prepare it on this server if it is not there.
fn ensure_prepared(link: &mut Link, metrics: &PoolMetrics, stmt: &Statement, capacity: usize) {
    if link.conn.prepared.touch(stmt.id) {
        metrics.prepared_hits.inc();
    } else {
        prepare_on_server(link, metrics, stmt, capacity, Reply::Drop);
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
            absorb(conn, scanner, tracker, client_params, failure, None, None).ok()?;
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
