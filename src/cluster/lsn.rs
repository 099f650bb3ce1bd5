//! WAL positions as PostgreSQL writes them (`16/B374D848`) and as byte offsets to compare.

/// A byte position in the WAL. Zero is "none": every position is at or past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `16/B374D848` → a position; None for anything else.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let part = |s: &str| {
            (!s.is_empty() && s.len() <= 8)
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        };
        Some(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_back() {
        assert_eq!(Lsn::parse("0/3000148"), Some(Lsn(0x3000148)));
        let big = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(big, Lsn((0x16 << 32) | 0xB374D848));
        assert_eq!(big.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        for bad in ["x", "1/", "/1", "1/2/3", "123456789/0", "-1/0", "1/g"] {
            assert_eq!(Lsn::parse(bad), None, "{bad}");
        }
        assert!(Lsn::parse("0/10") < Lsn::parse("1/0"));
    }
}
