//! Durations, sizes and counts as the config writes them, each read with its bounds (so a
//! value out of range is an error at its place in the file) and written back in the same
//! form (for `proxyd check --print`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest duration any key takes (7 days): far past any sane time-out, and far from
/// what `Instant` arithmetic and doubling back-offs could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Memory held per request or per connection (`buffer_body`, `buffer_response`,
/// `retries.max_body`): 1 GiB at most.
pub const MAX_BUFFER: u64 = 1 << 30;

/// Any other size (`max_body`, `max_memory`, `min_free_memory`): 1 TiB at most.
pub const MAX_SIZE: u64 = 1 << 40;

/// Client connections per listener at most: far below what tokio's semaphore takes
/// (`Semaphore::MAX_PERMITS`) and above any system's open-file limit.
pub const MAX_CONNECTIONS: u64 = 1_000_000;

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); expected e.g. \"500ms\" or \"30s\""))?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration {s:?} is too long: at most {}",
            show_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// A duration as the config writes it: `"75s"`, `"100ms"`, `"7d"`.
pub fn show_duration(d: Duration) -> String {
    // Minutes are left out: "90s" reads plainer than "1m 30s", and "1m" than "60s" no better.
    const UNITS: [(u64, &str); 3] = [(86400, "d"), (3600, "h"), (1, "s")];
    if d.subsec_nanos() == 0 {
        let s = d.as_secs();
        let (n, unit) = UNITS
            .iter()
            .find(|(n, _)| s % n == 0 && s > 0)
            .map_or((0, "s"), |(n, u)| (s / n, *u));
        return format!("{n}{unit}");
    }
    if d.subsec_nanos() % 1_000_000 == 0 {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(d).to_string()
}

/// `with = "units::duration"`: a duration up to [`MAX_DURATION`].
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&show_duration(*d))
    }
}

/// `with = "units::nonzero_duration"`: a duration above 0 up to [`MAX_DURATION`].
pub mod nonzero_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let d = duration::deserialize(d)?;
        if d.is_zero() {
            return Err(serde::de::Error::custom("must be longer than 0s"));
        }
        Ok(d)
    }

    pub use super::duration::serialize;
}

/// A duration that keeps its place in the file (`Option<Spanned<Secs>>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secs, D::Error> {
        nonzero_duration::deserialize(d).map(Secs)
    }
}

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        duration::serialize(&self.0, s)
    }
}

fn parse_size<E: serde::de::Error>(raw: RawSize, max: u64) -> Result<u64, E> {
    let n = match raw {
        RawSize::Int(n) => n,
        RawSize::Text(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| {
                E::custom(format!(
                    "invalid size {s:?}; expected e.g. \"64KiB\" or \"1MiB\""
                ))
            })?,
    };
    if n > max {
        return Err(E::custom(format!(
            "size {} is too large: at most {}",
            show_size(n),
            show_size(max)
        )));
    }
    Ok(n)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Int(u64),
    Text(String),
}

/// A size as the config writes it: `"1MiB"` when it is a whole number of KiB, MiB, ...
pub fn show_size(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    UNITS
        .iter()
        .find(|(u, _)| n > 0 && n % u == 0)
        .map_or_else(|| n.to_string(), |(u, name)| format!("{}{name}", n / u))
}

/// `with = "units::size"`: bytes (`1048576`) or a size (`"1MiB"`), up to [`MAX_SIZE`].
pub mod size {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse_size(RawSize::deserialize(d)?, MAX_SIZE)
    }

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&show_size(*n))
    }
}

/// `with = "units::buffer"`: a size held in memory, up to [`MAX_BUFFER`].
pub mod buffer {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse_size(RawSize::deserialize(d)?, MAX_BUFFER)
    }

    pub use super::size::serialize;
}

/// `with = "units::opt_size"`: an optional size (`max_memory: "512MiB"`), 1 KiB (a unit
/// left out: `512` is bytes) to [`MAX_SIZE`].
pub mod opt_size {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let n = size::deserialize(d)?;
        if n < 1 << 10 {
            return Err(serde::de::Error::custom(format!(
                "size {} is too small: at least 1KiB (a bare number is bytes; write e.g. \"512MiB\")",
                show_size(n)
            )));
        }
        Ok(Some(n))
    }

    pub fn serialize<S: Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => size::serialize(n, s),
            None => s.serialize_none(),
        }
    }
}

/// `with = "units::opt_any_size"`: an optional size, 0 included (`routes[].max_body`).
pub mod opt_any_size {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        size::deserialize(d).map(Some)
    }

    pub use super::opt_size::serialize;
}

/// A whole number from `MIN` to `MAX`: `deserialize_with = "units::count::<_, _, 1, 100>"`.
pub fn count<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let n = u64::deserialize(d)?;
    in_range(n, MIN, MAX)
        .and_then(|n| T::try_from(n).map_err(|_| out_of_range(n, MIN, MAX)))
        .map_err(serde::de::Error::custom)
}

/// [`count`] for an optional key.
pub fn opt_count<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    count::<D, T, MIN, MAX>(d).map(Some)
}

/// `n` when it is from `min` to `max`, else why not.
pub fn in_range(n: u64, min: u64, max: u64) -> Result<u64, String> {
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(out_of_range(n, min, max))
    }
}

fn out_of_range(n: u64, min: u64, max: u64) -> String {
    format!("{n} is out of range: expected a number from {min} to {max}")
}

/// Rates (`"100/s"`) and address ranges (`"10.0.0.0/8"`) are written as they are read.
impl Serialize for super::limits::Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for super::limits::Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_back_as_written() {
        for d in ["75s", "100ms", "2h", "7d", "1500ms", "0s"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(show_duration(parsed), d);
        }
        assert_eq!(show_duration(Duration::from_micros(1500)), "1ms 500us");
        assert!(parse_duration("999999999999d")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_duration("8d").is_err());
        for n in [0, 1, 1024, 1 << 20, 3 << 30, 1000] {
            let shown = show_size(n);
            let back: u64 = shown
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .unwrap();
            assert_eq!(back, n, "{shown}");
        }
    }
}
