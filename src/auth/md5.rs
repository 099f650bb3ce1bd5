//! PostgreSQL's md5 password scheme: md5(md5(password || user) || salt), hex, prefixed "md5".

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| {
            [
                DIGITS[(b >> 4) as usize] as char,
                DIGITS[(b & 15) as usize] as char,
            ]
        })
        .collect()
}

/// The hex hash PostgreSQL stores (without the "md5" prefix).
pub fn stored_hash(user: &str, password: &str) -> String {
    hex(&Md5::new()
        .chain_update(password)
        .chain_update(user)
        .finalize())
}

/// What a client answers to a challenge with `salt`, given the stored hex hash.
pub fn response(stored_hash: &str, salt: [u8; 4]) -> String {
    let digest = Md5::new()
        .chain_update(stored_hash)
        .chain_update(salt)
        .finalize();
    format!("md5{}", hex(&digest))
}

/// Checks a client's md5 answer without leaking timing.
pub fn verify(stored_hash: &str, salt: [u8; 4], answer: &[u8]) -> bool {
    response(stored_hash, salt).as_bytes().ct_eq(answer).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_scheme() {
        // SELECT 'md5' || md5('secret' || 'alice')
        assert_eq!(
            stored_hash("alice", "secret"),
            "4a0a68b43b6cd5cf266fa02f196e2371"
        );
        let salt = [1, 2, 3, 4];
        let answer = postgres_protocol::authentication::md5_hash(b"alice", b"secret", salt);
        assert!(verify(
            &stored_hash("alice", "secret"),
            salt,
            answer.as_bytes()
        ));
        assert!(!verify(
            &stored_hash("alice", "wrong"),
            salt,
            answer.as_bytes()
        ));
    }
}
