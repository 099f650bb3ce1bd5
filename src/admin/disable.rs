//! DISABLE db: refuse new clients of the database; ENABLE db: accept them again. Clients
//! already connected stay.

use super::{Console, Failure};

pub fn run(console: &Console<'_>, db: Option<&str>, disabled: bool) -> Result<(), Failure> {
    console.cluster(db)?.disable(disabled);
    Ok(())
}
