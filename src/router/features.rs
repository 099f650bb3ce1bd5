//! The session-only features that pin a client to its server connection (advisory locks,
//! LISTEN, temporary tables, WITH HOLD cursors, SQL PREPARE, LOAD), and a set of them in one
//! byte: what a client holds, what a statement may start or end.

/// A session-only feature: while a session has one, it needs the same server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    AdvisoryLock,
    Listen,
    TempTable,
    HoldCursor,
    Prepare,
    Load,
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::AdvisoryLock,
        Feature::Listen,
        Feature::TempTable,
        Feature::HoldCursor,
        Feature::Prepare,
        Feature::Load,
    ];

    /// The name in logs, SHOW CLIENTS and the metrics' `feature` label.
    pub fn name(self) -> &'static str {
        match self {
            Feature::AdvisoryLock => "advisory_lock",
            Feature::Listen => "listen",
            Feature::TempTable => "temp_table",
            Feature::HoldCursor => "hold_cursor",
            Feature::Prepare => "prepare",
            Feature::Load => "load",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of features, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features(u8);

impl Features {
    pub const NONE: Features = Features(0);

    pub fn from_bits(bits: u8) -> Features {
        Features(bits)
    }

    /// The set of `f` alone.
    pub fn one(f: Feature) -> Features {
        Features(f.bit())
    }

    /// These, but none of `other`.
    pub fn without(self, other: Features) -> Features {
        Features(self.0 & !other.0)
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn contains(self, f: Feature) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn insert(&mut self, f: Feature) {
        self.0 |= f.bit();
    }

    pub fn remove(&mut self, f: Feature) {
        self.0 &= !f.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }

    pub fn intersection(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Feature> {
        Feature::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// `advisory_lock,temp_table`; empty for none.
    pub fn names(self) -> String {
        self.iter().map(Feature::name).collect::<Vec<_>>().join(",")
    }
}
