//! pgsluice: a PostgreSQL connection pooler and read/write router.

pub mod admin;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod context;
pub mod demo;
pub mod listen;
pub mod localpg;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod server;
pub mod service;
pub mod stats;
pub mod stream;
pub mod tls;
