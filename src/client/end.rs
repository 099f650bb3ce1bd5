//! Why a client's session ended, as one typed error: which side failed and why, and (in one
//! place) what the client is told before its connection closes.

use crate::pool::PoolError;
use crate::protocol::{sqlstate, ProtocolError};

/// Which side a session's end came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
    Pooler,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
            Side::Pooler => "pooler",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum End {
    /// The client sent Terminate, and everything before it was answered.
    #[error("client terminated")]
    Terminated,
    #[error("client disconnected")]
    ClientGone,
    #[error("client disconnected while waiting for a server")]
    LeftWaiting,
    #[error("client disconnected while the database was paused")]
    LeftPaused,
    #[error("protocol violation: {0}")]
    Violation(#[from] ProtocolError),
    #[error("client_idle_timeout")]
    IdleTimeout,
    #[error("idle_transaction_timeout")]
    IdleTransactionTimeout,
    /// A unit of work had no complete answer within query_timeout.
    #[error("query_timeout")]
    QueryTimeout,
    /// A transaction stayed open longer than transaction_timeout.
    #[error("transaction_timeout")]
    TransactionTimeout,
    /// The server's connection broke under work that could not run elsewhere.
    #[error("server connection lost")]
    ServerGone,
    /// No server could be had (query_wait_timeout, failing logins, refused connects).
    #[error("no server: {0}")]
    NoServer(PoolError),
    /// The server refused the client's session parameters.
    #[error("invalid session parameter: {0}")]
    Params(String),
    /// The process is shutting down, or an admin asked this client to go.
    #[error("shutting down")]
    Shutdown,
}

impl End {
    pub fn side(&self) -> Side {
        match self {
            End::Terminated
            | End::ClientGone
            | End::LeftWaiting
            | End::LeftPaused
            | End::Violation(_)
            | End::IdleTimeout
            | End::IdleTransactionTimeout
            | End::TransactionTimeout => Side::Client,
            End::ServerGone | End::NoServer(_) | End::Params(_) | End::QueryTimeout => Side::Server,
            End::Shutdown => Side::Pooler,
        }
    }

    /// The FATAL error the client gets before the connection closes, as (SQLSTATE, message):
    /// PgBouncer's texts where it has one. None when the client is gone or asked to go.
    pub fn to_client(&self) -> Option<(&'static str, String)> {
        let violation = |m: &str| Some((sqlstate::PROTOCOL_VIOLATION, m.to_owned()));
        match self {
            End::Terminated | End::ClientGone | End::LeftWaiting | End::LeftPaused => None,
            End::Violation(e) => violation(&e.to_string()),
            End::IdleTimeout => violation("client_idle_timeout"),
            End::IdleTransactionTimeout => violation("idle transaction timeout"),
            End::QueryTimeout => violation("query timeout"),
            End::TransactionTimeout => violation("transaction timeout"),
            End::ServerGone => Some((sqlstate::CONNECTION_FAILURE, "server conn crashed?".into())),
            End::NoServer(e @ PoolError::Connect(_)) => {
                Some((sqlstate::CONNECTION_FAILURE, e.to_string()))
            }
            End::NoServer(e) => violation(&e.to_string()),
            End::Params(message) => violation(message),
            End::Shutdown => Some((
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_end_that_reaches_the_client_has_its_sqlstate() {
        let code = |e: End| e.to_client().map(|(c, _)| c);
        assert_eq!(code(End::Shutdown), Some(sqlstate::ADMIN_SHUTDOWN));
        assert_eq!(code(End::ServerGone), Some(sqlstate::CONNECTION_FAILURE));
        assert_eq!(
            End::NoServer(PoolError::WaitTimeout).to_client(),
            Some((sqlstate::PROTOCOL_VIOLATION, "query_wait_timeout".into()))
        );
        let refused = PoolError::Connect("refused".into());
        assert_eq!(
            code(End::NoServer(refused)),
            Some(sqlstate::CONNECTION_FAILURE)
        );
        assert_eq!(
            code(End::Violation(ProtocolError::UnknownMessage(b'Z'))),
            Some(sqlstate::PROTOCOL_VIOLATION)
        );
        assert_eq!(code(End::ClientGone), None);
        assert_eq!(End::ServerGone.side(), Side::Server);
        assert_eq!(End::IdleTimeout.side(), Side::Client);
    }
}
