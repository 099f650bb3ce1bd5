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

/// Cancels what runs, ends a COPY or open batch, rolls back, runs `reset` (session mode's
/// server_reset_query). True when the server ends up idle and may be pooled again.
pub async fn clean_up(ex: &mut Exchange, reset: Option<&str>) -> bool {
    let deadline = Instant::now() + CLEANUP_DEADLINE;
    if ex.tracker.busy() {
        let key = ex.conn.cancel_key.clone();
        if tokio::time::timeout_at(deadline.into(), super::cancel(&key))
            .await
            .is_err()
        {
            return false;
        }
    }
    if !ex.drain(deadline, &mut Ignore).await {
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
