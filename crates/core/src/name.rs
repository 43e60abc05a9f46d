//! Function and namespace names, and references of the form
//! `name[.namespace][:version|alias]`.

use std::fmt;

/// A name that breaks the naming rule, with the rule spelled out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {rule}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub rule: &'static str,
}

const NAME_RULE: &str =
    "use 1 to 63 characters: a lowercase letter first, then lowercase letters, digits or '-'";

/// Checks a function or namespace name against `[a-z][a-z0-9-]{0,62}`.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), NameError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.as_bytes()[0].is_ascii_lowercase()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            value: value.to_owned(),
            rule: NAME_RULE,
        })
    }
}

/// Alias names (Lambda's rule): 1 to 128 of letters, digits, `-` and `_`, not all digits, and
/// not `latest`, which names the latest version.
pub fn is_alias_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !s.chars().all(|c| c.is_ascii_digit())
        && s != "latest"
}

/// What a caller names when it invokes: a function, its namespace, and optionally a version or
/// an alias (at most one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionRef {
    pub namespace: String,
    pub name: String,
    /// `None` means the latest version, or the alias's.
    pub version: Option<u32>,
    /// An alias, resolved by the data plane's router to one of its versions.
    pub alias: Option<String>,
}

impl FunctionRef {
    /// The latest version of `name` in `namespace`.
    pub fn latest(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            version: None,
            alias: None,
        }
    }

    /// The same function at version `version`.
    pub fn at(&self, version: u32) -> Self {
        Self {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            version: Some(version),
            alias: None,
        }
    }

    /// Parses `name[.namespace][:qualifier]`, the qualifier a version number, `latest` (the same
    /// as none) or an alias name.
    pub fn parse(s: &str, default_namespace: &str) -> Result<Self, NameError> {
        let (base, version, alias) = match s.split_once(':') {
            Some((b, "latest")) => (b, None, None),
            Some((b, q)) if is_alias_name(q) => (b, None, Some(q.to_owned())),
            Some((b, v)) => {
                let n: u32 = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| NameError {
                    what: "version or alias",
                    value: v.to_owned(),
                    rule: "use a version number (1, 2, ...), 'latest', or an alias name (letters, digits, '-' and '_')",
                })?;
                (b, Some(n), None)
            }
            None => (s, None, None),
        };
        let (name, namespace) = match base.split_once('.') {
            Some((n, ns)) => (n, ns),
            None => (base, default_namespace),
        };
        validate_name("function name", name)?;
        validate_name("namespace", namespace)?;
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            version,
            alias,
        })
    }
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if self.namespace != crate::DEFAULT_NAMESPACE {
            write!(f, ".{}", self.namespace)?;
        }
        if let Some(v) = self.version {
            write!(f, ":{v}")?;
        } else if let Some(a) = &self.alias {
            write!(f, ":{a}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "hello", "a-1", &"x".repeat(63)] {
            validate_name("function name", ok).unwrap();
        }
        for bad in ["", "1a", "-a", "Hello", "a_b", "a.b", &"x".repeat(64)] {
            let e = validate_name("function name", bad).unwrap_err();
            assert!(e.to_string().contains("lowercase letter first"), "{e}");
        }
    }

    #[test]
    fn references_parse() {
        let r = FunctionRef::parse("hello", "default").unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_str(), r.version),
            ("hello", "default", None)
        );
        let r = FunctionRef::parse("hello.dev:3", "default").unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_str(), r.version),
            ("hello", "dev", Some(3))
        );
        assert_eq!(r.to_string(), "hello.dev:3");
        assert_eq!(
            FunctionRef::parse("hello:latest", "default")
                .unwrap()
                .version,
            None
        );
        assert!(FunctionRef::parse("hello:0", "default").is_err());
        assert!(FunctionRef::parse("hello:x.y", "default").is_err());
        let r = FunctionRef::parse("hello.dev:prod", "default").unwrap();
        assert_eq!((r.version, r.alias.as_deref()), (None, Some("prod")));
        assert_eq!(r.to_string(), "hello.dev:prod");
        assert!(FunctionRef::parse("Hello", "default").is_err());
    }
}
