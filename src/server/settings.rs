//! A session's settings as name → value in their string form (what `current_setting` answers
//! and `set_config` takes), kept sorted in one packed string with a fingerprint of the whole.
//!
//! Used for what a server connection's session carries and for what a client wants of one:
//! equal fingerprints mean nothing needs applying, so a client whose settings the server
//! already has pays one comparison per checkout. Packed, because every idle client holds one
//! and separately allocated pairs would cost several times the memory.

use std::hash::{DefaultHasher, Hash, Hasher};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `name\0value\0…`, sorted by name. Names and values never hold NUL: they travel as C
    /// strings on the wire.
    packed: Box<str>,
    fingerprint: u64,
}

impl Settings {
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Settings {
        let mut s = Settings::default();
        for (k, v) in pairs {
            s.set(k, v);
        }
        s
    }

    fn from_packed(packed: String) -> Settings {
        let fingerprint = if packed.is_empty() {
            0
        } else {
            let mut h = DefaultHasher::new();
            packed.hash(&mut h);
            h.finish()
        };
        Settings {
            packed: packed.into_boxed_str(),
            fingerprint,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.packed.split('\0');
        std::iter::from_fn(move || {
            let k = parts.next().filter(|k| !k.is_empty())?;
            Some((k, parts.next().unwrap_or("")))
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// Zero for no settings; equal settings have equal fingerprints.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Sets `name` to `value`, or removes it with None.
    pub fn put(&mut self, name: &str, value: Option<&str>) {
        if self.get(name) == value {
            return;
        }
        let mut packed = String::with_capacity(self.packed.len() + name.len() + 8);
        let mut placed = false;
        for (k, v) in self.iter() {
            if !placed && k >= name {
                if let Some(value) = value {
                    push(&mut packed, name, value);
                }
                placed = true;
                if k == name {
                    continue;
                }
            }
            push(&mut packed, k, v);
        }
        if !placed {
            if let Some(value) = value {
                push(&mut packed, name, value);
            }
        }
        *self = Settings::from_packed(packed);
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.put(name, Some(value));
    }

    pub fn remove(&mut self, name: &str) {
        self.put(name, None);
    }

    pub fn clear(&mut self) {
        *self = Settings::default();
    }
}

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
    fn sorted_whatever_the_order_of_setting() {
        let a = Settings::new([("timezone", "UTC"), ("application_name", "web")]);
        let b = Settings::new([("application_name", "web"), ("timezone", "UTC")]);
        assert_eq!(a, b);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            vec![("application_name", "web"), ("timezone", "UTC")]
        );
    }

    #[test]
    fn fingerprint_follows_the_values() {
        let mut s = Settings::new([("timezone", "UTC"), ("x.y", "")]);
        let before = s.fingerprint();
        s.set("timezone", "UTC");
        assert_eq!(s.fingerprint(), before);
        s.set("timezone", "Asia/Tokyo");
        assert_ne!(s.fingerprint(), before);
        assert_eq!(s.get("x.y"), Some(""));
        s.remove("x.y");
        s.remove("timezone");
        assert!(s.is_empty());
        assert_eq!(s.fingerprint(), Settings::default().fingerprint());
    }

    #[test]
    fn replaces_in_place_and_inserts_at_the_end() {
        let mut s = Settings::new([("b", "1")]);
        s.set("c", "3");
        s.set("a", "0");
        s.set("b", "2");
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![("a", "0"), ("b", "2"), ("c", "3")]
        );
    }
}
