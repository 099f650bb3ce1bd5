//! The session parameters a client wants on whichever server it gets, with a fingerprint so
//! that a server already in line with them costs one comparison per checkout, not a lookup
//! per parameter.
//!
//! Kept packed in one string (`name\0value\0…`): every idle client holds one, and a list of
//! separately allocated pairs would cost several times the memory.

use std::hash::{DefaultHasher, Hash, Hasher};

#[derive(Debug, Clone, Default)]
pub struct SessionParams {
    packed: Box<str>,
    fingerprint: u64,
}

impl SessionParams {
    pub fn new(list: Vec<(String, String)>) -> SessionParams {
        let mut packed = String::new();
        for (k, v) in &list {
            push(&mut packed, k, v);
        }
        SessionParams::from_packed(packed)
    }

    fn from_packed(packed: String) -> SessionParams {
        let mut h = DefaultHasher::new();
        packed.hash(&mut h);
        SessionParams {
            packed: packed.into_boxed_str(),
            fingerprint: h.finish(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.packed.split('\0');
        std::iter::from_fn(move || {
            let k = parts.next().filter(|k| !k.is_empty())?;
            Some((k, parts.next().unwrap_or("")))
        })
    }

    /// Records a value the server reported for a parameter this client tracks.
    pub fn set(&mut self, name: &str, value: &str) {
        if self.iter().any(|(k, v)| k == name && v == value) {
            return;
        }
        let mut packed = String::with_capacity(self.packed.len() + value.len());
        let mut found = false;
        for (k, v) in self.iter() {
            if k == name {
                found = true;
                push(&mut packed, k, value);
            } else {
                push(&mut packed, k, v);
            }
        }
        if !found {
            push(&mut packed, name, value);
        }
        *self = SessionParams::from_packed(packed);
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// Names and values never contain NUL: they arrive as C strings on the wire.
fn push(packed: &mut String, name: &str, value: &str) {
    packed.push_str(name);
    packed.push('\0');
    packed.push_str(value);
    packed.push('\0');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_the_values() {
        let mut p = SessionParams::new(vec![
            ("timezone".into(), "UTC".into()),
            ("x".into(), "".into()),
        ]);
        let before = p.fingerprint();
        p.set("timezone", "UTC");
        assert_eq!(p.fingerprint(), before);
        p.set("timezone", "Asia/Tokyo");
        assert_ne!(p.fingerprint(), before);
        p.set("application_name", "web");
        let all: Vec<_> = p.iter().collect();
        assert_eq!(
            all,
            vec![
                ("timezone", "Asia/Tokyo"),
                ("x", ""),
                ("application_name", "web")
            ]
        );
    }
}
