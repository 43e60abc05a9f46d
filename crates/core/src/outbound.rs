//! `allowed_outbound_hosts`: where a wasm guest may send HTTP requests, in Spin's syntax
//! (`https://api.example.com`, `http://127.0.0.1:8080`, `http://*.example.com`,
//! `*://localhost:*`, `*://*:*`).

/// One entry of `allowed_outbound_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Option<String>,
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    Subdomains(String),
}

pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl HostPattern {
    /// Parses `scheme://host[:port]`; `*` stands for any scheme, host or port, and `*.domain` for
    /// the subdomains of a domain.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("allowed_outbound_hosts entry {s:?} {why}; write it like \"https://api.example.com\", \"http://127.0.0.1:8080\" or \"*://*.example.com:*\"")
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("has no scheme"))?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_owned()),
            _ => return Err(bad("has a scheme other than http, https or *")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("has a path; give only scheme, host and port"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, "*")) => (h, None),
            Some((h, p)) => (
                h,
                Some(p.parse::<u16>().map_err(|_| bad("has an invalid port"))?),
            ),
            None => match scheme.as_deref().and_then(default_port) {
                Some(p) => (rest, Some(p)),
                None => return Err(bad("needs a port when the scheme is *")),
            },
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            HostMatch::Subdomains(domain.to_owned())
        } else if host.is_empty() || host.contains('*') {
            return Err(bad("has an invalid host"));
        } else {
            HostMatch::Exact(host)
        };
        Ok(Self { scheme, host, port })
    }

    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.port.is_none_or(|p| p == port)
            && match &self.host {
                HostMatch::Any => true,
                HostMatch::Exact(h) => *h == host,
                HostMatch::Subdomains(d) => host.ends_with(&format!(".{d}")),
            }
    }
}

/// Whether `s` is an `http://` or `https://` URL with a host, that outcomes can be POSTed to.
pub fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !s.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::HostPattern;

    #[test]
    fn patterns_follow_spin_syntax() {
        let p = HostPattern::parse("https://api.example.com").unwrap();
        assert!(p.allows("https", "api.example.com", 443));
        assert!(!p.allows("http", "api.example.com", 80));
        assert!(!p.allows("https", "api.example.com", 8443));
        assert!(!p.allows("https", "evil.com", 443));

        let p = HostPattern::parse("http://127.0.0.1:8080").unwrap();
        assert!(p.allows("http", "127.0.0.1", 8080));
        assert!(!p.allows("http", "127.0.0.1", 8081));

        let p = HostPattern::parse("*://*.example.com:*").unwrap();
        assert!(p.allows("http", "a.example.com", 1234));
        assert!(p.allows("https", "b.a.example.com", 443));
        assert!(!p.allows("https", "example.com", 443));
        assert!(!p.allows("https", "notexample.com", 443));

        assert!(HostPattern::parse("*://*:*")
            .unwrap()
            .allows("http", "anything", 1));

        for bad in [
            "example.com",
            "ftp://x.com",
            "http://x.com/path",
            "*://x.com",
            "http://x.com:port",
            "http://a*b.com",
        ] {
            let e = HostPattern::parse(bad).unwrap_err();
            assert!(e.contains("allowed_outbound_hosts"), "{bad}: {e}");
        }
    }
}
