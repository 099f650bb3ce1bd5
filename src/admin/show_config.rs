//! SHOW CONFIG: every top-level setting with its value in effect, its default, and whether a
//! reload can change it.

use super::{Cell, Table};
use crate::config::{General, NEEDS_RESTART};
use crate::context::Context;

fn text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub fn table(ctx: &Context) -> Table {
    let mut t = Table::text(&["key", "value", "default", "changeable"]);
    let now = toml::Table::try_from(&ctx.config.load().general).unwrap_or_default();
    let defaults = toml::Table::try_from(General::default()).unwrap_or_default();
    for (key, value) in &now {
        t.row(vec![
            Cell::from(key),
            Cell::from(text(value)),
            Cell::from(defaults.get(key).map(text)),
            Cell::from(if NEEDS_RESTART.contains(&key.as_str()) {
                "no"
            } else {
                "yes"
            }),
        ]);
    }
    t
}
