//! SHUTDOWN: close every client now and exit. SHUTDOWN WAIT_FOR_CLIENTS: as SIGTERM, let
//! transactions finish and close clients as they come between transactions.

use super::{Console, Failure};
use crate::protocol::sqlstate;

pub fn run(console: &Console<'_>, arg: Option<&str>) -> Result<(), Failure> {
    let wait = match arg.map(str::to_ascii_uppercase).as_deref() {
        None => false,
        Some("WAIT_FOR_CLIENTS") => true,
        Some(other) => {
            return Err(Failure::new(
                sqlstate::SYNTAX_ERROR,
                format!("SHUTDOWN takes WAIT_FOR_CLIENTS or nothing, not {other}"),
            ))
        }
    };
    tracing::info!(user = console.user, wait, "SHUTDOWN from the admin console");
    console.ctx.shutdown(!wait);
    Ok(())
}
