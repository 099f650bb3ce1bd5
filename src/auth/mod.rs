//! Who a client is, and how the pooler proves who it is to a server.
//!
//! Client side (we are the server): SCRAM-SHA-256 from a plain password or a stored verifier,
//! md5, trust. Server side (we are the client) lives in `server/login.rs` on top of
//! postgres-protocol's SCRAM client, or `passthrough` with a client's keys; the secrets it
//! needs come from here.

pub mod md5;
pub mod passthrough;
pub mod peer;
pub mod scram;

use scram::Verifier;

/// A password as configured for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// `md5` followed by the hex md5 of password || user name, as PostgreSQL stores it.
    Md5(String),
    Scram(Verifier),
    /// A verifier with the ClientKey a client's proof revealed: enough to log in to a server
    /// that keeps the same verifier.
    ScramKeys(Box<passthrough::Keys>),
}

impl Secret {
    /// The SCRAM verifier a client's proof is checked against, when the secret is one.
    pub fn verifier(&self) -> Option<&Verifier> {
        match self {
            Secret::Scram(v) => Some(v),
            Secret::ScramKeys(k) => Some(&k.verifier),
            Secret::Plain(_) | Secret::Md5(_) => None,
        }
    }

    pub fn parse(text: &str) -> Result<Secret, String> {
        if let Some(hex) = text.strip_prefix("md5") {
            if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Secret::Md5(hex.to_ascii_lowercase()));
            }
        }
        if text.starts_with("SCRAM-SHA-256$") {
            return Verifier::parse(text).map(Secret::Scram);
        }
        Ok(Secret::Plain(text.to_owned()))
    }
}
