//! DISABLE db: refuse new clients of the database; ENABLE db: accept them again. Clients
//! already connected stay.

use super::{Console, Failure};
use crate::protocol::sqlstate;

pub fn run(console: &Console<'_>, db: Option<&str>, disabled: bool) -> Result<(), Failure> {
    let Some(name) = db else {
        return Err(Failure::new(
            sqlstate::SYNTAX_ERROR,
            "a database name is needed",
        ));
    };
    let cluster = console
        .ctx
        .clusters
        .get(name)
        .ok_or_else(|| Failure::no_database(name))?;
    cluster.disable(disabled);
    Ok(())
}
