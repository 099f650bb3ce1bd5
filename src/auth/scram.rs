//! SCRAM-SHA-256 as the server side of the exchange (RFC 5802 / RFC 7677), the way PostgreSQL
//! runs it: the user name in the client-first message is ignored (the startup packet's counts),
//! and channel binding is not offered, so only the `n` and `y` GS2 flags are accepted.
//!
//! A pure state machine: the client loop feeds it message bodies and sends what it returns.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const MECHANISM: &str = "SCRAM-SHA-256";
const DEFAULT_ITERATIONS: u32 = 4096;

/// What the server keeps of a password: `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

pub(super) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one block of output, RFC 5802's Hi().
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// PostgreSQL runs SASLprep on the password and falls back to the raw bytes when that fails.
fn prepare(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

pub(super) fn key32(text: &str) -> Option<[u8; 32]> {
    B64.decode(text).ok()?.try_into().ok()
}

impl Verifier {
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let salted = hi(&prepare(password), salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// A verifier for a plain-text password, with a fresh random salt.
    pub fn generate(password: &str) -> Verifier {
        let salt: [u8; 16] = rand::random();
        Verifier::from_password(password, &salt, DEFAULT_ITERATIONS)
    }

    pub fn parse(text: &str) -> Result<Verifier, String> {
        let bad = || {
            "not a valid SCRAM-SHA-256 verifier (SCRAM-SHA-256$iter:salt$stored:server)".to_owned()
        };
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iter, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let iterations: u32 = iter.parse().map_err(|_| bad())?;
        if iterations == 0 {
            return Err(bad());
        }
        Ok(Verifier {
            iterations,
            salt: B64.decode(salt).map_err(|_| bad())?,
            stored_key: key32(stored).ok_or_else(bad)?,
            server_key: key32(server).ok_or_else(bad)?,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message")]
    Malformed,
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    #[error("wrong password")]
    Proof,
}

/// A client's proof that checked out: the server-final message for it, and the ClientKey the
/// proof revealed, with which the pooler can log in to a server that keeps the same verifier
/// (`passthrough`).
#[derive(Debug)]
pub struct Proven {
    pub server_final: String,
    pub client_key: [u8; 32],
}

/// The server side of one exchange, between the client-first and client-final messages.
#[derive(Debug)]
pub struct ServerExchange {
    verifier: Verifier,
    gs2_header: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ServerExchange {
    /// Takes the client-first message and returns the exchange and the server-first message.
    pub fn start(
        verifier: Verifier,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<(ServerExchange, String), ScramError> {
        let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed)?;
        let (flag, rest) = text.split_once(',').ok_or(ScramError::Malformed)?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed)?;
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(ScramError::Malformed);
        }
        let mut attrs = bare.split(',');
        let user = attrs.next().ok_or(ScramError::Malformed)?;
        if !user.starts_with("n=") {
            return Err(ScramError::Malformed);
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed)?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let exchange = ServerExchange {
            verifier,
            gs2_header: format!("{flag},{authzid},"),
            nonce,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
        };
        Ok((exchange, server_first))
    }

    /// Checks the client-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<Proven, ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed)?;
        if B64.decode(binding).map_err(|_| ScramError::Malformed)? != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBinding);
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof = key32(proof).ok_or(ScramError::Malformed)?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        client_key
            .iter_mut()
            .zip(signature.iter())
            .for_each(|(k, s)| *k ^= s);
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&self.verifier.stored_key)) {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(Proven {
            server_final: format!("v={}", B64.encode(server_signature)),
            client_key,
        })
    }
}

/// A random nonce of printable characters for the server's part.
pub fn nonce() -> String {
    B64.encode(rand::random::<[u8; 18]>())
}

/// A verifier that no password matches but that looks like a real one, so an unknown user
/// goes through the same exchange as a wrong password. Deterministic per user name, as
/// PostgreSQL's mock salt is, so repeated probes see the same salt.
pub fn mock_verifier(user: &str, process_secret: &[u8; 32]) -> Verifier {
    let salt = hmac(process_secret, &[user.as_bytes()]);
    Verifier {
        iterations: DEFAULT_ITERATIONS,
        salt: salt[..16].to_vec(),
        stored_key: hmac(process_secret, &[b"stored", user.as_bytes()]),
        server_key: hmac(process_secret, &[b"server", user.as_bytes()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    // RFC 7677, section 3.
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> Verifier {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Verifier::from_password("pencil", &salt, 4096)
    }

    #[test]
    fn rfc7677_vectors() {
        let (ex, first) =
            ServerExchange::start(rfc_verifier(), CLIENT_FIRST.as_bytes(), SERVER_NONCE).unwrap();
        assert_eq!(first, SERVER_FIRST);
        assert_eq!(
            ex.finish(CLIENT_FINAL.as_bytes()).unwrap().server_final,
            SERVER_FINAL
        );
    }

    #[test]
    fn rfc7677_wrong_proof_fails() {
        let (ex, _) =
            ServerExchange::start(rfc_verifier(), CLIENT_FIRST.as_bytes(), SERVER_NONCE).unwrap();
        let bad = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(ex.finish(bad.as_bytes()).unwrap_err(), ScramError::Proof);
    }

    #[test]
    fn verifier_text_round_trip() {
        let v = rfc_verifier();
        let text = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            v.iterations,
            B64.encode(&v.salt),
            B64.encode(v.stored_key),
            B64.encode(v.server_key)
        );
        assert_eq!(Verifier::parse(&text).unwrap(), v);
        assert!(Verifier::parse("SCRAM-SHA-256$0:AA==$AA==:AA==").is_err());
    }

    /// Our server side against postgres-protocol's client side, end to end.
    #[test]
    fn talks_to_a_real_client_implementation() {
        for (stored, given, ok) in [("s3cret", "s3cret", true), ("s3cret", "nope", false)] {
            let mut client = ScramSha256::new(given.as_bytes(), ChannelBinding::unrequested());
            let (ex, first) =
                ServerExchange::start(Verifier::generate(stored), client.message(), &nonce())
                    .unwrap();
            client.update(first.as_bytes()).unwrap();
            let result = ex.finish(client.message());
            assert_eq!(result.is_ok(), ok);
            if let Ok(proven) = result {
                client.finish(proven.server_final.as_bytes()).unwrap();
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn random_client_messages_never_panic(
            first in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
            last in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            let v = Verifier::from_password("x", b"salt", 1);
            if let Ok((ex, _)) = ServerExchange::start(v, &first, "n") {
                let _ = ex.finish(&last);
            }
        }
    }

    #[test]
    fn refuses_channel_binding_and_garbage() {
        let v = rfc_verifier();
        let cb = ServerExchange::start(v.clone(), b"p=tls-server-end-point,,n=,r=x", "y");
        assert_eq!(cb.err(), Some(ScramError::ChannelBinding));
        for junk in [
            &b""[..],
            b"n",
            b"n,,",
            b"n,,r=abc",
            b"x,,n=,r=a",
            b"n,,n=,r=",
            b"\xff",
        ] {
            assert!(
                ServerExchange::start(v.clone(), junk, "y").is_err(),
                "{junk:?}"
            );
        }
    }
}
