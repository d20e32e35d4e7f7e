//! Topic filters as sequences of levels, and the three questions
//! authorization asks of them: does a filter match a topic name, does one
//! filter contain another (every topic the second can match, the first
//! matches too), and do two filters overlap (some topic matches both).
//!
//! MQTT 5 section 4.7: `+` is one whole level, `#` is the whole last level
//! and matches the parent level too (`a/#` matches `a`), and neither
//! matches a first level that starts with `$` (`#` does not see `$SYS/...`).
//! Levels may be empty (`a//b`, `/a`).

/// Longest topic filter accepted, in bytes (the MQTT string limit).
pub const MAX_FILTER_BYTES: usize = 65_535;

/// Most levels a filter may have: far more than any fleet's topics, few
/// enough that every algorithm here stays cheap on hostile input.
pub const MAX_LEVELS: usize = 128;

/// One level of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Level {
    Literal(String),
    /// `+`
    Plus,
    /// `#` (only ever the last level)
    Hash,
}

/// A valid topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    levels: Vec<Level>,
}

/// Why a topic filter is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("the topic filter is empty")]
    Empty,
    #[error("the topic filter is {0} bytes; at most {MAX_FILTER_BYTES} are allowed")]
    TooLong(usize),
    #[error("the topic filter has {0} levels; at most {MAX_LEVELS} are allowed")]
    TooManyLevels(usize),
    #[error("`#` must be the whole last level of a topic filter")]
    HashNotLast,
    #[error("`+` and `#` must be whole levels, not part of `{0}`")]
    WildcardInLevel(String),
    #[error("a topic filter may not contain the NUL character")]
    Nul,
}

impl Filter {
    /// Parses and validates a topic filter.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.is_empty() {
            return Err(FilterError::Empty);
        }
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong(text.len()));
        }
        if text.contains('\0') {
            return Err(FilterError::Nul);
        }
        let count = text.split('/').count();
        if count > MAX_LEVELS {
            return Err(FilterError::TooManyLevels(count));
        }
        let mut levels = Vec::with_capacity(count);
        for (i, level) in text.split('/').enumerate() {
            levels.push(match level {
                "+" => Level::Plus,
                "#" if i + 1 == count => Level::Hash,
                "#" => return Err(FilterError::HashNotLast),
                other if other.contains(['+', '#']) => {
                    return Err(FilterError::WildcardInLevel(
                        other.chars().take(64).collect(),
                    ));
                }
                other => Level::Literal(other.to_owned()),
            });
        }
        Ok(Filter { levels })
    }

    /// A filter from levels already checked by the caller (a pattern whose
    /// variables were filled in with values free of `/`, `+` and `#`).
    pub(crate) fn from_levels(levels: Vec<Level>) -> Filter {
        Filter { levels }
    }

    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Whether the first level is a wildcard (then `$`-topics are out of
    /// reach).
    fn starts_wild(&self) -> bool {
        matches!(self.levels.first(), Some(Level::Plus | Level::Hash))
    }

    /// Whether this filter can only match `$`-topics.
    fn starts_dollar(&self) -> bool {
        matches!(self.levels.first(), Some(Level::Literal(l)) if l.starts_with('$'))
    }

    /// Whether the filter matches the topic name `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && self.starts_wild() {
            return false;
        }
        let mut names = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Hash => return true,
                Level::Plus => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Level::Literal(l) => {
                    if names.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// Whether every topic that `other` matches, this filter matches too.
    pub fn contains(&self, other: &Filter) -> bool {
        if other.starts_dollar() && self.starts_wild() {
            return false;
        }
        let mut mine = self.levels.iter();
        let mut theirs = other.levels.iter();
        loop {
            match (mine.next(), theirs.next()) {
                (Some(Level::Hash), _) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Level::Plus), Some(Level::Hash)) => return false,
                (Some(Level::Plus), Some(_)) => {}
                (Some(Level::Literal(a)), Some(Level::Literal(b))) => {
                    if a != b {
                        return false;
                    }
                }
                (Some(Level::Literal(_)), Some(Level::Plus | Level::Hash)) => return false,
            }
        }
    }

    /// Whether some topic matches both filters.
    pub fn overlaps(&self, other: &Filter) -> bool {
        if (self.starts_wild() && other.starts_dollar())
            || (other.starts_wild() && self.starts_dollar())
        {
            return false;
        }
        let mut mine = self.levels.iter();
        let mut theirs = other.levels.iter();
        loop {
            match (mine.next(), theirs.next()) {
                (Some(Level::Hash), _) | (_, Some(Level::Hash)) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Level::Plus), Some(_)) | (Some(_), Some(Level::Plus)) => {}
                (Some(Level::Literal(a)), Some(Level::Literal(b))) => {
                    if a != b {
                        return false;
                    }
                }
            }
        }
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            match level {
                Level::Literal(l) => f.write_str(l)?,
                Level::Plus => f.write_str("+")?,
                Level::Hash => f.write_str("#")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    #[test]
    fn parsing_refuses_bad_filters() {
        for (text, error) in [
            ("", FilterError::Empty),
            ("a/#/b", FilterError::HashNotLast),
            ("a/b#", FilterError::WildcardInLevel("b#".into())),
            ("a+/b", FilterError::WildcardInLevel("a+".into())),
            ("a\0b", FilterError::Nul),
        ] {
            assert_eq!(Filter::parse(text), Err(error), "{text:?}");
        }
        assert_eq!(
            Filter::parse(&"x".repeat(70_000)),
            Err(FilterError::TooLong(70_000))
        );
        assert_eq!(
            Filter::parse(&"a/".repeat(200)),
            Err(FilterError::TooManyLevels(201))
        );
        assert_eq!(f("a//b/").levels().len(), 4);
        assert_eq!(f("devices/+/cmd/#").to_string(), "devices/+/cmd/#");
    }

    #[test]
    fn matching_follows_the_spec() {
        for (filter, topic, expected) in [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("+/+", "/a", true),
            ("/+", "/a", true),
            ("a/b/#", "a", false),
        ] {
            assert_eq!(f(filter).matches(topic), expected, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn containment() {
        for (outer, inner, expected) in [
            ("devices/device-1/#", "devices/device-1/#", true),
            ("devices/device-1/#", "devices/device-1/cmd", true),
            ("devices/device-1/#", "devices/device-1", true),
            ("devices/device-1/#", "devices/+/cmd", false),
            ("devices/device-1/#", "devices/#", false),
            ("devices/device-1/#", "#", false),
            ("devices/+/telemetry", "devices/a/telemetry", true),
            ("devices/+/telemetry", "devices/+/telemetry", true),
            ("devices/+/telemetry", "devices/#", false),
            ("devices/+/telemetry", "devices/a/telemetry/x", false),
            ("#", "a/b/#", true),
            ("#", "$SYS/#", false),
            ("+/#", "$certmq/events", false),
            ("$certmq/#", "$certmq/events/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a", false),
            ("a/b", "a/+", false),
        ] {
            assert_eq!(f(outer).contains(&f(inner)), expected, "{outer} >= {inner}");
        }
    }

    #[test]
    fn overlap() {
        for (a, b, expected) in [
            ("devices/device-1/#", "devices/+/cmd", true),
            ("devices/device-1/#", "devices/device-2/#", false),
            ("a/#", "a", true),
            ("a", "a/+", false),
            ("+/b", "a/+", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/+", true),
            ("a/b/c", "a/+/d", false),
        ] {
            assert_eq!(f(a).overlaps(&f(b)), expected, "{a} & {b}");
            assert_eq!(f(b).overlaps(&f(a)), expected, "{b} & {a}");
        }
    }
}
