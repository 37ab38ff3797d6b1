//! How one setting's value is read (from a flag's text or from the file's TOML value) and shown
//! (in `--help`, the reference docs and their consistency test). Every plain setting's type
//! implements [`Setting`]; `settings!` uses it for the file, the flag and the default shown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::session::access_log::Format;

/// An optional setting (`off` when not set). An alias, not `Option` written out: clap reads
/// `Option<Option<T>>` in a flag's type as "a flag with an optional value".
pub type Maybe<T> = Option<T>;

/// A list setting; an alias for the same reason as [`Maybe`] (clap reads `Option<Vec<T>>` as
/// a repeated flag).
pub type List<T> = Vec<T>;

/// A value a setting can hold.
pub trait Setting: Sized {
    /// From its text: a flag's value, or a string in the file.
    fn parse(s: &str) -> Result<Self, String>;

    /// From the file's value: strings go through [`Setting::parse`]; numbers, booleans, lists
    /// and tables override this.
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Self::parse(&s),
            other => Err(format!("expected a string, found {}", other.type_str())),
        }
    }

    /// As written in the file, the flag and the docs (`10s`, `65536`, `off`).
    fn show(&self) -> String;

    /// From the file: through [`Setting::from_toml`], unless the type walks its own shape
    /// (a table, so that an error names the key inside it).
    fn deserialize_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::Deserialize;
        let v = toml::Value::deserialize(d)?;
        Self::from_toml(v).map_err(serde::de::Error::custom)
    }

    /// What `--help` calls the flag's value.
    fn value_name() -> &'static str;

    /// The flag's shape: a boolean takes no value (`--open`).
    fn arg(a: clap::Arg) -> clap::Arg {
        a.value_name(Self::value_name())
    }
}

/// The file's deserializer for a setting: the value's own span stays on the error (toml puts
/// it there), so a bad value reports its line and column.
pub fn de<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Setting,
{
    T::deserialize_setting(d)
}

/// One setting value as serde sees it (inside a table setting).
struct Seeded<T>(T);

impl<'de, T: Setting> serde::Deserialize<'de> for Seeded<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize_setting(d).map(Seeded)
    }
}

/// clap's value parser for a setting's flag.
pub fn flag<T: Setting>(s: &str) -> Result<T, String> {
    T::parse(s)
}

impl Setting for Duration {
    fn value_name() -> &'static str {
        "DUR"
    }
    fn parse(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("invalid duration \"{s}\": {e} (write 500ms, 10s, 5m)"))
    }
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

macro_rules! integer_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn value_name() -> &'static str {
                "N"
            }
            fn parse(s: &str) -> Result<Self, String> {
                s.trim()
                    .parse()
                    .map_err(|_| format!("\"{s}\" is not a whole number from 0 to {}", <$t>::MAX))
            }
            fn from_toml(v: toml::Value) -> Result<Self, String> {
                match v {
                    toml::Value::Integer(n) => <$t>::try_from(n)
                        .map_err(|_| format!("{n} is not a whole number from 0 to {}", <$t>::MAX)),
                    other => Err(format!("expected a number, found {}", other.type_str())),
                }
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_setting!(usize, u32, u64);

impl Setting for bool {
    fn value_name() -> &'static str {
        "BOOL"
    }
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(format!("\"{s}\" is not true or false")),
        }
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Boolean(b) => Ok(b),
            other => Err(format!(
                "expected true or false, found {}",
                other.type_str()
            )),
        }
    }
    fn show(&self) -> String {
        if *self { "true" } else { "false" }.to_owned()
    }
    fn arg(a: clap::Arg) -> clap::Arg {
        a.value_name(Self::value_name())
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
    }
}

impl Setting for String {
    fn value_name() -> &'static str {
        "TEXT"
    }
    fn parse(s: &str) -> Result<Self, String> {
        Ok(s.to_owned())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl Setting for PathBuf {
    fn value_name() -> &'static str {
        "FILE"
    }
    fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an empty path".into());
        }
        Ok(PathBuf::from(s))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl Setting for SocketAddr {
    fn value_name() -> &'static str {
        "HOST:PORT"
    }
    fn parse(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("not an address:port: \"{s}\""))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Setting for IpNet {
    fn value_name() -> &'static str {
        "CIDR"
    }
    fn parse(s: &str) -> Result<Self, String> {
        super::parse_cidr(s)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Setting for Format {
    fn value_name() -> &'static str {
        "FORMAT"
    }
    fn parse(s: &str) -> Result<Self, String> {
        Format::parse(s.trim()).ok_or_else(|| format!("\"{s}\" is not one of text, json, off"))
    }
    fn show(&self) -> String {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Off => "off",
        }
        .to_owned()
    }
}

/// Not set: `off` (also written `none`, or `unlimited` for a rate).
impl<T: Setting> Setting for Option<T> {
    fn value_name() -> &'static str {
        T::value_name()
    }
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "none" | "unlimited" => Ok(None),
            _ => T::parse(s).map(Some),
        }
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Self::parse(&s),
            other => T::from_toml(other).map(Some),
        }
    }
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "off".to_owned(), T::show)
    }
}

/// A list: an array in the file, comma-separated on the command line.
impl<T: Setting> Setting for Vec<T> {
    fn value_name() -> &'static str {
        "LIST"
    }
    fn parse(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(T::parse)
            .collect()
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Array(items) => items.into_iter().map(T::from_toml).collect(),
            other => Err(format!("expected a list, found {}", other.type_str())),
        }
    }
    fn show(&self) -> String {
        if self.is_empty() {
            return "none".to_owned();
        }
        self.iter().map(T::show).collect::<Vec<_>>().join(",")
    }
}

/// Names to values: a table in the file, `name=value,...` on the command line.
impl<T: Setting> Setting for HashMap<String, T> {
    fn deserialize_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::Deserialize;
        let map = HashMap::<String, Seeded<T>>::deserialize(d)?;
        Ok(map.into_iter().map(|(k, Seeded(v))| (k, v)).collect())
    }
    fn value_name() -> &'static str {
        "NAME=VALUE,..."
    }
    fn parse(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (k, v) = e
                    .split_once('=')
                    .ok_or_else(|| format!("\"{e}\" is not name=value"))?;
                T::parse(v).map(|v| (k.trim().to_owned(), v))
            })
            .collect()
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Table(t) => t
                .into_iter()
                .map(|(k, v)| {
                    T::from_toml(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|m| format!("{k}: {m}"))
                })
                .collect(),
            other => Err(format!("expected a table, found {}", other.type_str())),
        }
    }
    fn show(&self) -> String {
        if self.is_empty() {
            return "none".to_owned();
        }
        let mut entries: Vec<String> = self
            .iter()
            .map(|(k, v)| format!("{k}={}", v.show()))
            .collect();
        entries.sort();
        entries.join(",")
    }
}

/// Bytes per second, each direction: `10MB/s`, `512KiB/s`, `100Mbit/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth(pub u64);

impl Setting for Bandwidth {
    fn value_name() -> &'static str {
        "RATE"
    }
    fn parse(s: &str) -> Result<Self, String> {
        crate::rate::parse_bandwidth(s).map(Bandwidth)
    }
    fn show(&self) -> String {
        format!("{}B/s", self.0)
    }
}

/// Events per period: `50/s`, `600/m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerPeriod {
    pub count: u64,
    pub per: Duration,
}

impl Setting for PerPeriod {
    fn value_name() -> &'static str {
        "COUNT/PERIOD"
    }
    fn parse(s: &str) -> Result<Self, String> {
        crate::rate::parse_per_second(s).map(|(count, per)| PerPeriod { count, per })
    }
    fn show(&self) -> String {
        let unit = if self.per >= Duration::from_secs(60) {
            "m"
        } else {
            "s"
        };
        format!("{}/{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is shown reads back as the same value, so the docs' defaults can be pasted.
    #[test]
    fn shown_values_parse_back() {
        fn round<T: Setting + PartialEq + std::fmt::Debug>(v: T) {
            assert_eq!(T::parse(&v.show()).unwrap(), v, "{}", v.show());
        }
        round(Duration::from_secs(600));
        round(Duration::from_millis(1500));
        round(65_536usize);
        round(true);
        round(Some(Bandwidth(10_000_000)));
        round(None::<Bandwidth>);
        round(PerPeriod {
            count: 50,
            per: Duration::from_secs(1),
        });
        round(vec!["127.0.0.0/8".parse::<IpNet>().unwrap()]);
        round(HashMap::from([("bob".to_owned(), None::<Bandwidth>)]));
        assert!(usize::from_toml(toml::Value::Integer(-1)).is_err());
        assert!(Duration::parse("soon").unwrap_err().contains("soon"));
    }
}
