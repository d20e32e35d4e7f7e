//! Topic patterns of policy rules: MQTT filters whose levels may hold
//! variables taken from the verified certificate and the connection,
//! `devices/${CommonName}/#`.
//!
//! A variable is replaced by its value for one principal. A value that is
//! empty or holds `/`, `+` or `#` would widen the rule (a CN of `#` must not
//! grant the world), so a pattern with such a value matches nothing for
//! that principal: it is as if the rule were not there.

use crate::topic::{Filter, Level, MAX_FILTER_BYTES, MAX_LEVELS};

/// The variables a pattern may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Var {
    CommonName,
    DeviceSn,
    CaSn,
    ClientId,
    /// `${Subject.O}`
    SubjectO,
    /// `${Subject.OU}`
    SubjectOu,
}

impl Var {
    const ALL: [(&'static str, Var); 6] = [
        ("CommonName", Var::CommonName),
        ("DeviceSn", Var::DeviceSn),
        ("CaSn", Var::CaSn),
        ("ClientId", Var::ClientId),
        ("Subject.O", Var::SubjectO),
        ("Subject.OU", Var::SubjectOu),
    ];

    fn from_name(name: &str) -> Option<Var> {
        Var::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    pub fn name(self) -> &'static str {
        Var::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// Who a decision is for: what the handshake proved, and the client id
/// the connection chose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub common_name: String,
    /// Canonical upper-case hex, as the admin API shows it.
    pub device_sn: String,
    pub ca_sn: String,
    pub client_id: String,
    pub subject_o: String,
    pub subject_ou: String,
}

impl Principal {
    fn value(&self, var: Var) -> &str {
        match var {
            Var::CommonName => &self.common_name,
            Var::DeviceSn => &self.device_sn,
            Var::CaSn => &self.ca_sn,
            Var::ClientId => &self.client_id,
            Var::SubjectO => &self.subject_o,
            Var::SubjectOu => &self.subject_ou,
        }
    }
}

/// A piece of a literal level.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternLevel {
    Plus,
    Hash,
    Parts(Vec<Part>),
}

/// A rule's topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    levels: Vec<PatternLevel>,
}

/// Why a pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(transparent)]
    Filter(#[from] crate::topic::FilterError),
    #[error(
        "unknown variable ${{{0}}}; the variables are ${{CommonName}}, ${{DeviceSn}}, ${{CaSn}}, ${{ClientId}}, ${{Subject.O}} and ${{Subject.OU}}"
    )]
    UnknownVariable(String),
    #[error("`${{` without a closing `}}`")]
    Unclosed,
}

impl Pattern {
    /// Parses `devices/${CommonName}/#`: a valid MQTT filter once every
    /// `${...}` is replaced by a plain value.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        // The filter rules apply to the pattern with placeholders.
        let mut shape = String::with_capacity(text.len());
        let mut levels = Vec::new();
        for level in text.split('/') {
            let parts = parse_level(level)?;
            for part in &parts {
                match part {
                    Part::Text(t) => shape.push_str(t),
                    Part::Var(_) => shape.push('v'),
                }
            }
            shape.push('/');
            levels.push(match parts.as_slice() {
                [Part::Text(t)] if t == "+" => PatternLevel::Plus,
                [Part::Text(t)] if t == "#" => PatternLevel::Hash,
                _ => PatternLevel::Parts(parts),
            });
        }
        shape.pop();
        Filter::parse(&shape)?;
        Ok(Pattern {
            text: text.to_owned(),
            levels,
        })
    }

    /// A pattern without variables: `filter` as it is (a `${...}` in it
    /// is text). `text` is how it was written, for messages.
    pub fn literal(filter: &Filter, text: &str) -> Pattern {
        let levels = filter
            .levels()
            .iter()
            .map(|level| match level {
                Level::Plus => PatternLevel::Plus,
                Level::Hash => PatternLevel::Hash,
                Level::Literal(l) => PatternLevel::Parts(vec![Part::Text(l.clone())]),
            })
            .collect();
        Pattern {
            text: text.to_owned(),
            levels,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the pattern uses `var`.
    pub fn uses(&self, var: Var) -> bool {
        self.levels.iter().any(|l| match l {
            PatternLevel::Parts(parts) => parts.contains(&Part::Var(var)),
            _ => false,
        })
    }

    /// The filter this pattern is for `who`; `None` when a variable's value
    /// is empty or holds `/`, `+`, `#` (or NUL), or the result is too long.
    pub fn instantiate(&self, who: &Principal) -> Option<Filter> {
        let mut levels = Vec::with_capacity(self.levels.len().min(MAX_LEVELS));
        let mut bytes = 0usize;
        for level in &self.levels {
            levels.push(match level {
                PatternLevel::Plus => Level::Plus,
                PatternLevel::Hash => Level::Hash,
                PatternLevel::Parts(parts) => {
                    let mut literal = String::new();
                    for part in parts {
                        match part {
                            Part::Text(t) => literal.push_str(t),
                            Part::Var(var) => {
                                let value = who.value(*var);
                                if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
                                    return None;
                                }
                                literal.push_str(value);
                            }
                        }
                    }
                    // A `$` first level only by the pattern's own text
                    // (`$certmq/events/#`), never by a certificate's value.
                    if levels.is_empty()
                        && literal.starts_with('$')
                        && !matches!(parts.first(), Some(Part::Text(t)) if t.starts_with('$'))
                    {
                        return None;
                    }
                    bytes += literal.len() + 1;
                    Level::Literal(literal)
                }
            });
        }
        (bytes <= MAX_FILTER_BYTES).then(|| Filter::from_levels(levels))
    }
}

fn parse_level(level: &str) -> Result<Vec<Part>, PatternError> {
    let mut parts = Vec::new();
    let mut rest = level;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(PatternError::Unclosed)?;
        let name = &after[..end];
        let var = Var::from_name(name)
            .ok_or_else(|| PatternError::UnknownVariable(name.chars().take(64).collect()))?;
        parts.push(Part::Var(var));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(cn: &str) -> Principal {
        Principal {
            common_name: cn.into(),
            device_sn: "5FC9".into(),
            ca_sn: "2B22".into(),
            client_id: "c-1".into(),
            subject_o: "Acme".into(),
            subject_ou: String::new(),
        }
    }

    #[test]
    fn variables_are_filled_in() {
        let p = Pattern::parse("devices/${CommonName}/#").unwrap();
        assert_eq!(
            p.instantiate(&device("device-1")).unwrap().to_string(),
            "devices/device-1/#"
        );
        let p = Pattern::parse("fleet/${Subject.O}/${CaSn}-${DeviceSn}/+").unwrap();
        assert_eq!(
            p.instantiate(&device("d")).unwrap().to_string(),
            "fleet/Acme/2B22-5FC9/+"
        );
        assert!(p.uses(Var::CaSn) && !p.uses(Var::ClientId));
        let p = Pattern::parse("plain/topic").unwrap();
        assert_eq!(
            p.instantiate(&device("x")).unwrap().to_string(),
            "plain/topic"
        );
    }

    #[test]
    fn hostile_values_match_nothing() {
        let p = Pattern::parse("devices/${CommonName}/#").unwrap();
        for cn in ["#", "+", "a/b", "", "x#", "a+b", "nul\0"] {
            assert_eq!(p.instantiate(&device(cn)), None, "{cn:?}");
        }
        // An empty Subject.OU likewise.
        let p = Pattern::parse("org/${Subject.OU}/#").unwrap();
        assert_eq!(p.instantiate(&device("d")), None);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(
            Pattern::parse("devices/${Nope}/#"),
            Err(PatternError::UnknownVariable(name)) if name == "Nope"
        ));
        assert_eq!(
            Pattern::parse("a/${CommonName"),
            Err(PatternError::Unclosed)
        );
        assert!(matches!(
            Pattern::parse("a/#/b"),
            Err(PatternError::Filter(_))
        ));
        assert!(matches!(
            Pattern::parse("a/${CommonName}#"),
            Err(PatternError::Filter(_))
        ));
        assert!(Pattern::parse("").is_err());
    }
}
