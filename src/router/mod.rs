//! Where a query may run. Classification of SQL text lives in `classify`; `policy` turns a
//! class, the session's state and the cluster's health into a target, and nothing else
//! decides one. `command` recognises the pooler's own `SET pgsluice.route`.

pub mod classify;
pub mod command;
mod lexer;
pub mod policy;
