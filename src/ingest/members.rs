//! JSON objects that name a member twice.
//!
//! RFC 8259 leaves what a repeated name means to each parser: serde_json
//! keeps the last value, other parsers keep the first or refuse the text
//! (I-JSON, RFC 7493, forbids repeated names). An event such as
//! `{"data": {"tokens": 5, "tokens": 500}}`, or one with two `id`s, is then
//! different usage to different readers of the same bytes (the producer's
//! own logs, a data platform, a second metering system), so validate refuses
//! it (`duplicate_member`) instead of billing one reading of it.
//!
//! The check is a second pass over bytes that already parsed as JSON: it
//! builds nothing but the names of the object it is in, so the parse that
//! keeps numbers exact stays the one every event has always gone through.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::reason::excerpt;

/// Members of one object compared one by one up to this count; a hash set
/// holds the names of a larger object.
const LINEAR_SCAN_MEMBERS_MAX: usize = 16;

/// Ok when no object in `bytes` (JSON text that parses) names a member
/// twice; else the first repeated name and where it is ("... at line L
/// column C").
pub fn check_unique_members(bytes: &[u8]) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Unique::deserialize(&mut de)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Any JSON value whose objects name each member once.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Unique, E> {
        Ok(Unique)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }

    // A number comes here too: serde_json's arbitrary_precision hands it
    // over as an object of one member holding its digits.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut names = Names::default();
        while let Some(Name(name)) = map.next_key()? {
            if let Err(name) = names.insert(name) {
                return Err(de::Error::custom(format!(
                    "an object names the member {} twice",
                    excerpt(&name)
                )));
            }
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
}

/// The member names of one object seen so far: a list while short, then a
/// hash set, so a huge object costs linear time, not quadratic.
#[derive(Default)]
struct Names<'de> {
    few: Vec<Cow<'de, str>>,
    many: HashSet<Cow<'de, str>>,
}

impl<'de> Names<'de> {
    /// `name` back when it was seen already.
    fn insert(&mut self, name: Cow<'de, str>) -> Result<(), Cow<'de, str>> {
        if self.few.contains(&name) || self.many.contains(&name) {
            return Err(name);
        }
        if self.many.is_empty() && self.few.len() < LINEAR_SCAN_MEMBERS_MAX {
            self.few.push(name);
        } else {
            self.many.extend(self.few.drain(..));
            self.many.insert(name);
        }
        Ok(())
    }
}

/// A member name, unescaped (`"a"` and `"\u0061"` are one name), borrowed
/// from the input when it has no escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name<'de>, D::Error> {
        d.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(v.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), String> {
        serde_json::from_str::<serde_json::Value>(text).expect("the test's JSON parses");
        check_unique_members(text.as_bytes())
    }

    #[test]
    fn a_name_repeated_at_any_depth_is_found_with_its_place() {
        let err = check(r#"{"id":"a","data":{"tokens":5,"tokens":500}}"#).unwrap_err();
        assert!(err.contains("\"tokens\" twice"), "{err}");
        assert!(err.contains("line 1 column"), "{err}");
        assert!(check(r#"{"id":"a","id":"b"}"#).is_err());
        assert!(check(r#"[{"x":[{"k":1,"k":1}]}]"#).is_err());
        // One name, escaped once: the same member for every reader.
        assert!(check(r#"{"a":1,"\u0061":2}"#).is_err());
    }

    #[test]
    fn distinct_names_pass_whatever_the_values() {
        check(r#"{"a":1,"b":{"a":1},"c":[{"a":1},{"a":2}],"d":null}"#).unwrap();
        // Exact numbers (arbitrary_precision reaches the visitor as a map).
        check(r#"{"n":123456789012345678901234567890.000000000000000000001,"m":-0,"e":1e400}"#)
            .unwrap();
        check(r#"[1,"s",true,false,null,[],{}]"#).unwrap();
        check(r#""text""#).unwrap();
        // Names differing only in case are different names.
        check(r#"{"Tokens":1,"tokens":2}"#).unwrap();
    }

    #[test]
    fn a_large_object_is_checked_past_the_linear_scan() {
        let members = |extra: &str| {
            let mut m: Vec<String> = (0..200).map(|i| format!("\"k{i}\":{i}")).collect();
            m.push(extra.to_string());
            format!("{{{}}}", m.join(","))
        };
        check(&members(r#""k200":0"#)).unwrap();
        let err = check(&members(r#""k3":0"#)).unwrap_err();
        assert!(err.contains("\"k3\" twice"), "{err}");
        // The switch from list to set keeps every name seen before it.
        let at_the_switch = (0..=LINEAR_SCAN_MEMBERS_MAX)
            .map(|i| format!("\"k{i}\":0"))
            .chain(["\"k0\":1".to_string()])
            .collect::<Vec<_>>()
            .join(",");
        assert!(check(&format!("{{{at_the_switch}}}")).is_err());
    }
}
