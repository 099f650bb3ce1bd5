//! SCRAM-SHA-256 as the client side, with keys instead of a password: the pooler logs in to
//! a server with the ClientKey a client's proof revealed and the verifier both sides keep
//! (SCRAM passthrough), so a user known only by its verifier needs no plain-text password.
//!
//! A pure state machine, like `scram`: the server login feeds it message bodies.

use super::scram::{hmac, key32, nonce, Verifier};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A verifier with the ClientKey that matches it.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub verifier: Verifier,
    pub client_key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Some when `client_key` is the key of `verifier` (its hash is the StoredKey).
    pub fn new(verifier: Verifier, client_key: [u8; 32]) -> Option<Keys> {
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        bool::from(stored.ct_eq(&verifier.stored_key)).then_some(Keys {
            verifier,
            client_key,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassError {
    #[error("malformed SCRAM message from the server")]
    Malformed,
    #[error("the server's SCRAM nonce does not extend ours")]
    Nonce,
    #[error("the server keeps another verifier (salt or iterations differ): the password changed")]
    OtherVerifier,
    #[error("the server's SCRAM signature is wrong")]
    Signature,
}

/// One exchange: start, then `respond` to server-first, then `check` server-final.
pub struct ClientExchange {
    keys: Keys,
    nonce: String,
    first_bare: String,
    auth_message: Option<String>,
}

impl ClientExchange {
    /// The exchange and its client-first message (no channel binding, user from the startup).
    pub fn start(keys: Keys) -> (ClientExchange, String) {
        let nonce = nonce();
        let first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{first_bare}");
        let exchange = ClientExchange {
            keys,
            nonce,
            first_bare,
            auth_message: None,
        };
        (exchange, first)
    }

    /// The client-final message for the server-first one.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<String, PassError> {
        let text = std::str::from_utf8(server_first).map_err(|_| PassError::Malformed)?;
        let mut attrs = text.split(',');
        let mut next = |prefix: &str| {
            attrs
                .next()
                .and_then(|a| a.strip_prefix(prefix))
                .ok_or(PassError::Malformed)
        };
        let nonce = next("r=")?;
        let salt = B64.decode(next("s=")?).map_err(|_| PassError::Malformed)?;
        let iterations: u32 = next("i=")?.parse().map_err(|_| PassError::Malformed)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(PassError::Nonce);
        }
        let v = &self.keys.verifier;
        if salt != v.salt || iterations != v.iterations {
            return Err(PassError::OtherVerifier);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.first_bare);
        let signature = hmac(&v.stored_key, &[auth_message.as_bytes()]);
        let mut proof = self.keys.client_key;
        proof
            .iter_mut()
            .zip(signature.iter())
            .for_each(|(p, s)| *p ^= s);
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message: the server knows the verifier too.
    pub fn check(&self, server_final: &[u8]) -> Result<(), PassError> {
        let auth_message = self.auth_message.as_ref().ok_or(PassError::Malformed)?;
        let text = std::str::from_utf8(server_final).map_err(|_| PassError::Malformed)?;
        let given = text
            .strip_prefix("v=")
            .and_then(key32)
            .ok_or(PassError::Malformed)?;
        let expected = hmac(&self.keys.verifier.server_key, &[auth_message.as_bytes()]);
        if bool::from(given.ct_eq(&expected)) {
            Ok(())
        } else {
            Err(PassError::Signature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::ServerExchange;

    /// A client proves its password to our server side; with the key that revealed, our
    /// client side logs in to a second server side that keeps the same verifier.
    #[test]
    fn keys_from_one_exchange_log_in_to_another() {
        let verifier = Verifier::generate("s3cret");
        let mut client = postgres_protocol::authentication::sasl::ScramSha256::new(
            b"s3cret",
            postgres_protocol::authentication::sasl::ChannelBinding::unrequested(),
        );
        let (ex, first) =
            ServerExchange::start(verifier.clone(), client.message(), &nonce()).unwrap();
        client.update(first.as_bytes()).unwrap();
        let proven = ex.finish(client.message()).unwrap();
        let keys = Keys::new(verifier.clone(), proven.client_key).unwrap();

        let (mut ours, our_first) = ClientExchange::start(keys.clone());
        let (server, server_first) =
            ServerExchange::start(verifier.clone(), our_first.as_bytes(), &nonce()).unwrap();
        let our_final = ours.respond(server_first.as_bytes()).unwrap();
        let server_final = server.finish(our_final.as_bytes()).unwrap().server_final;
        ours.check(server_final.as_bytes()).unwrap();
        assert_eq!(
            ours.check(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(PassError::Signature)
        );

        // A server that keeps a verifier of another password (a new salt) is told apart.
        let (mut ours, our_first) = ClientExchange::start(keys);
        let (_, server_first) =
            ServerExchange::start(Verifier::generate("s3cret"), our_first.as_bytes(), &nonce())
                .unwrap();
        assert_eq!(
            ours.respond(server_first.as_bytes()),
            Err(PassError::OtherVerifier)
        );
    }

    #[test]
    fn a_key_that_is_not_the_verifiers_is_refused() {
        assert!(Keys::new(Verifier::generate("a"), [7; 32]).is_none());
    }
}
