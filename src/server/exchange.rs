//! A checked-out server with what it still owes: the scanner of its replies, the tracker of
//! what is pending, and the bytes waiting to go to it. Its replies are taken in here
//! (`absorb`), whoever reads them: the forwarding pump, parameter sync, or clean-up.

use super::tracker::{Reply, Tracker};
use super::ServerConn;
use crate::protocol::backend::{self, Action, Event, Scanner, TxStatus};
use crate::protocol::frontend;
use crate::protocol::ProtocolError;
use bytes::{Buf, BytesMut};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Read granularity: big enough that a typical transaction is one read.
pub const READ_CHUNK: usize = 16 * 1024;

pub struct Exchange {
    pub conn: Box<ServerConn>,
    pub scanner: Scanner,
    pub tracker: Tracker,
    pub to_server: BytesMut,
}

/// What the reader of a server's replies wants to hear of, besides what the exchange keeps
/// itself (pending replies, the server's parameters, its prepared statements).
pub trait Replies {
    /// The server reported a parameter (lowercase name).
    fn parameter(&mut self, _name: &str, _value: &str) {}
    /// An ErrorResponse: whether the client sees it, or something else in its place.
    fn error(&mut self, _code: &[u8], _message: &[u8]) -> Action {
        Action::Forward
    }
    /// The first column of a row answering the pooler's own query (`Tracker::own_sent`), and
    /// the status its ReadyForQuery ended with.
    fn own_value(&mut self, _value: Option<&[u8]>) {}
    fn own_answered(&mut self, _status: TxStatus) {}
    /// The pooler's own Describe of statement `statement` was answered: a hash of the result
    /// description (`Tracker::own_describe_sent`).
    fn described(&mut self, _statement: u64, _shape: u64) {}
}

/// Hears of nothing.
pub struct Ignore;

impl Replies for Ignore {}

impl Exchange {
    pub fn new(conn: Box<ServerConn>, tracker: Tracker, to_server: BytesMut) -> Exchange {
        Exchange {
            conn,
            scanner: Scanner::default(),
            tracker,
            to_server,
        }
    }

    /// Nothing waits to be written to the server or to be read from it.
    pub fn settled(&self) -> bool {
        self.to_server.is_empty() && self.conn.buf.is_empty()
    }

    /// Takes in what the server sent: updates the tracker, parameters and prepared
    /// statements, and moves what the client should see to `out` (or discards it when `out`
    /// is None).
    pub fn absorb(
        &mut self,
        mut out: Option<&mut BytesMut>,
        replies: &mut impl Replies,
    ) -> Result<(), ProtocolError> {
        let Exchange {
            conn,
            scanner,
            tracker,
            ..
        } = self;
        loop {
            let ServerConn {
                buf,
                params,
                prepared,
                session,
                ending,
                ..
            } = &mut **conn;
            // The reply to the pooler's own query is next: every message of it is seen, and
            // none reaches the client.
            let own = tracker.owns_next();
            scanner.inspect_all = own || tracker.describes_next();
            let scanned = scanner.scan(buf, |ev| {
                // The reply to the pooler's own Describe: its description is heard, and
                // dropped; other messages in between (a notification) go as they are.
                if !own && tracker.describes_next() {
                    match ev {
                        Event::Other { tag: b't', .. } => return Action::Drop,
                        Event::Other {
                            tag: tag @ (b'T' | b'n'),
                            body,
                        } => {
                            if let Some(id) = tracker.described() {
                                replies.described(id, shape_of(tag, body));
                            }
                            return Action::Drop;
                        }
                        Event::Error { .. } => {
                            // Not after a Parse that succeeded; the batch is skipped anyway.
                            tracker.described();
                            return Action::Drop;
                        }
                        _ => {}
                    }
                }
                match ev {
                    Event::ReadyForQuery(status) if own => {
                        tracker.ready_for_query(status, |id| prepared.forget(id));
                        replies.own_answered(status);
                        Action::Drop
                    }
                    Event::Other { tag: b'D', body } if own => {
                        replies.own_value(first_column(body));
                        Action::Drop
                    }
                    _ if own => Action::Drop,
                    Event::ReadyForQuery(status) => {
                        tracker.ready_for_query(status, |id| prepared.forget(id));
                        if tracker.owns_next() {
                            // Stop here: what follows is the pooler's, scanned another way.
                            return Action::Replace(backend::ready_for_query_bytes(status));
                        }
                        Action::Forward
                    }
                    Event::CopyIn => {
                        tracker.copy_in(|id| prepared.forget(id));
                        Action::Forward
                    }
                    Event::ParameterStatus { name, value } => {
                        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                        let value = String::from_utf8_lossy(value).into_owned();
                        replies.parameter(&name, &value);
                        if settable(&name) {
                            session.set(&name, &value);
                        }
                        params.insert(name, value);
                        Action::Forward
                    }
                    // Between units nothing is owed: an error now is the server's goodbye, for
                    // the connection and not for the client, which never sees it.
                    Event::Error { .. } if !tracker.busy() => {
                        *ending = true;
                        Action::Drop
                    }
                    Event::Error {
                        code,
                        message,
                        routine,
                    } => {
                        if routine == b"RevalidateCachedQuery" {
                            // A statement's result changed under it (ALTER TABLE … ADD COLUMN
                            // with SELECT *): every statement here is prepared afresh when next
                            // used, or the error would repeat for every client sharing it.
                            prepared.doom_all();
                        }
                        tracker.error();
                        replies.error(code, message)
                    }
                    Event::ParseComplete => {
                        let (statement, reply) = tracker.parse_complete();
                        if let Some(id) = statement {
                            prepared.confirm(id);
                        }
                        match reply_action(reply) {
                            // Stop here: the pooler's Describe is next, scanned another way.
                            Action::Forward if tracker.describes_next() => {
                                Action::Replace(backend::PARSE_COMPLETE)
                            }
                            action => action,
                        }
                    }
                    Event::CloseComplete => reply_action(tracker.close_complete()),
                    Event::CommandComplete(tag) => {
                        if tag == b"DISCARD ALL" {
                            session.clear();
                        }
                        if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
                            prepared.clear();
                        }
                        Action::Forward
                    }
                    Event::Other { .. } => Action::Forward,
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

    /// Sends what waits for the server, then reads and discards its replies until nothing is
    /// owed. No client is there to finish what it started: a COPY FROM STDIN, known before or
    /// found on the way, is failed, and an open batch is synced. False if the deadline passed
    /// or the server broke; then the connection must not be reused.
    pub async fn drain(&mut self, deadline: Instant, replies: &mut impl Replies) -> bool {
        let work = async {
            loop {
                if self.tracker.in_copy_in() {
                    frontend::encode_copy_fail(&mut self.to_server, "client disconnected");
                    self.tracker.sent(b'f');
                }
                if self.tracker.unsynced() {
                    frontend::encode_sync(&mut self.to_server);
                    self.tracker.sent(b'S');
                }
                if !self.to_server.is_empty() {
                    self.conn.stream.write_all(&self.to_server).await.ok()?;
                    self.to_server.clear();
                }
                if !self.tracker.busy() {
                    break;
                }
                self.conn.buf.reserve(READ_CHUNK);
                if self.conn.stream.read_buf(&mut self.conn.buf).await.ok()? == 0 {
                    return None;
                }
                self.absorb(None, replies).ok()?;
                if self.tracker.out_of_step() {
                    return None;
                }
            }
            Some(())
        };
        matches!(
            tokio::time::timeout_at(deadline.into(), work).await,
            Ok(Some(()))
        ) && self.conn.buf.is_empty()
    }
}

/// What a statement's description says of its result, as a hash: its RowDescription, or
/// NoData.
fn shape_of(tag: u8, body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (tag, body).hash(&mut h);
    h.finish()
}

/// The first column of a DataRow's body; None for NULL or a malformed row.
fn first_column(body: &[u8]) -> Option<&[u8]> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    body.get(6..6 + len)
}

/// A reported parameter a session can change (the others describe the server).
pub fn settable(name: &str) -> bool {
    !matches!(
        name,
        "server_version"
            | "server_encoding"
            | "integer_datetimes"
            | "in_hot_standby"
            | "is_superuser"
    )
}

fn reply_action(reply: Reply) -> Action {
    match reply {
        Reply::Forward => Action::Forward,
        Reply::Drop => Action::Drop,
        Reply::AsParseComplete => Action::Replace(backend::PARSE_COMPLETE),
    }
}
