//! JWT invoke authentication (`invoke_auth = "jwt"`): tokens of one configured issuer, checked
//! against the issuer's published keys (its JWKS).
//!
//! The keys are fetched on first use (from `jwks_url`, or the `jwks_uri` of the issuer's OpenID
//! discovery document), kept for ten minutes, and fetched again early when a token names a key id
//! the set does not hold (the issuer rotated its keys). Fetches are tried at most once every
//! five seconds, whatever their outcome, so that tokens with made-up key ids or an issuer that
//! is down cannot make Petrel hammer it. When a refresh fails, the keys already held stay in use. Only asymmetric signatures are accepted (RS256 and ES256):
//! `none` and the HMAC algorithms are refused whatever the token's header says, and a key is used
//! only with the algorithm of its own type.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use petrel_core::{ApiError, ErrorCode};
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// How long fetched keys are used before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(600);
/// The least time between two fetches caused by an unknown key id.
const REFETCH_GAP: Duration = Duration::from_secs(5);
/// The most a JWKS or discovery document may weigh.
const DOCUMENT_LIMIT: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[jwt]` table of the config file, checked.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// Where the keys are; `None`: from `{issuer}/.well-known/openid-configuration`.
    pub jwks_url: Option<String>,
    /// A token's `aud` must hold one of these.
    pub audience: Vec<String>,
    /// How far `exp` and `nbf` may be off the server's clock.
    pub clock_skew: Duration,
}

/// The keys as last fetched.
struct Held {
    keys: JwkSet,
    /// When the set was last fetched, and when a fetch was last tried (either way).
    fetched: Option<Instant>,
    tried: Option<Instant>,
}

pub(crate) struct JwtIssuer {
    config: JwtConfig,
    client: petrel_async::HttpClient,
    held: std::sync::RwLock<Held>,
    /// Held while fetching, so that one fetch runs at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

fn refused(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        format!("this JWT is not accepted: {why}"),
    )
}

fn unreachable_issuer(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("Petrel could not fetch the JWT issuer's keys ({why}); the issuer must be reachable from the server, try again"),
    )
}

impl JwtIssuer {
    pub(crate) fn new(config: JwtConfig, client: petrel_async::HttpClient) -> Self {
        Self {
            config,
            client,
            held: std::sync::RwLock::new(Held {
                keys: JwkSet { keys: Vec::new() },
                fetched: None,
                tried: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The claims of `token` once it checks out.
    pub(crate) async fn verify(&self, token: &str) -> Result<Map<String, Value>, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(format_args!("it cannot be read ({e})")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(refused(format_args!(
                "it is signed with {:?}; only RS256 and ES256 are accepted",
                header.alg
            )));
        }
        let jwk = self.key_for(header.kid.as_deref(), header.alg).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| refused(format_args!("the issuer's key cannot be used ({e})")))?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&self.config.audience);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = self.config.clock_skew.as_secs();
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => refused("it has expired (`exp`)"),
                K::ImmatureSignature => refused("it is not valid yet (`nbf`)"),
                K::InvalidIssuer => refused(format_args!(
                    "its issuer (`iss`) is not {}",
                    self.config.issuer
                )),
                K::InvalidAudience => refused(format_args!(
                    "its audience (`aud`) is none of {}",
                    self.config.audience.join(", ")
                )),
                K::MissingRequiredClaim(c) => refused(format_args!("it has no `{c}` claim")),
                K::InvalidSignature => refused("its signature does not check"),
                other => refused(format_args!("{other:?}")),
            }
        })?;
        Ok(data.claims)
    }

    /// The issuer's key for a token's `kid` and `alg`, fetching the keys when they are old or do
    /// not hold it. The common case (a fresh set that holds the key) takes a read lock only, so
    /// requests with good tokens never wait on a fetch that a made-up key id started.
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, ApiError> {
        if let Some(key) = self.held_key(kid, alg, false) {
            return Ok(key);
        }
        {
            // One fetch at a time; whoever waited here finds the set the fetch before it left.
            let _one = self.fetching.lock().await;
            let due = {
                let held = self.held.read().unwrap();
                let missing = pick(&held.keys, kid, alg).is_none();
                let fresh = held.fetched.is_some_and(|t| t.elapsed() <= KEYS_TTL);
                // A failed or recent attempt waits out the gap, so an issuer that is down is
                // not asked again on every request.
                let may = held.tried.is_none_or(|t| t.elapsed() > REFETCH_GAP);
                may && (!fresh || missing)
            };
            if due {
                let fetched = self.fetch().await;
                let mut held = self.held.write().unwrap();
                held.tried = Some(Instant::now());
                match fetched {
                    Ok(keys) => {
                        tracing::info!(issuer = %self.config.issuer, keys = keys.keys.len(), "fetched the JWT issuer's keys");
                        held.keys = keys;
                        held.fetched = Some(Instant::now());
                    }
                    Err(e) if held.fetched.is_some() => {
                        tracing::warn!(issuer = %self.config.issuer, error = %e, "could not refresh the JWT issuer's keys; using the ones held");
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %self.config.issuer, error = %e, "could not fetch the JWT issuer's keys");
                        return Err(unreachable_issuer(&e.to_string()));
                    }
                }
            }
        }
        if self.held.read().unwrap().fetched.is_none() {
            return Err(unreachable_issuer("no answer yet"));
        }
        self.held_key(kid, alg, true).ok_or_else(|| match kid {
            Some(k) => refused(format_args!(
                "the issuer publishes no {alg:?} key with id {k:?}"
            )),
            None => refused(format_args!(
                "it names no key (`kid`) and the issuer publishes more than one {alg:?} key"
            )),
        })
    }

    /// The held key for `kid` and `alg`; only from a set still fresh unless `stale_ok`.
    fn held_key(&self, kid: Option<&str>, alg: Algorithm, stale_ok: bool) -> Option<Jwk> {
        let held = self.held.read().unwrap();
        let fresh = held.fetched.is_some_and(|t| t.elapsed() <= KEYS_TTL);
        (fresh || stale_ok)
            .then(|| pick(&held.keys, kid, alg).cloned())
            .flatten()
    }

    async fn fetch(&self) -> anyhow::Result<JwkSet> {
        let url = match &self.config.jwks_url {
            Some(u) => u.clone(),
            None => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let doc: Value = self.get_json(&discovery).await?;
                doc["jwks_uri"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow::anyhow!("{discovery} names no jwks_uri"))?
            }
        };
        #[derive(serde::Deserialize)]
        struct Published {
            keys: Vec<Value>,
        }
        let published: Published = self.get_json(&url).await?;
        // Keys of types this server cannot read (an encryption key, a newer algorithm) are
        // left out rather than failing the whole set.
        let keys = published
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
            .collect();
        Ok(JwkSet { keys })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> anyhow::Result<T> {
        use anyhow::Context;
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("{url} is not a URL"))?;
        let resp = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| anyhow::anyhow!("{url} did not answer in {FETCH_TIMEOUT:?}"))?
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(resp.into_body(), DOCUMENT_LIMIT).collect(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not finish its answer in {FETCH_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?
        .to_bytes();
        anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
        serde_json::from_slice(&body).with_context(|| format!("{url} is not the JSON expected"))
    }
}

/// The key of `set` a token with `kid` and `alg` is checked with: the one with that id (or the
/// only one of the algorithm's type when the token names none), if its type, curve, use and
/// algorithm fit.
fn pick<'a>(set: &'a JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<&'a Jwk> {
    let fits = |k: &&Jwk| {
        let kind = match (&k.algorithm, alg) {
            (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
            (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => {
                p.curve == EllipticCurve::P256
            }
            _ => false,
        };
        let usable = !matches!(&k.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature);
        let same_alg = k
            .common
            .key_algorithm
            .is_none_or(|a| a.to_string() == format!("{alg:?}"));
        kind && usable && same_alg
    };
    match kid {
        Some(id) => set
            .keys
            .iter()
            .filter(|k| k.common.key_id.as_deref() == Some(id))
            .find(fits),
        None => {
            let mut candidates = set.keys.iter().filter(fits);
            let first = candidates.next();
            first.filter(|_| candidates.next().is_none())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: &str) -> JwkSet {
        serde_json::from_str(json).unwrap()
    }

    const RSA: &str = r#"{"kty":"RSA","kid":"r1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;
    const EC: &str = r#"{"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn keys_are_picked_by_id_type_and_algorithm() {
        let both = set(&format!(r#"{{"keys":[{RSA},{EC}]}}"#));
        assert!(pick(&both, Some("r1"), Algorithm::RS256).is_some());
        assert!(pick(&both, Some("e1"), Algorithm::ES256).is_some());
        // A key is used only with an algorithm of its own type.
        assert!(pick(&both, Some("r1"), Algorithm::ES256).is_none());
        assert!(pick(&both, Some("e1"), Algorithm::RS256).is_none());
        assert!(pick(&both, Some("nope"), Algorithm::RS256).is_none());
        // No kid: the only key of the type.
        assert!(pick(&both, None, Algorithm::ES256).is_some());
        let two = set(&format!(
            r#"{{"keys":[{RSA},{}]}}"#,
            RSA.replace("\"r1\"", "\"r2\"")
        ));
        assert!(pick(&two, None, Algorithm::RS256).is_none());
        // A key published for encryption, or for another algorithm, is not used to verify.
        let enc = set(&format!(
            r#"{{"keys":[{}]}}"#,
            RSA.replace("\"kid\"", "\"use\":\"enc\",\"kid\"")
        ));
        assert!(pick(&enc, Some("r1"), Algorithm::RS256).is_none());
        let other = set(&format!(
            r#"{{"keys":[{}]}}"#,
            RSA.replace("\"kid\"", "\"alg\":\"RS512\",\"kid\"")
        ));
        assert!(pick(&other, Some("r1"), Algorithm::RS256).is_none());
    }
}
