//! The PostgreSQL v3 wire protocol, as far as a pooler needs it.
//!
//! Pure: no IO, no tokio. Every decoder takes a buffer and returns `Ok(None)` when more bytes are
//! needed, so the same code serves the sockets, the tests and the fuzz targets. Lengths are checked
//! before any arithmetic, because every byte here comes from an untrusted peer.

pub mod backend;
pub mod frontend;
pub mod startup;

use thiserror::Error;

/// Why a peer's bytes could not be decoded. Each of these ends the connection with 08P01.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("invalid startup packet: {0}")]
    BadStartup(&'static str),
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid frontend message type {0}")]
    UnknownMessage(u8),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// SQLSTATE codes the pooler itself raises.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
}

/// Reads a NUL-terminated string from the front of `buf`, returning it and the rest.
pub(crate) fn take_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}
