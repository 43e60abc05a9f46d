//! Who may do what: the roles an API key holds per namespace, the actions Petrel's routes
//! perform, and the one decision between them ([`Principal::check`]).
//!
//! A request is made by a [`Principal`]: a key with roles in some namespaces (and perhaps the
//! cluster-wide `owner` role), or anyone at all on a server started with `--no-auth`. A
//! principal with no role in a namespace is told that the object it asked for does not exist,
//! exactly as if it did not, so that names do not leak between tenants; one with a role too weak
//! for the action is told so (`403 forbidden`), since it may see the object anyway.

use crate::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A role in one namespace, from the weakest to the strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything of the namespace; changes nothing, invokes nothing.
    Viewer,
    /// Invokes the namespace's functions; reads nothing.
    Invoker,
    /// Deploys, deletes, manages triggers and secrets, invokes, reads everything.
    Developer,
    /// A developer that also manages the namespace's keys and quotas and reads its audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Invoker, Role::Developer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Invoker => "invoker",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    /// `admin`, `developer`, `invoker` or `viewer`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("no role named {s:?}: a namespace's roles are admin, developer, invoker and viewer (owner is cluster-wide: --owner)"),
                )
            })
    }

    /// Whether this role may perform `action`.
    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::Read => matches!(self, Role::Viewer | Role::Developer | Role::Admin),
            Action::Invoke => matches!(self, Role::Invoker | Role::Developer | Role::Admin),
            Action::Write => matches!(self, Role::Developer | Role::Admin),
            Action::Administer => self == Role::Admin,
        }
    }

    /// The weakest roles that allow `action`, for error messages.
    fn needed(action: Action) -> &'static str {
        match action {
            Action::Read => "viewer, developer or admin",
            Action::Invoke => "invoker, developer or admin",
            Action::Write => "developer or admin",
            Action::Administer => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route does to a namespace's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// List and get functions, logs, records, usage, triggers, dead letters, metrics.
    Read,
    /// Invoke a function (sync, async, through the Lambda API).
    Invoke,
    /// Deploy, delete, pause and resume triggers, replay and cancel, set and remove secrets.
    Write,
    /// Manage the namespace's keys and quotas, read its audit log.
    Administer,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Read => "reading",
            Action::Invoke => "invoking",
            Action::Write => "changing",
            Action::Administer => "administering",
        }
    }
}

/// Who makes a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off (`petrel serve --no-auth`, loopback only): everything is allowed.
    Anyone,
    /// An API key.
    Key(KeyGrant),
}

/// What an API key may do: its id (never its token), the cluster role, its namespace roles.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyGrant {
    pub id: String,
    pub owner: bool,
    pub roles: BTreeMap<String, Role>,
}

/// Why a principal may not do something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// It holds no role in the namespace: answer as if the object did not exist.
    Hidden,
    /// It holds a role too weak for the action.
    Forbidden(ApiError),
}

impl Principal {
    /// Whether the principal may perform `action` in namespace `ns`.
    pub fn check(&self, ns: &str, action: Action) -> Result<(), Denied> {
        let grant = match self {
            Principal::Anyone => return Ok(()),
            Principal::Key(g) if g.owner => return Ok(()),
            Principal::Key(g) => g,
        };
        let Some(role) = grant.roles.get(ns) else {
            return Err(Denied::Hidden);
        };
        if role.allows(action) {
            return Ok(());
        }
        Err(Denied::Forbidden(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this key is {role} in namespace {ns}; {} it needs {}: ask an admin of {ns} for a key with that role",
                action.verb(),
                Role::needed(action)
            ),
        )))
    }

    /// Like [`Principal::check`], with `hidden` as the answer when the principal holds no role
    /// in `ns` (the error an unknown object gets).
    pub fn require(
        &self,
        ns: &str,
        action: Action,
        hidden: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        match self.check(ns, action) {
            Ok(()) => Ok(()),
            Err(Denied::Hidden) => Err(hidden()),
            Err(Denied::Forbidden(e)) => Err(e),
        }
    }

    /// Whether this is the cluster owner (or authentication is off).
    pub fn is_owner(&self) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Key(g) => g.owner,
        }
    }

    /// Refuses anyone but the cluster owner.
    pub fn require_owner(&self, what: &str) -> Result<(), ApiError> {
        if self.is_owner() {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{what} needs the cluster's owner key (the one in DATA_DIR/bootstrap-token, or a key made with `petrel key create --owner`)"),
        ))
    }

    /// The namespaces this principal may perform `action` in; `None` means all of them.
    pub fn namespaces(&self, action: Action) -> Option<Vec<String>> {
        match self {
            Principal::Anyone => None,
            Principal::Key(g) if g.owner => None,
            Principal::Key(g) => Some(
                g.roles
                    .iter()
                    .filter(|(_, r)| r.allows(action))
                    .map(|(ns, _)| ns.clone())
                    .collect(),
            ),
        }
    }

    /// The key's id, for the audit log (`None` without authentication).
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Principal::Anyone => None,
            Principal::Key(g) => Some(&g.id),
        }
    }
}

/// How a function's own invoke routes authenticate callers (`invoke_auth` in `petrel.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvokeAuth {
    /// Anyone who reaches the server may invoke it.
    Public,
    /// An API key with `invoker` (or `developer`, `admin`) in the function's namespace.
    #[default]
    Key,
    /// A JWT of the server's configured issuer, verified against its JWKS.
    Jwt,
}

impl InvokeAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            InvokeAuth::Public => "public",
            InvokeAuth::Key => "key",
            InvokeAuth::Jwt => "jwt",
        }
    }
}

/// How requests prove who they are; the server's implementation checks API keys against the
/// store. Shared by the control API, the gateway and the Lambda API.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Whether requests must authenticate (`false` under `petrel serve --no-auth`).
    fn enabled(&self) -> bool;
    /// The principal a bearer token stands for; `unauthorized` for an unknown or revoked one.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> crate::BoxFuture<'a, Result<Principal, ApiError>>;
    /// The Lambda API's SigV4: the secret access key of `access_key_id` and whose it is.
    fn sigv4_key<'a>(
        &'a self,
        access_key_id: &'a str,
    ) -> crate::BoxFuture<'a, Result<Option<(String, Principal)>, ApiError>>;
    /// Whether the server has a JWT issuer, so that `invoke_auth = "jwt"` can be checked.
    fn jwt_configured(&self) -> bool {
        false
    }
    /// The claims of a JWT of the server's issuer, once its signature, issuer, audience and
    /// times check; `unauthorized` saying why otherwise.
    fn verify_jwt<'a>(
        &'a self,
        _token: &'a str,
    ) -> crate::BoxFuture<'a, Result<serde_json::Map<String, serde_json::Value>, ApiError>> {
        Box::pin(async { Err(no_jwt_issuer()) })
    }
}

/// The answer to a JWT on a server without a `[jwt]` issuer.
pub fn no_jwt_issuer() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "this server has no JWT issuer configured ([jwt] in its config file)",
    )
}

/// The header a function finds a verified JWT's claims in (JSON, non-ASCII escaped); Petrel
/// removes any a caller sends.
pub const JWT_CLAIMS_HEADER: &str = "x-petrel-jwt-claims";

/// `claims` as one line of JSON that is safe in an HTTP header: non-ASCII characters escaped.
pub fn claims_header(claims: &serde_json::Map<String, serde_json::Value>) -> String {
    let text = serde_json::to_string(claims).expect("JSON values serialise");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                use std::fmt::Write;
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    out
}

/// Whether a bearer token is a JWT (three base64url parts, a JSON header) rather than a
/// Petrel API key (which holds no dot).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

/// No authentication: every request is [`Principal::Anyone`] (tests, embedded use).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuth;

impl Authenticator for NoAuth {
    fn enabled(&self) -> bool {
        false
    }
    fn authenticate<'a>(&'a self, _: &'a str) -> crate::BoxFuture<'a, Result<Principal, ApiError>> {
        Box::pin(async { Ok(Principal::Anyone) })
    }
    fn sigv4_key<'a>(
        &'a self,
        _: &'a str,
    ) -> crate::BoxFuture<'a, Result<Option<(String, Principal)>, ApiError>> {
        Box::pin(async { Ok(None) })
    }
}

/// The token of an `Authorization: Bearer TOKEN` header value.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who sent a request with this `Authorization` header: `Anyone` without authentication,
/// `None` when it carries no bearer token, the key's principal when it does.
pub async fn principal_of(
    auth: &dyn Authenticator,
    authorization: Option<&str>,
) -> Result<Option<Principal>, ApiError> {
    if !auth.enabled() {
        return Ok(Some(Principal::Anyone));
    }
    let Some(header) = authorization else {
        return Ok(None);
    };
    let token = bearer(header).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            "the Authorization header must be `Bearer TOKEN` with a Petrel API key",
        )
    })?;
    auth.authenticate(token).await.map(Some)
}

/// The answer to a request that needs a key and carries none.
pub fn missing_key() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "this route needs an API key: send `Authorization: Bearer TOKEN` (the CLI: --token or PETREL_TOKEN; the server's first key is in DATA_DIR/bootstrap-token)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(roles: &[(&str, Role)]) -> Principal {
        Principal::Key(KeyGrant {
            id: "k".into(),
            owner: false,
            roles: roles.iter().map(|(n, r)| (n.to_string(), *r)).collect(),
        })
    }

    #[test]
    fn each_role_allows_exactly_its_actions() {
        use Action::*;
        let table = [
            (Role::Viewer, [true, false, false, false]),
            (Role::Invoker, [false, true, false, false]),
            (Role::Developer, [true, true, true, false]),
            (Role::Admin, [true, true, true, true]),
        ];
        for (role, allowed) in table {
            for (action, ok) in [Read, Invoke, Write, Administer].into_iter().zip(allowed) {
                assert_eq!(
                    key(&[("a", role)]).check("a", action).is_ok(),
                    ok,
                    "{role} {action:?}"
                );
            }
        }
    }

    #[test]
    fn no_role_hides_and_a_weak_role_forbids() {
        let p = key(&[("a", Role::Viewer)]);
        assert_eq!(p.check("b", Action::Read), Err(Denied::Hidden));
        let Err(Denied::Forbidden(e)) = p.check("a", Action::Write) else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(e.message.contains("viewer in namespace a"), "{}", e.message);
        assert_eq!(
            p.namespaces(Action::Read),
            Some(vec!["a".to_owned()]),
            "readable"
        );
        assert_eq!(p.namespaces(Action::Invoke), Some(vec![]));
        assert!(!p.is_owner());
        let owner = Principal::Key(KeyGrant {
            owner: true,
            ..Default::default()
        });
        assert!(owner.check("anything", Action::Administer).is_ok());
        assert_eq!(owner.namespaces(Action::Read), None);
        assert!(Principal::Anyone.check("x", Action::Write).is_ok());
    }

    #[test]
    fn bearer_tokens_are_read_case_blind_and_nothing_else_is() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn roles_parse_by_name_only() {
        assert_eq!(Role::parse("developer").unwrap(), Role::Developer);
        let e = Role::parse("owner").unwrap_err();
        assert!(e.message.contains("--owner"), "{}", e.message);
    }

    #[test]
    fn claims_header_is_ascii_json() {
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"name":"Zoë 🐦","n":1,"l":["a"]}"#).unwrap();
        let h = claims_header(&claims);
        // What an HTTP header value may hold: visible ASCII and spaces.
        assert!(h.bytes().all(|b| (0x20..0x7f).contains(&b)), "{h}");
        let back: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&h).unwrap();
        assert_eq!(back, claims);
    }
}
