//! LISTEN and UNLISTEN with `listen_mode = "shared"` (transaction mode): outside a transaction
//! block they are answered here and carried by the (database, user)'s shared listening
//! connection (`pool::listener`); its notifications reach the client while it is idle or
//! between its transactions, as PostgreSQL delivers them.

use super::session::Session;
use crate::config::{ListenMode, PoolMode};
use crate::pool::listener::Note;
use crate::protocol::backend::{self, TxStatus};
use crate::protocol::frontend::Message;
use crate::protocol::sqlstate;
use crate::router::command::{self, Listen};
use bytes::BytesMut;
use std::task::Poll;
use tokio::sync::{mpsc, oneshot};

/// A listening client's end of the shared connection.
pub(super) struct Notes {
    rx: mpsc::UnboundedReceiver<Note>,
    tx: mpsc::UnboundedSender<Note>,
}

const BIND_COMPLETE: &[u8] = b"2\0\0\0\x04";
const NO_DATA: &[u8] = b"n\0\0\0\x04";
const NO_PARAMETERS: &[u8] = b"t\0\0\0\x06\0\0";

impl Session<'_> {
    fn shared_listen(&self) -> bool {
        self.mode == PoolMode::Transaction && self.config.general.listen_mode == ListenMode::Shared
    }

    /// The idle client's next unit if it is only LISTEN and UNLISTEN (a Query, or an unnamed
    /// Parse with its Bind, Describe and Execute up to Sync): its commands, and its frames.
    pub(super) fn listen_unit(&self) -> Option<(Vec<Listen>, usize)> {
        if !self.shared_listen() {
            return None;
        }
        let mut frames = self.inbox.messages();
        let (cmds, count) = match frames.next() {
            Some(Message::Query(sql)) => (command::listen(sql)?, 1),
            Some(Message::Parse {
                name: b"", query, ..
            }) => {
                let cmds = command::listen(query)?;
                // The rest of the unit must have arrived, and be only what runs it.
                let mut count = 1;
                loop {
                    match frames.next() {
                        Some(Message::Sync) => break (cmds, count + 1),
                        Some(
                            Message::Bind {
                                portal: b"",
                                statement: b"",
                                ..
                            }
                            | Message::Describe { name: b"", .. }
                            | Message::Execute { portal: b"", .. },
                        ) => count += 1,
                        _ => return None,
                    }
                }
            }
            _ => return None,
        };
        Some((cmds, count))
    }

    /// Answers the unit `listen_unit` found, and carries it out on the shared connection.
    pub(super) async fn answer_listen(&mut self, (cmds, count): (Vec<Listen>, usize)) {
        let mut replies = BytesMut::new();
        let extended = count > 1;
        for _ in 0..count {
            let Some(frame) = self.inbox.front() else {
                break;
            };
            match frame.msg {
                Message::Parse { .. } => replies.extend_from_slice(backend::PARSE_COMPLETE),
                Message::Bind { .. } => replies.extend_from_slice(BIND_COMPLETE),
                Message::Describe { kind: b'S', .. } => {
                    replies.extend_from_slice(NO_PARAMETERS);
                    replies.extend_from_slice(NO_DATA);
                }
                Message::Describe { .. } => replies.extend_from_slice(NO_DATA),
                Message::Execute { .. } => {
                    for c in &cmds {
                        backend::command_complete(&mut replies, c.tag());
                    }
                }
                _ => {}
            }
            self.inbox.pop();
        }
        if !extended {
            for c in &cmds {
                backend::command_complete(&mut replies, c.tag());
            }
        }
        let mut waits = Vec::new();
        for c in cmds {
            waits.extend(self.apply_listen(c));
        }
        let deadline = self.config.general.server_connect_timeout.0;
        let all = async {
            for w in waits {
                w.await?;
            }
            Ok::<(), oneshot::error::RecvError>(())
        };
        match tokio::time::timeout(deadline, all).await {
            Ok(Ok(())) => self.to_client.extend_from_slice(&replies),
            _ => backend::error_response(
                &mut self.to_client,
                "ERROR",
                sqlstate::CONNECTION_FAILURE,
                "could not LISTEN: the shared listening connection to the primary is not available",
            ),
        }
        backend::ready_for_query(&mut self.to_client, TxStatus::Idle);
    }

    fn apply_listen(&mut self, cmd: Listen) -> Option<oneshot::Receiver<()>> {
        let listener = &self.members.listener;
        let me = self.reg.process_id;
        match cmd {
            Listen::Listen(channel) => {
                let notes = self.notes.get_or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    Box::new(Notes { rx, tx })
                });
                return listener.listen(self.members.primary(), me, &channel, &notes.tx);
            }
            Listen::Unlisten(channel) => listener.unlisten(me, Some(&channel)),
            Listen::UnlistenAll => listener.unlisten(me, None),
        }
        None
    }

    /// The client leaves, or DISCARD ALL: none of its channels stays.
    pub(super) fn unlisten_all(&mut self) {
        if self.notes.take().is_some() {
            self.members.listener.unlisten(self.reg.process_id, None);
        }
    }
}

impl Notes {
    /// The next notification, when one has come.
    pub(super) fn poll_note(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Note>> {
        self.rx.poll_recv(cx)
    }
}

/// The next notification for a listening client; never, for one that does not listen.
pub(super) async fn next_note(notes: &mut Option<Box<Notes>>) -> Note {
    // Polled in place: a `recv` future would be carried by every idle client's wait.
    let received = std::future::poll_fn(|cx| match notes {
        Some(n) => n.poll_note(cx),
        None => Poll::Pending,
    });
    match received.await {
        Some(note) => note,
        None => std::future::pending().await,
    }
}
