//! RELOAD: read the configuration file again; an invalid file changes nothing and is
//! reported as the command's error.

use super::{Console, Failure};
use crate::protocol::sqlstate;

pub fn run(console: &Console<'_>) -> Result<(), Failure> {
    console
        .ctx
        .reload()
        .map_err(|e| Failure::new(sqlstate::CONFIG_FILE_ERROR, format!("reload refused: {e}")))
}
