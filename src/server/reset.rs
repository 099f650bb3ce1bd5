//! What happens to a server when its client lets it go in doubt (the client left, broke the
//! protocol, or ran out of time): its query is cancelled, a COPY or open batch ended, its
//! transaction rolled back, the reset query run. Only a server that ends up idle may serve
//! anyone else; any doubt and it is closed.

use super::exchange::{Exchange, Ignore};
use crate::protocol::backend::TxStatus;
use crate::protocol::frontend;
use std::time::{Duration, Instant};

/// How long cleaning up after a departed client may take before the server is closed instead.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(10);

/// The first wait for a cancelled server to answer before the cancel is sent again.
const CANCEL_AGAIN: Duration = Duration::from_millis(200);

/// Cancels what runs, ends a COPY or open batch, rolls back, runs `reset` (session mode's
/// server_reset_query). True when the server ends up idle and may be pooled again.
pub async fn clean_up(ex: &mut Exchange, reset: Option<&str>) -> bool {
    let deadline = Instant::now() + CLEANUP_DEADLINE;
    if ex.tracker.out_of_step() {
        // No telling what the server still owes: waiting for it could last until the
        // deadline. It is stopped and closed.
        let key = ex.conn.cancel_key.clone();
        let _ = tokio::time::timeout_at(deadline.into(), super::cancel(&key)).await;
        return false;
    }
    if ex.tracker.busy() {
        let key = ex.conn.cancel_key.clone();
        if tokio::time::timeout_at(deadline.into(), super::cancel(&key))
            .await
            .is_err()
        {
            return false;
        }
        // PostgreSQL cancels only a query that runs: a cancel that reached the backend before
        // it had read the client's last query is lost, and that query would run to its end
        // with the transaction's locks. So the cancel is sent again while the server has not
        // answered. Each one is sent whole before the clean-up goes on; since one may then
        // meet the clean-up's own statements, a server cancelled more than once is closed.
        let answered = tokio::sync::Notify::new();
        let again = async {
            let mut wait = CANCEL_AGAIN;
            let mut sent = false;
            loop {
                tokio::select! {
                    _ = answered.notified() => return sent,
                    _ = tokio::time::sleep(wait) => {}
                }
                if Instant::now() >= deadline {
                    return sent;
                }
                let _ = tokio::time::timeout_at(deadline.into(), super::cancel(&key)).await;
                sent = true;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        };
        let drained = async {
            let ok = ex.drain(deadline, &mut Ignore).await;
            // Kept for the loop if it is sending a cancel right now.
            answered.notify_one();
            ok
        };
        let (drained, cancelled_again) = tokio::join!(drained, again);
        if !drained || cancelled_again {
            return false;
        }
    } else if !ex.drain(deadline, &mut Ignore).await {
        return false;
    }
    if ex.tracker.status != TxStatus::Idle {
        frontend::encode_query(&mut ex.to_server, "ROLLBACK");
        ex.tracker.sent(b'Q');
        if !ex.drain(deadline, &mut Ignore).await {
            return false;
        }
    }
    if let Some(sql) = reset {
        frontend::encode_query(&mut ex.to_server, sql);
        ex.tracker.sent(b'Q');
        if !ex.drain(deadline, &mut Ignore).await {
            return false;
        }
    }
    ex.tracker.idle()
}
