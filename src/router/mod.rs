//! Where a query may run. Classification of SQL text lives in `classify`; `work` turns a
//! unit's frames into a class; `policy` turns a class, the session's state and the cluster's
//! health into a target, and nothing else decides one (retries and bans included); `reason`
//! counts the decisions. `command` recognises the pooler's own `SET pgsluice.route`; `effects`
//! says what a statement may do to its session (settings, session-only `features`).

pub mod classify;
pub mod command;
pub mod effects;
pub mod features;
pub mod functions;
mod lexer;
pub mod policy;
pub mod reason;
pub mod work;

pub use functions::{Catalog, Catalogs, WriteFunctions};
pub use reason::{RouteCounters, RouteReason, Routes};
