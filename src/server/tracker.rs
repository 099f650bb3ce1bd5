//! What a server still owes the client that holds it, worked out from the messages that pass.
//!
//! Pure bookkeeping, no IO. A server may go back to the pool only when every Query and Sync it
//! was sent has been answered by ReadyForQuery, no extended-protocol batch is open, no COPY is
//! in progress, and the last ReadyForQuery said idle. Pipelines make the count matter: the
//! first idle ReadyForQuery of two pipelined Syncs is not the end.

use crate::protocol::backend::TxStatus;
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A Query or FunctionCall: answered by its own ReadyForQuery.
    Query,
    /// A Query or FunctionCall sent into an extended-protocol batch not yet synced: answered
    /// as a Query, unless an error earlier in the batch makes the server skip it.
    BatchQuery,
    Sync,
    /// A Query of the pooler's own, sent behind the client's: its whole reply is the
    /// pooler's.
    Own,
    /// A Describe of a statement the pooler prepared, its reply the pooler's: the result
    /// description, to compare with what clients were told. Skipped after an error.
    OwnDescribe {
        statement: u64,
    },
    /// A Parse, answered by ParseComplete unless an earlier error skips it. `statement` is the
    /// pooler's statement id when it names one; `reply` says what the client gets.
    Parse {
        statement: Option<u64>,
        reply: Reply,
    },
    /// A Close, answered by CloseComplete.
    Close {
        reply: Reply,
    },
    /// A CopyDone or CopyFail sent before the server said whether a COPY started: no reply
    /// of its own, it marks where a COPY FROM STDIN the client pipelined data into ends.
    CopyEnd,
}

/// What becomes of the reply to a Parse or Close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The client sent it: the reply is theirs.
    Forward,
    /// The pooler sent it on its own: the client never sees the reply.
    Drop,
    /// Stands in for a client's Parse of a statement the server already has: the client gets
    /// ParseComplete.
    AsParseComplete,
}

/// Where the client's stream of messages stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Nothing sent since the last Sync (or Query).
    Synced,
    /// Parse/Bind/Execute/... sent since the last Sync: the batch is still open.
    Open,
    /// The server is in COPY FROM STDIN and ignores Sync until CopyDone or CopyFail; `open`
    /// says whether a batch is open around the COPY.
    CopyIn { open: bool },
}

#[derive(Debug)]
pub struct Tracker {
    pending: VecDeque<Pending>,
    input: Input,
    pub status: TxStatus,
    /// What the server still owes can no longer be told (`error`).
    out_of_step: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            pending: VecDeque::new(),
            input: Input::Synced,
            status: TxStatus::Idle,
            out_of_step: false,
        }
    }
}

impl Tracker {
    /// Back to the state of a fresh link, keeping the queue's allocation.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.input = Input::Synced;
        self.status = TxStatus::Idle;
        self.out_of_step = false;
    }

    /// Notes one frame forwarded to the server, by type byte.
    pub fn sent(&mut self, tag: u8) {
        match (tag, self.input) {
            (b'Q' | b'F', Input::Open) => self.pending.push_back(Pending::BatchQuery),
            (b'Q' | b'F', _) => self.pending.push_back(Pending::Query),
            (b'S', Input::CopyIn { .. }) => self.input = Input::CopyIn { open: false },
            (b'S', _) => {
                self.pending.push_back(Pending::Sync);
                self.input = Input::Synced;
            }
            (b'P' | b'B' | b'D' | b'E' | b'C' | b'H', Input::CopyIn { .. }) => {
                self.input = Input::CopyIn { open: true }
            }
            (b'P' | b'B' | b'D' | b'E' | b'C' | b'H', _) => self.input = Input::Open,
            (b'c' | b'f', Input::CopyIn { open }) => {
                self.input = if open { Input::Open } else { Input::Synced }
            }
            // Only a reply still owed may start the COPY this ends; else the server ignores it.
            (b'c' | b'f', _) if !self.pending.is_empty() => {
                self.pending.push_back(Pending::CopyEnd)
            }
            _ => {}
        }
    }

    pub fn parse_sent(&mut self, statement: Option<u64>, reply: Reply) {
        self.pending.push_back(Pending::Parse { statement, reply });
    }

    pub fn close_sent(&mut self, reply: Reply) {
        self.pending.push_back(Pending::Close { reply });
    }

    /// A ParseComplete arrived: which statement it confirms and what to do with it.
    pub fn parse_complete(&mut self) -> (Option<u64>, Reply) {
        match self.pending.front() {
            Some(&Pending::Parse { statement, reply }) => {
                self.pending.pop_front();
                (statement, reply)
            }
            _ => (None, Reply::Forward),
        }
    }

    /// A CloseComplete arrived: what to do with it.
    pub fn close_complete(&mut self) -> Reply {
        match self.pending.front() {
            Some(&Pending::Close { reply }) => {
                self.pending.pop_front();
                reply
            }
            _ => Reply::Forward,
        }
    }

    /// ReadyForQuery ends a Query or Sync. Parses still queued before it were skipped after an
    /// error; `skipped` hears of each statement that therefore never got prepared.
    pub fn ready_for_query(&mut self, status: TxStatus, mut skipped: impl FnMut(u64)) {
        while let Some(p) = self.pending.pop_front() {
            match p {
                Pending::Query | Pending::BatchQuery | Pending::Sync | Pending::Own => break,
                Pending::Parse {
                    statement: Some(id),
                    ..
                } => skipped(id),
                _ => {}
            }
        }
        // A CopyDone that ended no COPY was ignored by the server.
        while self.pending.front() == Some(&Pending::CopyEnd) {
            self.pending.pop_front();
        }
        self.status = status;
    }

    /// A Query of the pooler's own went after the client's messages.
    pub fn own_sent(&mut self) {
        self.pending.push_back(Pending::Own);
    }

    /// The server's next reply is to the pooler's own query.
    pub fn owns_next(&self) -> bool {
        self.pending.front() == Some(&Pending::Own)
    }

    /// A Describe of the pooler's own, of statement `statement`, went to the server.
    pub fn own_describe_sent(&mut self, statement: u64) {
        self.pending.push_back(Pending::OwnDescribe { statement });
    }

    /// The server's next reply is to the pooler's own Describe.
    pub fn describes_next(&self) -> bool {
        matches!(self.pending.front(), Some(Pending::OwnDescribe { .. }))
    }

    /// The pooler's own Describe was answered (RowDescription or NoData): of which statement.
    pub fn described(&mut self) -> Option<u64> {
        match self.pending.front() {
            Some(&Pending::OwnDescribe { statement }) => {
                self.pending.pop_front();
                Some(statement)
            }
            _ => None,
        }
    }

    /// CopyInResponse. What the client already sent behind the COPY meets it as the server
    /// does: a Sync is swallowed (libpq and tokio-postgres both send one before they see this
    /// reply); a CopyDone or CopyFail ends it; any other message ends it with an error, and
    /// is itself never answered (`skipped` hears of a Parse of the pooler's lost that way).
    pub fn copy_in(&mut self, mut skipped: impl FnMut(u64)) {
        let mut open = self.unsynced();
        let i = usize::from(matches!(
            self.pending.front(),
            Some(Pending::Query | Pending::BatchQuery)
        ));
        while let Some(p) = self.pending.remove(i) {
            match p {
                // The batch it ended stays open past the COPY: it needs a Sync of its own.
                Pending::Sync => {
                    open = true;
                    continue;
                }
                Pending::Parse {
                    statement: Some(id),
                    ..
                } => skipped(id),
                _ => {}
            }
            return;
        }
        self.input = Input::CopyIn { open };
    }

    /// An ErrorResponse to the client's messages. One in an extended-protocol batch makes the
    /// server skip what follows up to the Sync, a Query among it too; when a Query went into a
    /// batch still open, whether this error was such a one cannot be told from here, and so
    /// neither can what the server still owes. No driver sends that; a server it happened to
    /// is closed rather than pooled again.
    pub fn error(&mut self) {
        if self
            .pending
            .iter()
            .take_while(|p| **p != Pending::Sync)
            .any(|p| *p == Pending::BatchQuery)
        {
            self.out_of_step = true;
        }
    }

    /// `error` found the count lost.
    pub fn out_of_step(&self) -> bool {
        self.out_of_step
    }

    /// Nothing is owed and no transaction is open: the server may serve someone else.
    pub fn idle(&self) -> bool {
        self.pending.is_empty()
            && self.input == Input::Synced
            && self.status == TxStatus::Idle
            && !self.out_of_step
    }

    /// Replies are still expected from the server.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn in_copy_in(&self) -> bool {
        matches!(self.input, Input::CopyIn { .. })
    }

    pub fn unsynced(&self) -> bool {
        matches!(self.input, Input::Open | Input::CopyIn { open: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TxStatus::*;

    #[test]
    fn simple_query_round_trip() {
        let mut t = Tracker::default();
        t.sent(b'Q');
        assert!(!t.idle());
        t.ready_for_query(Idle, |_| {});
        assert!(t.idle());
    }

    #[test]
    fn pipelined_syncs_wait_for_the_last() {
        let mut t = Tracker::default();
        for tag in *b"PBESPBES" {
            t.sent(tag);
        }
        t.ready_for_query(Idle, |_| {});
        assert!(!t.idle(), "second sync still owed");
        t.ready_for_query(Idle, |_| {});
        assert!(t.idle());
    }

    #[test]
    fn open_batch_and_transactions_hold_the_server() {
        let mut t = Tracker::default();
        t.sent(b'P');
        t.sent(b'H');
        assert!(!t.idle());
        t.sent(b'S');
        t.ready_for_query(InTransaction, |_| {});
        assert!(!t.idle());
        t.sent(b'Q');
        t.ready_for_query(Idle, |_| {});
        assert!(t.idle());
    }

    #[test]
    fn extended_copy_in_swallows_the_early_sync() {
        let mut t = Tracker::default();
        for tag in *b"BES" {
            t.sent(tag);
        }
        t.copy_in(|_| {});
        t.sent(b'd');
        t.sent(b'c');
        t.sent(b'S');
        assert!(!t.idle());
        t.ready_for_query(Idle, |_| {});
        assert!(t.idle());
    }

    #[test]
    fn parse_and_close_replies_pair_with_what_was_sent() {
        let mut t = Tracker::default();
        t.parse_sent(Some(7), Reply::Drop);
        t.sent(b'P');
        t.close_sent(Reply::AsParseComplete);
        t.sent(b'C');
        t.sent(b'S');
        assert_eq!(t.parse_complete(), (Some(7), Reply::Drop));
        assert_eq!(t.close_complete(), Reply::AsParseComplete);
        t.ready_for_query(Idle, |_| panic!("nothing skipped"));
        assert!(t.idle());
    }

    #[test]
    fn parses_skipped_after_an_error_are_reported() {
        let mut t = Tracker::default();
        t.parse_sent(Some(1), Reply::Forward);
        t.parse_sent(Some(2), Reply::Drop);
        t.sent(b'S');
        let mut skipped = Vec::new();
        t.ready_for_query(Idle, |id| skipped.push(id));
        assert_eq!(skipped, vec![1, 2]);
        assert!(t.idle());
    }

    #[test]
    fn a_batch_open_around_a_copy_stays_open_after_it() {
        let mut t = Tracker::default();
        for tag in *b"BE" {
            t.sent(tag);
        }
        t.copy_in(|_| {});
        assert!(t.in_copy_in() && t.unsynced());
        t.sent(b'c');
        assert!(!t.in_copy_in() && t.unsynced(), "the Sync is still to come");
        t.sent(b'S');
        assert!(!t.unsynced());
    }

    #[test]
    fn copy_data_pipelined_behind_its_query_ends_the_copy() {
        let mut t = Tracker::default();
        for tag in *b"QdcQ" {
            t.sent(tag);
        }
        t.copy_in(|_| {});
        assert!(!t.in_copy_in());
        t.ready_for_query(Idle, |_| {});
        assert!(!t.idle(), "the second Query is still owed");
        t.ready_for_query(Idle, |_| {});
        assert!(t.idle());

        let mut t = Tracker::default();
        for tag in *b"BESdcS" {
            t.sent(tag);
        }
        t.copy_in(|_| {});
        t.ready_for_query(Idle, |_| {});
        assert!(
            t.idle(),
            "the early Sync was swallowed, the later one answered"
        );
    }

    #[test]
    fn a_query_sent_into_a_copy_is_consumed_by_its_error() {
        // The server takes the second Query for a protocol violation that ends the COPY:
        // one ErrorResponse and one ReadyForQuery, for the COPY's own Query.
        let mut t = Tracker::default();
        for tag in *b"QdQd" {
            t.sent(tag);
        }
        t.copy_in(|_| {});
        assert!(!t.in_copy_in());
        t.ready_for_query(Idle, |_| {});
        assert!(t.idle());

        let mut t = Tracker::default();
        t.sent(b'Q');
        t.parse_sent(Some(9), Reply::Drop);
        t.sent(b'S');
        let mut skipped = Vec::new();
        t.copy_in(|id| skipped.push(id));
        assert_eq!(skipped, vec![9], "that Parse never prepares its statement");
        t.ready_for_query(Idle, |_| {});
        assert!(!t.idle(), "the Sync after it is answered");
        t.ready_for_query(Idle, |_| {});
        assert!(t.idle());
    }

    #[test]
    fn an_error_before_a_query_sent_into_an_open_batch_loses_the_count() {
        // Found by the `session` fuzz target: a failed Describe, then Queries before any
        // Sync. The server skips the Queries; the tracker cannot know it did.
        let mut t = Tracker::default();
        for tag in *b"QDQ" {
            t.sent(tag);
        }
        t.ready_for_query(Idle, |_| {});
        t.error();
        assert!(t.out_of_step() && !t.idle());

        // An error in a batch with no Query in it keeps the count.
        let mut t = Tracker::default();
        for tag in *b"PBESQ" {
            t.sent(tag);
        }
        t.error();
        t.ready_for_query(Idle, |_| {});
        t.ready_for_query(Idle, |_| {});
        assert!(!t.out_of_step() && t.idle());
    }

    #[test]
    fn a_copy_done_outside_a_copy_is_ignored() {
        let mut t = Tracker::default();
        for tag in *b"Qc" {
            t.sent(tag);
        }
        t.ready_for_query(Idle, |_| {});
        assert!(t.idle());
        t.sent(b'f');
        assert!(t.idle());
    }

    #[test]
    fn simple_copy_in_keeps_its_query() {
        let mut t = Tracker::default();
        t.sent(b'Q');
        t.copy_in(|_| {});
        t.sent(b'd');
        t.sent(b'f');
        assert!(!t.idle());
        t.ready_for_query(Idle, |_| {});
        assert!(t.idle());
    }
}
