//! The session parameters a client wants on whichever server it gets, with a fingerprint so
//! that a server already in line with them costs one comparison per checkout, not a lookup
//! per parameter.

use std::hash::{DefaultHasher, Hash, Hasher};

#[derive(Debug, Clone, Default)]
pub struct SessionParams {
    list: Vec<(String, String)>,
    fingerprint: u64,
}

impl SessionParams {
    pub fn new(list: Vec<(String, String)>) -> SessionParams {
        let mut p = SessionParams {
            list,
            fingerprint: 0,
        };
        p.refresh();
        p
    }

    fn refresh(&mut self) {
        let mut h = DefaultHasher::new();
        self.list.hash(&mut h);
        self.fingerprint = h.finish();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.list.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Records a value the server reported for a parameter this client tracks.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.list.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) if v == value => return,
            Some((_, v)) => *v = value.to_owned(),
            None => self.list.push((name.to_owned(), value.to_owned())),
        }
        self.refresh();
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_the_values() {
        let mut p = SessionParams::new(vec![("timezone".into(), "UTC".into())]);
        let before = p.fingerprint();
        p.set("timezone", "UTC");
        assert_eq!(p.fingerprint(), before);
        p.set("timezone", "Asia/Tokyo");
        assert_ne!(p.fingerprint(), before);
        p.set("application_name", "x");
        assert_eq!(p.iter().count(), 2);
    }
}
