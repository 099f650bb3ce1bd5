//! A client without a server: wait for its next message, answer what needs no server (a
//! lone Sync or Flush, closing a statement name, the pooler's own `SET/SHOW pgsluice.route`),
//! and say when the next message is work for a server. An idle client keeps no read buffer
//! once many clients are connected.

use super::end::End;
use super::listen::next_note;
use super::session::{Next, Session};
use crate::config::PoolMode;
use crate::protocol::backend::{self, TxStatus};
use crate::protocol::frontend::Message;
use crate::protocol::sqlstate;
use crate::router::command::{self, RouteCommand};
use crate::server::exchange::READ_CHUNK;
use crate::stream::{Plain, Stream};
use bytes::BytesMut;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// With at most this many clients connected, an idle client keeps its buffers and is not
/// parked: memory is plentiful then, and reallocating buffers (or a task) is a cost every
/// query would pay. Beyond it, idle clients give their buffers back, and are parked after a
/// pause (`parked.rs`).
pub(super) const FEW_CLIENTS: usize = 64;

/// What ended an idle client's wait.
enum Woke {
    Data,
    Control,
    Timeout,
    /// A notification for a client that listens.
    Note(crate::pool::listener::Note),
    /// The client closed its connection.
    Gone,
}

impl Session<'_> {
    /// Whether an idle client keeps its buffers for its next transaction (few clients).
    pub(super) fn keeps_buffers(&self) -> bool {
        self.ctx.client_count() <= FEW_CLIENTS
    }

    /// Without a server: handles the client's next message, or waits for one.
    pub(super) async fn idle_step(&mut self) -> Result<Next, End> {
        if self.must_go() {
            return Err(End::Shutdown);
        }
        if !self.to_client.is_empty() {
            self.client
                .write_all(&self.to_client)
                .await
                .map_err(|_| End::ClientGone)?;
            self.to_client.clear();
        }
        self.inbox.scan(self.config.general.max_packet_size);
        let maybe_listen = matches!(self.inbox.front().map(|f| f.tag), Some(b'Q' | b'P'));
        if let Some(unit) = maybe_listen.then(|| self.listen_unit()).flatten() {
            // Boxed: rare, and every idle client would carry its space otherwise.
            Box::pin(self.answer_listen(unit)).await;
            return Ok(Next::Stay);
        }
        let map = self.config.general.max_prepared_statements > 0;
        let lone_prepare = map
            && self.mode == PoolMode::Transaction
            && matches!(self.inbox.front().map(|f| f.msg),
                Some(Message::Parse { name, .. }) if !name.is_empty());
        if lone_prepare && self.answer_prepare() {
            return Ok(Next::Stay);
        }
        let Some(frame) = self.inbox.front() else {
            if let Some(e) = self.inbox.fault() {
                return Err(End::Violation(e));
            }
            if self.reg.slot.take_park() && self.may_rest() {
                return Ok(Next::Park);
            }
            self.read_idle().await?;
            return Ok(Next::Stay);
        };
        // Work: no longer idle, whatever a wake left stamped (`read_idle`).
        self.reg.slot.idle_since.store(0, Ordering::Relaxed);
        match frame.msg {
            Message::Query(sql) => {
                if let Some(cmd) = std::str::from_utf8(sql).ok().and_then(command::parse) {
                    self.inbox.pop();
                    self.route_command(cmd);
                    return Ok(Next::Stay);
                }
            }
            Message::Close { kind: b'S', name } if map && !name.is_empty() => {
                // Only this client's name goes (as inside a transaction): no server needed.
                self.statements.remove(name);
                self.inbox.pop();
                self.to_client.extend_from_slice(backend::CLOSE_COMPLETE);
                return Ok(Next::Stay);
            }
            Message::Terminate => return Err(End::Terminated),
            // Nothing is open: answer a lone Sync ourselves and ignore Flush.
            Message::Sync => {
                self.inbox.pop();
                backend::ready_for_query(&mut self.to_client, TxStatus::Idle);
                return Ok(Next::Stay);
            }
            Message::Flush => {
                self.inbox.pop();
                return Ok(Next::Stay);
            }
            _ => {}
        }
        Ok(Next::Link)
    }

    /// A prepare on its own (named Parses, then Sync: what libpq's `PQprepare` sends) of
    /// statements a server of this client's pool has parsed and described already, is
    /// answered without a server: each server prepares them when the client first uses them.
    /// Asking for a server here would make a client that prepares synchronously while its
    /// own other connections hold every server in a transaction (pgbench `-M prepared` with
    /// more clients than servers) wait on itself. A statement the pooler has not seen parse
    /// in this pool, or that may change the session, still goes to a server, so its error
    /// comes where PostgreSQL gives it.
    fn answer_prepare(&mut self) -> bool {
        let scope = super::rewrite::parsed_scope(self.statements.scope);
        let mut known = Vec::new();
        for msg in self.inbox.messages() {
            match msg {
                Message::Parse {
                    name, definition, ..
                } if !name.is_empty() => match self.ctx.statements.find(definition) {
                    Some(s) if s.valid_in(scope) && s.effects().is_empty() => {
                        known.push((Box::<[u8]>::from(name), s))
                    }
                    _ => return false,
                },
                Message::Sync if !known.is_empty() => break,
                _ => return false,
            }
        }
        if self.inbox.messages().nth(known.len()).is_none() {
            return false; // no Sync yet: the client may send more with these
        }
        for (name, stmt) in known {
            self.statements.insert(&name, stmt);
            self.inbox.pop();
            self.to_client.extend_from_slice(backend::PARSE_COMPLETE);
        }
        self.inbox.pop();
        backend::ready_for_query(&mut self.to_client, TxStatus::Idle);
        true
    }

    /// Answers the pooler's own settings (`pgsluice.route`, `pgsluice.min_lsn`,
    /// `pgsluice.lsn`) without a server.
    fn route_command(&mut self, cmd: Result<RouteCommand, command::BadValue>) {
        let floor = self.floor().to_string();
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
            Ok(RouteCommand::MinLsn(lsn)) => {
                let own = &mut self.floor;
                *own = (*own).max(lsn.unwrap_or_default());
                backend::command_complete(out, "SET");
            }
            Ok(RouteCommand::ShowLsn) => {
                backend::row_description(out, &["pgsluice.lsn"]);
                backend::data_row(out, &[Some(floor.as_str())]);
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

    /// Whether the client may wait parked (`parked.rs`): a plain socket, nothing read or to
    /// write, no notifications to deliver, no server.
    fn may_rest(&self) -> bool {
        self.parkable() && self.inbox.buf.is_empty() && self.to_client.is_empty()
    }

    fn parkable(&self) -> bool {
        self.notes.is_none()
            && self.pinned.is_empty()
            && self.waiting.is_none()
            && self.client.plain().is_some()
    }

    /// Waits for client bytes with no server held. An idle client keeps no read buffer.
    async fn read_idle(&mut self) -> Result<(), End> {
        let Some(socket) = self.client.plain() else {
            // TLS may hold decrypted bytes the socket no longer shows: read through it
            // instead of waiting for the socket. Boxed, so that plain clients do not carry
            // this path's space.
            return Box::pin(self.read_idle_tls()).await;
        };
        let large = self.inbox.buf.capacity() > 4 * READ_CHUNK;
        if self.inbox.buf.is_empty() && (large || !self.keeps_buffers()) {
            self.inbox.release_buffers();
            self.to_client = BytesMut::new();
            self.spare = None;
        }
        // Polled in place, the timer boxed: what a select over futures would keep (a waiter
        // for the socket, one for the wake, a timer) every idle client would carry.
        let idle_since = &mut self.idle_since;
        let mut timer = (self.config.general.client_idle_timeout.enabled()).map(|t| {
            let since = *idle_since.get_or_insert_with(Instant::now);
            Box::pin(tokio::time::sleep_until((since + t).into()))
        });
        // The parking lot parks a client that waits here long enough (`Slot::idle_since`).
        let parkable = self.parkable();
        let (slot, notes) = (&self.reg.slot, &mut self.notes);
        let buf = &mut self.inbox.buf;
        let tick = &self.ctx.tick;
        loop {
            let since = tick.load(Ordering::Relaxed);
            if parkable {
                slot.idle_since.store(since, Ordering::Relaxed);
            }
            let woke = std::future::poll_fn(|cx| {
                // A shutdown or a KILL wakes the client; idle_step then sees whether it must go.
                if slot.wake.poll_woken(cx).is_ready() {
                    return Poll::Ready(Woke::Control);
                }
                if let Some(n) = notes.as_deref_mut() {
                    if let Poll::Ready(Some(note)) = n.poll_note(cx) {
                        return Poll::Ready(Woke::Note(note));
                    }
                }
                if socket.poll_read_ready(cx).is_ready() {
                    return Poll::Ready(Woke::Data);
                }
                match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Woke::Timeout),
                    _ => Poll::Pending,
                }
            })
            .await;
            // Kept for a wake of the slot, which may be the lot asking it to park: the lot
            // takes the stamp with the client (`Lot::park`), to learn its rhythm.
            if parkable && !matches!(woke, Woke::Control) {
                slot.idle_since.store(0, Ordering::Relaxed);
            }
            match woke {
                Woke::Data if parkable => {
                    let gap = tick.load(Ordering::Relaxed).wrapping_sub(since);
                    super::parked::learn(slot, gap);
                }
                Woke::Data => {}
                Woke::Note(n) => {
                    self.idle_since = None;
                    self.to_client.extend_from_slice(&n);
                    return Ok(());
                }
                // idle_step looks at what changed.
                Woke::Control => return Ok(()),
                Woke::Timeout => return Err(End::IdleTimeout),
                Woke::Gone => return Err(End::ClientGone),
            }
            // Readiness may be stale (left from the last read): a read that finds nothing
            // waits again here, where the client may be parked, rather than in a read.
            match read_drained(socket, buf) {
                Ok(0) => return Err(End::ClientGone),
                Ok(_) => {
                    self.idle_since = None;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(End::ClientGone),
            }
        }
    }

    /// `read_idle` for a TLS client: reads through the TLS layer, keeping its buffer.
    async fn read_idle_tls(&mut self) -> Result<(), End> {
        self.inbox.buf.reserve(READ_CHUNK);
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
                r = self.client.read_buf(&mut self.inbox.buf) => match r {
                    Ok(n) if n > 0 => Woke::Data,
                    _ => Woke::Gone,
                },
                _ = control => Woke::Control,
                n = next_note(&mut self.notes) => Woke::Note(n),
                _ = timer => Woke::Timeout,
            }
        };
        match read {
            Woke::Data | Woke::Control => Ok(()),
            Woke::Note(n) => {
                self.to_client.extend_from_slice(&n);
                Ok(())
            }
            Woke::Gone => Err(End::ClientGone),
            Woke::Timeout => Err(End::IdleTimeout),
        }
    }
}

/// Reads what `socket` holds into `buf`, and marks the socket drained when the read came short
/// of the room it had, as tokio's own reads do: the pump then does not try a read that finds
/// nothing (a system call per transaction) once the client's query is on its way. Readiness
/// is cleared only if no new edge came since it was looked at, so no wake-up is lost.
fn read_drained(socket: Plain<'_>, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(READ_CHUNK);
    let room = buf.capacity() - buf.len();
    let mut got = None;
    let drained = socket.try_io(tokio::io::Interest::READABLE, || {
        let n = socket.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < room {
            Err(std::io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match got {
        Some(n) => Ok(n),
        // Not ready, or the read failed (its error is the result).
        None => drained.and(Err(std::io::ErrorKind::WouldBlock.into())),
    }
}

/// Resolves true when the client has closed its connection, false as soon as it has sent more
/// bytes (which stay unread). Polled through the socket's own reader waker, which only the
/// session's task uses while it waits: cheaper than `peek`'s future, which joins a list of
/// waiters under a lock.
pub(super) async fn client_gone(client: &Stream) -> bool {
    let Some(socket) = client.socket() else {
        return true;
    };
    let peeked = std::future::poll_fn(|cx| socket.poll_peek_one(cx)).await;
    !matches!(peeked, Ok(n) if n > 0)
}
