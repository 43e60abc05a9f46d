//! Function and namespace names, and references of the form `name[.namespace][:version]`.

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

/// What a caller names when it invokes: a function, its namespace, and optionally a version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionRef {
    pub namespace: String,
    pub name: String,
    /// `None` means the latest version.
    pub version: Option<u32>,
}

impl FunctionRef {
    /// Parses `name[.namespace][:version]`; `latest` is accepted as a version and means `None`.
    pub fn parse(s: &str, default_namespace: &str) -> Result<Self, NameError> {
        let (base, version) = match s.split_once(':') {
            Some((b, "latest")) => (b, None),
            Some((b, v)) => {
                let n: u32 = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| NameError {
                    what: "version",
                    value: v.to_owned(),
                    rule: "use a version number (1, 2, ...) or 'latest'",
                })?;
                (b, Some(n))
            }
            None => (s, None),
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
        assert!(FunctionRef::parse("hello:x", "default").is_err());
        assert!(FunctionRef::parse("Hello", "default").is_err());
    }
}
