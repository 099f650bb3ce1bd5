//! SHOW VERSION.

use super::{Cell, Table};

pub fn table() -> Table {
    let mut t = Table::text(&["version"]);
    t.row(vec![Cell::from(format!(
        "pgsluice {}",
        env!("CARGO_PKG_VERSION")
    ))]);
    t
}
