//! Time settings. As in PgBouncer, a bare number means seconds; a string may carry a unit
//! ("500ms", "15s", "2min", "1h"). Zero disables the timeout where the setting says so.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Seconds(pub Duration);

impl Seconds {
    pub const fn secs(s: u64) -> Seconds {
        Seconds(Duration::from_secs(s))
    }

    /// `None` for zero: the setting is disabled.
    pub fn enabled(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

fn from_secs_f64(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("invalid duration {s}"))
}

pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration \"{text}\""))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "us" => 0.000_001,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => {
            return Err(format!(
                "invalid duration \"{text}\": unknown unit (use ms, s, min, h or d)"
            ))
        }
    };
    from_secs_f64(n * scale)
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        let dur = match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected seconds or a duration string"))?
        {
            Raw::Int(i) if i >= 0 => Ok(Duration::from_secs(i as u64)),
            Raw::Int(i) => Err(format!("invalid duration {i}: negative")),
            Raw::Float(f) => from_secs_f64(f),
            Raw::Text(s) => parse(&s),
        };
        dur.map(Seconds).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.subsec_nanos() == 0 {
            s.serialize_u64(self.0.as_secs())
        } else {
            s.serialize_f64(self.0.as_secs_f64())
        }
    }
}

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1.5 h"), Ok(Duration::from_secs(5400)));
        assert!(parse("ten").is_err());
        assert!(parse("5 weeks").is_err());
    }
}
