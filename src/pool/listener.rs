//! LISTEN without a server per listener: one connection of the pooler's own to the primary
//! per (database, user) LISTENs on the channels of every client that listens, and hands each
//! notification to the clients listening on its channel.
//!
//! The connection is opened when the first client listens and closed when the last channel
//! goes. If it is lost, it is opened again and LISTENs on every channel again; notifications
//! sent meanwhile are lost (PostgreSQL keeps none for a session that was not listening).

use super::Pool;
use crate::protocol::backend;
use crate::server::ServerConn;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};

/// A NotificationResponse, as the server sent it.
pub type Note = Bytes;

/// Where a client's notifications go, by client.
type Subscribers = BTreeMap<i32, mpsc::UnboundedSender<Note>>;

#[derive(Default)]
struct State {
    channels: BTreeMap<String, Subscribers>,
    /// The channels the connection is known to listen on now.
    confirmed: BTreeSet<String>,
    /// Clients whose LISTEN is answered once the connection listens on the channel.
    waiting: Vec<(String, oneshot::Sender<()>)>,
    /// Whether the task that owns the connection runs.
    running: bool,
}

pub struct Listener {
    state: Mutex<State>,
    /// Wakes the task: the channels changed.
    changed: Notify,
}

/// How long to wait before opening the connection again after it failed.
const RETRY: Duration = Duration::from_secs(1);

impl Listener {
    pub fn new() -> Arc<Listener> {
        Arc::new(Listener {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `client` listens on `channel`; its notifications go to `to`. The pool is where the
    /// connection comes from, if one must be opened. What it returns resolves once the
    /// connection listens on the channel (at once if it does already): only then may the
    /// client's LISTEN be answered, or a NOTIFY right after it could be missed.
    pub fn listen(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        client: i32,
        channel: &str,
        to: &mpsc::UnboundedSender<Note>,
    ) -> Option<oneshot::Receiver<()>> {
        let (start, wait) = {
            let mut s = self.lock();
            s.channels
                .entry(channel.to_owned())
                .or_default()
                .insert(client, to.clone());
            let wait = (!s.confirmed.contains(channel)).then(|| {
                let (tx, rx) = oneshot::channel();
                s.waiting.push((channel.to_owned(), tx));
                rx
            });
            (!std::mem::replace(&mut s.running, true), wait)
        };
        if start {
            tokio::spawn(run(Arc::downgrade(self), Arc::downgrade(pool)));
        } else {
            self.changed.notify_one();
        }
        wait
    }

    /// The connection now listens on exactly `channels`: clients waiting for one of them
    /// get their answer.
    fn confirm(&self, channels: &BTreeSet<String>) {
        let mut s = self.lock();
        s.confirmed = channels.clone();
        let waiting = std::mem::take(&mut s.waiting);
        for (channel, tx) in waiting {
            if channels.contains(&channel) {
                let _ = tx.send(());
            } else {
                s.waiting.push((channel, tx));
            }
        }
    }

    /// `client` stops listening on `channel`, or on every channel with None.
    pub fn unlisten(&self, client: i32, channel: Option<&str>) {
        {
            let mut s = self.lock();
            s.channels.retain(|name, subs| {
                if channel.is_none_or(|c| c == name) {
                    subs.remove(&client);
                }
                !subs.is_empty()
            });
        }
        self.changed.notify_one();
    }

    /// How many channels are listened on now.
    pub fn channels(&self) -> usize {
        self.lock().channels.len()
    }

    fn wanted(&self) -> BTreeSet<String> {
        self.lock().channels.keys().cloned().collect()
    }

    /// Hands a notification to every client listening on its channel.
    fn deliver(&self, channel: &str, note: &Note) {
        let s = self.lock();
        if let Some(subs) = s.channels.get(channel) {
            for to in subs.values() {
                let _ = to.send(note.clone());
            }
        }
    }

    /// The task ends when no channel is left; true if it may, false if one came meanwhile.
    fn may_stop(&self) -> bool {
        let mut s = self.lock();
        if s.channels.is_empty() {
            s.running = false;
            true
        } else {
            false
        }
    }
}

/// The task that owns the listening connection.
async fn run(listener: Weak<Listener>, pool: Weak<Pool>) {
    loop {
        let (Some(l), Some(p)) = (listener.upgrade(), pool.upgrade()) else {
            return;
        };
        if l.may_stop() {
            return;
        }
        let setup = p.setup();
        let (target, timeout) = (setup.target.clone(), setup.timeouts.connect);
        drop((setup, p));
        match ServerConn::connect(&target, timeout).await {
            Ok(conn) => {
                tracing::info!(db = %target.dbname, user = %target.credentials.user, "shared LISTEN connection open");
                match serve(&l, conn).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(db = %target.dbname, error = %e, "shared LISTEN connection lost; notifications until it is back are lost")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(db = %target.dbname, error = %e, "shared LISTEN connection failed")
            }
        }
        drop(l);
        tokio::time::sleep(RETRY).await;
    }
}

/// Keeps the connection's LISTENs in line with the clients' channels and hands out what
/// arrives. Ok when no channel is left (the connection closed); Err when it broke.
async fn serve(l: &Listener, mut conn: Box<ServerConn>) -> std::io::Result<()> {
    l.confirm(&BTreeSet::new());
    let mut has: BTreeSet<String> = BTreeSet::new();
    let mut awaiting = 0usize;
    loop {
        let changed = l.changed.notified();
        if awaiting == 0 {
            let wanted = l.wanted();
            if wanted.is_empty() && l.may_stop() {
                let _ = conn.stream.write_all(b"X\0\0\0\x04").await;
                return Ok(());
            }
            let sql = alignment(&has, &wanted);
            if !sql.is_empty() {
                let mut out = BytesMut::new();
                crate::protocol::frontend::encode_query(&mut out, &sql);
                conn.stream.write_all(&out).await?;
                awaiting += 1;
                has = wanted;
            }
        }
        conn.buf.reserve(8 * 1024);
        tokio::select! {
            r = conn.stream.read_buf(&mut conn.buf) => {
                if r? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            _ = changed => continue,
        }
        while let Some((tag, frame)) = next_frame(&mut conn.buf)? {
            match tag {
                b'A' => {
                    if let Some(channel) = channel_of(&frame) {
                        l.deliver(&channel, &frame);
                    }
                }
                b'Z' => {
                    awaiting = awaiting.saturating_sub(1);
                    if awaiting == 0 {
                        l.confirm(&has);
                    }
                }
                b'E' => {
                    let field = |f| {
                        let v = backend::error_field(&frame[5..], f).unwrap_or(b"");
                        String::from_utf8_lossy(v).into_owned()
                    };
                    tracing::warn!(code = %field(b'C'), message = %field(b'M'), "shared LISTEN statement failed");
                }
                _ => {}
            }
        }
    }
}

/// The LISTEN and UNLISTEN statements that take the connection from `has` to `wants`.
fn alignment(has: &BTreeSet<String>, wants: &BTreeSet<String>) -> String {
    let mut sql = String::new();
    for c in wants.difference(has) {
        sql.push_str(&format!("LISTEN {};", quote_ident(c)));
    }
    for c in has.difference(wants) {
        sql.push_str(&format!("UNLISTEN {};", quote_ident(c)));
    }
    sql
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One whole backend message off the front of `buf`, with its header.
fn next_frame(buf: &mut BytesMut) -> std::io::Result<Option<(u8, Bytes)>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=1 << 20).contains(&len) {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    if buf.len() < len + 1 {
        return Ok(None);
    }
    let tag = buf[0];
    let frame = buf.split_to(len + 1).freeze();
    Ok(Some((tag, frame)))
}

/// The channel of a NotificationResponse: after the header and the process id.
fn channel_of(frame: &[u8]) -> Option<String> {
    let body = frame.get(9..)?;
    let end = body.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&body[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listens_on_what_is_new_and_unlistens_what_is_gone() {
        let has: BTreeSet<String> = ["a", "b"].map(String::from).into();
        let wants: BTreeSet<String> = ["b", "My \"C\""].map(String::from).into();
        assert_eq!(
            alignment(&has, &wants),
            "LISTEN \"My \"\"C\"\"\";UNLISTEN \"a\";"
        );
    }

    #[test]
    fn reads_the_channel_of_a_notification() {
        let mut buf = BytesMut::new();
        let body = [&7i32.to_be_bytes()[..], b"jobs\0", b"payload\0"].concat();
        buf.extend_from_slice(b"A");
        buf.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        buf.extend_from_slice(&body);
        buf.extend_from_slice(b"Z\0\0");
        let (tag, frame) = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!((tag, channel_of(&frame).as_deref()), (b'A', Some("jobs")));
        assert!(next_frame(&mut buf).unwrap().is_none(), "incomplete");
    }
}
