//! One task per client connection: startup (`login`) and authentication (`authenticate`), then
//! the session state machine (`session`), which waits while idle (`idle`), links to a server for
//! each unit of work (`link`), forwards both ways while linked (`forward`, bounded by `limits`,
//! with statement names rewritten by `rewrite`), and ends with a typed reason (`end`). The
//! client's read buffer and its frames, parsed once, are the `inbox`. Its settings follow it
//! from server to server (`params`), learnt after work that may change them (`probe`), which
//! also pins a client that holds a session-only feature to its server. A currval or lastval
//! runs only where the server holds the client's own sequence values (`sequences`). LISTEN is
//! shared (`listen`). A client idle for a while waits without a task of its own (`parked`).

mod authenticate;
mod end;
mod floor;
mod forward;
mod idle;
mod inbox;
mod limits;
mod link;
mod listen;
pub mod login;
mod params;
pub mod parked;
mod probe;
mod refusal;
mod rewrite;
mod sequences;
pub mod session;

pub use end::{End, Side};

#[cfg(test)]
mod tests;
