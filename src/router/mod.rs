//! Where a query may run. Classification of SQL text lives in `classify`; the policy that
//! turns a class, the session's state and the cluster's health into a target will join it
//! here, and nowhere else.

pub mod classify;
mod lexer;
