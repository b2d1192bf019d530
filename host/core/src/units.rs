//! Quantities written for people in the config file and on the command line: durations
//! (`500ms`, `2s`, `7d`) and sizes (`64KiB`, `1GiB`), each parsed with an error that says
//! what was expected, and written back the way a person would write it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration jobhost takes: a hundred years, far inside every timestamp's range.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A duration written for people: `500ms`, `2s`, `5m`, `1h`, `7d`, or `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// Milliseconds per duration unit, largest first (the order [`fmt::Display`] tries them in).
const DURATION_UNITS: &[(&str, u64)] = &[("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// A size written for people: `512`, `64KiB`, `64MiB`, `1GiB` (also `KB`/`MB`/`GB`, decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Bytes per size unit, binary ones first (the ones [`fmt::Display`] writes).
const SIZE_UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
];

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let millis = parse_quantity(text, "a duration", "500ms, 2s, 5m or 7d", DURATION_UNITS, false)?;
        let duration = Duration::from_millis(millis);
        if duration > MAX_DURATION {
            return Err(format!(
                "`{}` is too long: durations are at most {}",
                text.trim(),
                HumanDuration(MAX_DURATION)
            ));
        }
        Ok(HumanDuration(duration))
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_quantity(text, "a size", "512KiB or 64MiB", SIZE_UNITS, true).map(ByteSize)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        write_quantity(f, millis, DURATION_UNITS)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_quantity(f, self.0, &SIZE_UNITS[..4])
    }
}

/// Parses a whole number followed by one of `units`. A bare number is allowed when
/// `bare_is_smallest` (it counts in the last unit) and, for any quantity, when it is 0.
fn parse_quantity(
    text: &str,
    what: &str,
    example: &str,
    units: &[(&str, u64)],
    bare_is_smallest: bool,
) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not {what}: write a whole number and a unit, like {example}"))?;
    let per_unit = match unit.trim() {
        "" if bare_is_smallest || amount == 0 => 1,
        "" => {
            return Err(format!("`{text}` has no unit: {what} needs one, like {example}"));
        }
        unit => units.iter().find(|(name, _)| *name == unit).map(|(_, per_unit)| *per_unit).ok_or_else(|| {
            let names: Vec<&str> = units.iter().map(|(name, _)| *name).collect();
            format!("`{text}` has unknown unit `{unit}`: use one of {} (like {example})", names.join(", "))
        })?,
    };
    amount.checked_mul(per_unit).ok_or_else(|| format!("`{text}` is too large for {what}"))
}

/// Writes `value` in the largest of `units` (largest first) that divides it exactly.
fn write_quantity(f: &mut fmt::Formatter<'_>, value: u64, units: &[(&str, u64)]) -> fmt::Result {
    match units.iter().find(|(_, per_unit)| value.is_multiple_of(*per_unit) && value > 0) {
        Some((name, per_unit)) => write!(f, "{}{name}", value / per_unit),
        None => write!(f, "0{}", units[units.len() - 1].0),
    }
}

/// Reads a value written either as a string (`"2s"`) or a bare YAML number (`512`). The
/// parse error is raised while the value is being visited, so serde_yaml names its full key.
pub(crate) fn deserialize_from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    struct TextOrNumber<T>(std::marker::PhantomData<T>);

    impl<T: FromStr<Err = String>> serde::de::Visitor<'_> for TextOrNumber<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string like 500ms or 64MiB")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
            text.parse().map_err(E::custom)
        }

        fn visit_u64<E: serde::de::Error>(self, number: u64) -> Result<T, E> {
            self.visit_str(&number.to_string())
        }
    }

    deserializer.deserialize_any(TextOrNumber(std::marker::PhantomData))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_from_str(deserializer)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_from_str(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        let ms = |s: &str| s.parse::<HumanDuration>().map(|d| d.0.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("2s"), Ok(2_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("7d"), Ok(604_800_000));
        assert_eq!(ms("0"), Ok(0));
        assert!(ms("5").unwrap_err().contains("has no unit: a duration needs one, like 500ms"));
        assert!(ms("106751991167d").unwrap_err().contains("too long"));
        assert!(ms("99999999999999999999s").unwrap_err().contains("not a duration"));
        assert!(ms("2 weeks").unwrap_err().contains("unknown unit"));
        assert!(ms("fast").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn sizes_parse_in_every_unit() {
        let bytes = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(bytes("512"), Ok(512));
        assert_eq!(bytes("64KiB"), Ok(64 << 10));
        assert_eq!(bytes("64MiB"), Ok(64 << 20));
        assert_eq!(bytes("1GiB"), Ok(1 << 30));
        assert_eq!(bytes("2MB"), Ok(2_000_000));
        assert!(bytes("64mb").unwrap_err().contains("unknown unit"));
    }
}
