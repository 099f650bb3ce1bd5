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
    Sync,
}

#[derive(Debug)]
pub struct Tracker {
    pending: VecDeque<Pending>,
    /// Parse/Bind/Execute/... sent since the last Sync: the batch is still open.
    unsynced: bool,
    /// The server is in COPY FROM STDIN and ignores Sync until CopyDone or CopyFail.
    copy_in: bool,
    pub status: TxStatus,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            pending: VecDeque::new(),
            unsynced: false,
            copy_in: false,
            status: TxStatus::Idle,
        }
    }
}

impl Tracker {
    /// Notes one frame forwarded to the server, by type byte.
    pub fn sent(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.pending.push_back(Pending::Query),
            b'S' => {
                if !self.copy_in {
                    self.pending.push_back(Pending::Sync);
                }
                self.unsynced = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
            b'c' | b'f' => self.copy_in = false,
            _ => {}
        }
    }

    pub fn ready_for_query(&mut self, status: TxStatus) {
        self.pending.pop_front();
        self.status = status;
    }

    /// CopyInResponse: Syncs the client already sent behind the COPY are swallowed by the
    /// server (libpq and tokio-postgres both send one before they see this reply).
    pub fn copy_in(&mut self) {
        self.copy_in = true;
        self.pending.retain(|p| *p == Pending::Query);
    }

    /// Nothing is owed and no transaction is open: the server may serve someone else.
    pub fn idle(&self) -> bool {
        self.pending.is_empty() && !self.unsynced && !self.copy_in && self.status == TxStatus::Idle
    }

    /// Replies are still expected from the server.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    pub fn unsynced(&self) -> bool {
        self.unsynced
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
        t.ready_for_query(Idle);
        assert!(t.idle());
    }

    #[test]
    fn pipelined_syncs_wait_for_the_last() {
        let mut t = Tracker::default();
        for tag in *b"PBESPBES" {
            t.sent(tag);
        }
        t.ready_for_query(Idle);
        assert!(!t.idle(), "second sync still owed");
        t.ready_for_query(Idle);
        assert!(t.idle());
    }

    #[test]
    fn open_batch_and_transactions_hold_the_server() {
        let mut t = Tracker::default();
        t.sent(b'P');
        t.sent(b'H');
        assert!(!t.idle());
        t.sent(b'S');
        t.ready_for_query(InTransaction);
        assert!(!t.idle());
        t.sent(b'Q');
        t.ready_for_query(Idle);
        assert!(t.idle());
    }

    #[test]
    fn extended_copy_in_swallows_the_early_sync() {
        let mut t = Tracker::default();
        for tag in *b"BES" {
            t.sent(tag);
        }
        t.copy_in();
        t.sent(b'd');
        t.sent(b'c');
        t.sent(b'S');
        assert!(!t.idle());
        t.ready_for_query(Idle);
        assert!(t.idle());
    }

    #[test]
    fn simple_copy_in_keeps_its_query() {
        let mut t = Tracker::default();
        t.sent(b'Q');
        t.copy_in();
        t.sent(b'd');
        t.sent(b'f');
        assert!(!t.idle());
        t.ready_for_query(Idle);
        assert!(t.idle());
    }
}
