//! A small JSONPath subset for meter definitions (`value_property`, `group_by`).
//!
//! Supported, after a mandatory leading `$`:
//!
//! * `.name` — member by shorthand name: ASCII letters, digits, `_`, `-`, and
//!   any non-ASCII character (a little wider than RFC 9535, which forbids `-`,
//!   because event property names like `model-id` are common);
//! * `['name']` / `["name"]` — member by quoted name, with the escapes `\\`,
//!   `\'`, `\"`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`;
//! * `[index]` — array element; a negative index counts from the end (`[-1]`
//!   is the last element), as in RFC 9535.
//!
//! ASCII spaces are allowed just inside brackets. Wildcards, slices, filters
//! and recursive descent are deliberately unsupported: a meter reads exactly
//! one value per event, so every path must select at most one node.
//!
//! Paths are parsed once, when meters are loaded, into a [`JsonPath`] whose
//! [`JsonPath::get`] is a plain walk with no allocation.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// One step of a compiled path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Object member by name.
    Member(String),
    /// Array element; negative counts from the end.
    Index(i64),
}

/// A compiled JSONPath; `Display` gives back the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPath {
    text: String,
    segments: Vec<Segment>,
}

/// Why a path did not parse; `position` is a byte offset into `path`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath {path:?} at byte {position}: {problem}")]
pub struct JsonPathError {
    pub path: String,
    pub position: usize,
    pub problem: &'static str,
}

impl JsonPath {
    /// Parses `text`; see the module docs for the grammar.
    pub fn parse(text: &str) -> Result<JsonPath, JsonPathError> {
        Parser::new(text).parse()
    }

    /// The node selected in `root`, or `None` when a member or element is absent
    /// or a step meets a value of the wrong kind (e.g. `.name` on an array).
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.segments
            .iter()
            .try_fold(root, |node, segment| match (segment, node) {
                (Segment::Member(name), Value::Object(map)) => map.get(name),
                (Segment::Index(index), Value::Array(items)) => {
                    resolve_index(*index, items.len()).and_then(|i| items.get(i))
                }
                _ => None,
            })
    }

    /// The steps after `$`; empty for `$` itself.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The text the path was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for JsonPath {
    type Err = JsonPathError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JsonPath::parse(text)
    }
}

/// Maps a possibly negative index onto `0..len`.
fn resolve_index(index: i64, len: usize) -> Option<usize> {
    if index >= 0 {
        usize::try_from(index).ok()
    } else {
        let from_end = usize::try_from(index.unsigned_abs()).ok()?;
        len.checked_sub(from_end)
    }
}

fn is_shorthand_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || !c.is_ascii()
}

/// A cursor over the path text.
struct Parser<'t> {
    text: &'t str,
    pos: usize,
}

impl<'t> Parser<'t> {
    fn new(text: &'t str) -> Self {
        Parser { text, pos: 0 }
    }

    fn error(&self, problem: &'static str) -> JsonPathError {
        JsonPathError {
            path: self.text.to_owned(),
            position: self.pos,
            problem,
        }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, expected: char) -> bool {
        if self.peek() == Some(expected) {
            self.pos += expected.len_utf8();
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while self.eat(' ') {}
    }

    fn parse(mut self) -> Result<JsonPath, JsonPathError> {
        if !self.eat('$') {
            return Err(self.error("a path must start with `$`"));
        }
        let mut segments = Vec::new();
        while let Some(c) = self.bump() {
            let segment = match c {
                '.' => self.shorthand()?,
                '[' => self.bracket()?,
                _ => return Err(self.error("expected `.` or `[`")),
            };
            segments.push(segment);
        }
        Ok(JsonPath {
            text: self.text.to_owned(),
            segments,
        })
    }

    fn shorthand(&mut self) -> Result<Segment, JsonPathError> {
        let start = self.pos;
        while self.peek().is_some_and(is_shorthand_char) {
            self.bump();
        }
        if self.pos == start {
            return Err(self.error("expected a member name after `.`"));
        }
        Ok(Segment::Member(self.text[start..self.pos].to_owned()))
    }

    fn bracket(&mut self) -> Result<Segment, JsonPathError> {
        self.skip_spaces();
        let segment = match self.peek() {
            Some(quote @ ('\'' | '"')) => {
                self.bump();
                Segment::Member(self.quoted(quote)?)
            }
            Some(c) if c == '-' || c.is_ascii_digit() => Segment::Index(self.index()?),
            _ => return Err(self.error("expected a quoted name or an index in `[...]`")),
        };
        self.skip_spaces();
        if !self.eat(']') {
            return Err(self.error("expected `]`"));
        }
        Ok(segment)
    }

    fn quoted(&mut self, quote: char) -> Result<String, JsonPathError> {
        let mut name = String::new();
        loop {
            match self.bump() {
                None => return Err(self.error("unterminated quoted name")),
                Some(c) if c == quote => return Ok(name),
                Some('\\') => {
                    let unescaped = match self.bump() {
                        Some('\\') => '\\',
                        Some('\'') => '\'',
                        Some('"') => '"',
                        Some('/') => '/',
                        Some('b') => '\u{8}',
                        Some('f') => '\u{c}',
                        Some('n') => '\n',
                        Some('r') => '\r',
                        Some('t') => '\t',
                        _ => return Err(self.error("unsupported escape in quoted name")),
                    };
                    name.push(unescaped);
                }
                Some(c) => name.push(c),
            }
        }
    }

    fn index(&mut self) -> Result<i64, JsonPathError> {
        let start = self.pos;
        let negative = self.eat('-');
        let digits_start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
        let digits = &self.text[digits_start..self.pos];
        if digits.is_empty() {
            return Err(self.error("expected digits in index"));
        }
        // RFC 9535: no leading zeros and no `-0`, so each index has one spelling.
        if (digits.len() > 1 && digits.starts_with('0')) || (negative && digits == "0") {
            return Err(self.error("index has a leading zero or is -0"));
        }
        self.text[start..self.pos]
            .parse::<i64>()
            .map_err(|_| self.error("index out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get(path: &str, value: &Value) -> Option<Value> {
        JsonPath::parse(path).unwrap().get(value).cloned()
    }

    #[test]
    fn root_selects_the_whole_value() {
        let data = json!({"a": 1});
        assert_eq!(get("$", &data), Some(data.clone()));
        assert!(JsonPath::parse("$").unwrap().segments().is_empty());
    }

    #[test]
    fn dot_members_nest() {
        let data = json!({"usage": {"tokens": {"input": 7}}});
        assert_eq!(get("$.usage.tokens.input", &data), Some(json!(7)));
        assert_eq!(get("$.usage.missing", &data), None);
    }

    #[test]
    fn shorthand_accepts_dash_underscore_digits_and_unicode() {
        let data = json!({"model-id": "a", "_x9": "b", "größe": "c", "42": "d"});
        assert_eq!(get("$.model-id", &data), Some(json!("a")));
        assert_eq!(get("$._x9", &data), Some(json!("b")));
        assert_eq!(get("$.größe", &data), Some(json!("c")));
        assert_eq!(get("$.42", &data), Some(json!("d")));
    }

    #[test]
    fn bracket_names_with_both_quotes_and_escapes() {
        let data = json!({"a b": 1, "it's": 2, "say \"hi\"": 3, "back\\slash": 4, "dot.ted": 5});
        assert_eq!(get("$['a b']", &data), Some(json!(1)));
        assert_eq!(get(r#"$["a b"]"#, &data), Some(json!(1)));
        assert_eq!(get(r"$['it\'s']", &data), Some(json!(2)));
        assert_eq!(get(r#"$["it's"]"#, &data), Some(json!(2)));
        assert_eq!(get(r#"$["say \"hi\""]"#, &data), Some(json!(3)));
        assert_eq!(get(r"$['back\\slash']", &data), Some(json!(4)));
        assert_eq!(get("$['dot.ted']", &data), Some(json!(5)));
        assert_eq!(get("$[ 'a b' ]", &data), Some(json!(1)));
    }

    #[test]
    fn indexes_including_negative() {
        let data = json!({"items": [10, 20, {"x": 30}]});
        assert_eq!(get("$.items[0]", &data), Some(json!(10)));
        assert_eq!(get("$.items[2].x", &data), Some(json!(30)));
        assert_eq!(get("$.items[-1].x", &data), Some(json!(30)));
        assert_eq!(get("$.items[-3]", &data), Some(json!(10)));
        assert_eq!(get("$.items[-4]", &data), None);
        assert_eq!(get("$.items[3]", &data), None);
        assert_eq!(get("$.items[ 1 ]", &data), Some(json!(20)));
        assert_eq!(get(&format!("$.items[{}]", i64::MIN), &data), None);
    }

    #[test]
    fn wrong_kinds_select_nothing() {
        let data = json!({"items": [1], "obj": {"0": "zero"}, "n": 5});
        assert_eq!(get("$.items.length", &data), None);
        assert_eq!(get("$.obj[0]", &data), None);
        assert_eq!(get("$.obj['0']", &data), Some(json!("zero")));
        assert_eq!(get("$.n.x", &data), None);
    }

    #[test]
    fn null_is_a_value_not_an_absence() {
        let data = json!({"a": null});
        assert_eq!(get("$.a", &data), Some(Value::Null));
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "",
            "tokens",
            "$.",
            "$..a",
            "$.a.",
            "$[",
            "$[]",
            "$['a'",
            "$['a]",
            "$[a]",
            "$[*]",
            "$.*",
            "$[0:2]",
            "$[?(@.a)]",
            "$[01]",
            "$[-0]",
            "$[-]",
            "$[99999999999999999999]",
            r"$['\q']",
            "$ .a",
            "$.a b",
        ] {
            assert!(JsonPath::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn error_reports_position() {
        let err = JsonPath::parse("$.a[x]").unwrap_err();
        assert_eq!(err.position, 4);
        assert_eq!(err.path, "$.a[x]");
        assert!(err.to_string().contains("byte 4"));
    }

    #[test]
    fn display_and_from_str_round_trip() {
        let path: JsonPath = "$.a['b c'][1]".parse().unwrap();
        assert_eq!(path.to_string(), "$.a['b c'][1]");
        assert_eq!(path.as_str(), "$.a['b c'][1]");
        assert_eq!(
            path.segments(),
            &[
                Segment::Member("a".to_owned()),
                Segment::Member("b c".to_owned()),
                Segment::Index(1)
            ]
        );
    }
}
