//! API keys and the master key: making keys (random tokens, stored as argon2id hashes),
//! checking a request's token, the first start's owner key, and sealing what must be kept
//! secret at rest (secrets, the Lambda API's SigV4 keys) under a master key that lives outside
//! the store.
//!
//! A token is `petrel_` and 43 base64url characters (256 random bits). The key's id is the first
//! 16 hex digits of the token's SHA-256, so a token finds its row without a scan and the id can
//! be shown without giving the token away. Checking a token costs one argon2id verification the
//! first time this server sees it; after that a cached SHA-256 of the verified token is compared,
//! and the row (revocation, roles) is read again at most once a second, so a revoked key stops at
//! once on the server that revoked it and within a second on the others.

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use petrel_core::auth::{Authenticator, KeyGrant, Principal, Role};
use petrel_core::{ApiError, BoxFuture, ErrorCode};
use petrel_store::{KeyRecord, Store};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a checked key is trusted before its row is read again.
const RECHECK: Duration = Duration::from_secs(1);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The key that seals secrets at rest: 32 bytes from `PETREL_MASTER_KEY` (64 hex digits) or
/// the file `DATA_DIR/master.key` (made with mode 0600 on first start).
#[derive(Clone)]
pub(crate) struct MasterKey(Arc<XChaCha20Poly1305>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// The master key of this server: the environment's, a configured file's, or the data
    /// directory's (made when missing).
    pub(crate) fn load(data_dir: &Path, file: Option<&Path>) -> anyhow::Result<Self> {
        if let Ok(hex_key) = std::env::var("PETREL_MASTER_KEY") {
            let bytes = hex::decode(hex_key.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .context("PETREL_MASTER_KEY must be 64 hex digits (32 bytes): make one with `openssl rand -hex 32`")?;
            return Ok(Self::from_bytes(&bytes));
        }
        let path = file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data_dir.join("master.key"));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .ok()
                    .filter(|b| b.len() == 32)
                    .with_context(|| {
                        format!("{} must hold 64 hex digits (32 bytes)", path.display())
                    })?;
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_none() => {
                let bytes = random::<32>();
                write_private(&path, &hex::encode(bytes))?;
                tracing::info!(path = %path.display(), "made a master key for secrets; keep a copy of it: without it no secret can be read");
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
        }
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Self(Arc::new(XChaCha20Poly1305::new(bytes.into())))
    }

    /// `plain` sealed and bound to `context` (what it is the value of): base64 of nonce and
    /// ciphertext.
    pub(crate) fn seal(&self, context: &str, plain: &[u8]) -> String {
        let nonce = random::<24>();
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length Petrel stores");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        B64.encode(out)
    }

    /// What [`MasterKey::seal`] sealed for `context`; an error when it was sealed under another
    /// key or for another context, or changed since.
    pub(crate) fn open(&self, context: &str, sealed: &str) -> anyhow::Result<Vec<u8>> {
        let bytes = B64.decode(sealed).context("a sealed value is not base64")?;
        anyhow::ensure!(bytes.len() > 24, "a sealed value is too short");
        let (nonce, ct) = bytes.split_at(24);
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("a sealed value does not open under this server's master key (was the key changed?)"))
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the OS random number generator");
    b
}

/// Writes a file only its owner can read (0600), atomically.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("could not write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("could not write {}", path.display()))?;
    Ok(())
}

/// A new random token.
pub(crate) fn new_token() -> String {
    format!("petrel_{}", B64.encode(random::<32>()))
}

/// The id of the key a token belongs to.
pub(crate) fn key_id(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..8])
}

fn hash_token(token: &str) -> String {
    let salt = SaltString::encode_b64(&random::<16>()).expect("16 bytes are a valid salt");
    Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .expect("argon2id hashes any token")
        .to_string()
}

fn verify_token(token: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(token.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A key that checked out, as this server remembers it.
#[derive(Debug, Clone)]
struct Checked {
    token_sha: [u8; 32],
    grant: KeyGrant,
    at: Instant,
}

/// The API keys of this server's store.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    inner: Arc<KeysInner>,
}

#[derive(Debug)]
struct KeysInner {
    enabled: bool,
    store: Store,
    master: MasterKey,
    /// Configured Lambda access keys (`lambda_access_keys`): the owner's, by id.
    lambda_keys: HashMap<String, String>,
    checked: Mutex<HashMap<String, Checked>>,
    /// This process's own owner token (memory only) and its SHA-256.
    local: (String, [u8; 32]),
    /// The issuer `invoke_auth = "jwt"` trusts, if any.
    jwt: Option<Arc<crate::jwt::JwtIssuer>>,
}

fn unknown_key() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "this API key is unknown or revoked: ask an admin for a key (`petrel key create`)",
    )
}

/// A new key's token and stored form.
pub(crate) struct NewKey {
    pub token: String,
    pub record: KeyRecord,
}

impl Keys {
    pub(crate) fn new(
        enabled: bool,
        store: Store,
        master: MasterKey,
        lambda_keys: &[petrel_aws::AccessKey],
        jwt: Option<Arc<crate::jwt::JwtIssuer>>,
    ) -> Self {
        Self {
            inner: Arc::new(KeysInner {
                enabled,
                store,
                master,
                lambda_keys: lambda_keys
                    .iter()
                    .map(|k| (k.id.clone(), k.secret.clone()))
                    .collect(),
                checked: Mutex::default(),
                local: {
                    let t = new_token();
                    let sha = Sha256::digest(t.as_bytes()).into();
                    (t, sha)
                },
                jwt,
            }),
        }
    }

    pub(crate) fn local_token(&self) -> &str {
        &self.inner.local.0
    }

    pub(crate) fn master(&self) -> &MasterKey {
        &self.inner.master
    }

    /// A new key (not stored yet) for `token` (a fresh one when `None`).
    pub(crate) async fn make(
        &self,
        token: Option<String>,
        description: &str,
        owner: bool,
        roles: &[(String, Role)],
        created_by: Option<&str>,
    ) -> NewKey {
        let token = token.unwrap_or_else(new_token);
        let id = key_id(&token);
        let hash = {
            let token = token.clone();
            tokio::task::spawn_blocking(move || hash_token(&token))
                .await
                .expect("hashing does not panic")
        };
        let sigv4 = Some(
            self.inner
                .master
                .seal(&format!("sigv4/{id}"), token.as_bytes()),
        );
        NewKey {
            record: KeyRecord {
                id,
                description: description.to_owned(),
                hash,
                owner,
                sigv4,
                created_by: created_by.map(str::to_owned),
                created_at: petrel_core::now_ms(),
                revoked_at: None,
                roles: roles
                    .iter()
                    .map(|(ns, r)| (ns.clone(), r.as_str().to_owned()))
                    .collect(),
            },
            token,
        }
    }

    /// Forgets what this server remembers of a key (it was revoked or changed).
    pub(crate) fn forget(&self, id: &str) {
        self.inner.checked.lock().unwrap().remove(id);
    }

    /// On a fresh store: the owner key, from `PETREL_BOOTSTRAP_TOKEN` or made and written to
    /// `DATA_DIR/bootstrap-token`.
    pub(crate) async fn bootstrap(&self, data_dir: &Path) -> anyhow::Result<()> {
        if self.inner.store.key_count().await? > 0 {
            return Ok(());
        }
        let given = std::env::var("PETREL_BOOTSTRAP_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        if let Some(t) = &given {
            anyhow::ensure!(
                t.trim().len() >= 16 && !t.trim().contains(char::is_whitespace),
                "PETREL_BOOTSTRAP_TOKEN must be at least 16 characters without spaces"
            );
        }
        let from_env = given.is_some();
        let key = self
            .make(
                given.map(|t| t.trim().to_owned()),
                "bootstrap owner key",
                true,
                &[],
                None,
            )
            .await;
        if let Err(e) = self.inner.store.insert_key(&key.record).await {
            // Nodes of a cluster starting together: another one made the same key first.
            if self.inner.store.key_count().await? > 0 {
                tracing::info!("another server sharing the store made the first owner key");
                return Ok(());
            }
            return Err(e.into());
        }
        if from_env {
            tracing::info!(key = %key.record.id, "made the owner key from PETREL_BOOTSTRAP_TOKEN");
        } else {
            let path = data_dir.join("bootstrap-token");
            write_private(&path, &format!("{}\n", key.token))?;
            tracing::info!(key = %key.record.id, path = %path.display(), "made the owner key; its token is in this file (mode 0600): the CLI on this machine uses it, give others keys of their own with `petrel key create`");
        }
        Ok(())
    }

    async fn check(&self, token: &str) -> Result<KeyGrant, ApiError> {
        let id = key_id(token);
        let sha: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if sha == self.inner.local.1 {
            return Ok(KeyGrant {
                id: "local".into(),
                owner: true,
                roles: Default::default(),
            });
        }
        let known = self.inner.checked.lock().unwrap().get(&id).cloned();
        if let Some(c) = &known {
            if c.token_sha == sha && c.at.elapsed() < RECHECK {
                return Ok(c.grant.clone());
            }
        }
        let record = self
            .inner
            .store
            .key(&id)
            .await
            .map_err(ApiError::from)?
            .filter(|k| k.revoked_at.is_none());
        let Some(record) = record else {
            self.forget(&id);
            return Err(unknown_key());
        };
        let verified_before = known.is_some_and(|c| c.token_sha == sha);
        if !verified_before {
            let (token, hash) = (token.to_owned(), record.hash.clone());
            let ok = tokio::task::spawn_blocking(move || verify_token(&token, &hash))
                .await
                .unwrap_or(false);
            if !ok {
                return Err(unknown_key());
            }
        }
        let grant = grant_of(&record);
        self.inner.checked.lock().unwrap().insert(
            id,
            Checked {
                token_sha: sha,
                grant: grant.clone(),
                at: Instant::now(),
            },
        );
        Ok(grant)
    }
}

/// What a stored key may do (roles the server does not know are ignored).
fn grant_of(k: &KeyRecord) -> KeyGrant {
    KeyGrant {
        id: k.id.clone(),
        owner: k.owner,
        roles: k
            .roles
            .iter()
            .filter_map(|(ns, r)| Some((ns.clone(), Role::parse(r).ok()?)))
            .collect(),
    }
}

impl Authenticator for Keys {
    fn enabled(&self) -> bool {
        self.inner.enabled
    }

    fn jwt_configured(&self) -> bool {
        self.inner.jwt.is_some()
    }

    fn verify_jwt<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<serde_json::Map<String, serde_json::Value>, ApiError>> {
        Box::pin(async move {
            match &self.inner.jwt {
                Some(issuer) => issuer.verify(token).await,
                None => Err(petrel_core::auth::no_jwt_issuer()),
            }
        })
    }

    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, ApiError>> {
        Box::pin(async move { self.check(token).await.map(Principal::Key) })
    }

    fn sigv4_key<'a>(
        &'a self,
        access_key_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, Principal)>, ApiError>> {
        Box::pin(async move {
            if let Some(secret) = self.inner.lambda_keys.get(access_key_id) {
                let owner = KeyGrant {
                    id: access_key_id.to_owned(),
                    owner: true,
                    roles: Default::default(),
                };
                return Ok(Some((secret.clone(), Principal::Key(owner))));
            }
            let Some(record) = self
                .inner
                .store
                .key(access_key_id)
                .await
                .map_err(ApiError::from)?
                .filter(|k| k.revoked_at.is_none())
            else {
                return Ok(None);
            };
            let Some(sealed) = &record.sigv4 else {
                return Ok(None);
            };
            let token = self
                .inner
                .master
                .open(&format!("sigv4/{}", record.id), sealed)
                .map_err(|e| {
                    tracing::error!(key = %record.id, error = %e, "could not open a key's SigV4 secret");
                    ApiError::new(ErrorCode::Internal, "this key's Lambda API secret cannot be read on this server (its master key differs)")
                })?;
            let token = String::from_utf8(token).map_err(|_| {
                ApiError::new(ErrorCode::Internal, "a stored SigV4 secret is not text")
            })?;
            Ok(Some((token, Principal::Key(grant_of(&record)))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hashed_and_verified() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("petrel_") && a.len() == 7 + 43, "{a}");
        assert_eq!(key_id(&a).len(), 16);
        let h = hash_token(&a);
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains(&a[7..]));
        assert!(verify_token(&a, &h));
        assert!(!verify_token(&b, &h));
        assert!(!verify_token(&a, "not a hash"));
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let k = MasterKey::load(dir.path(), None).unwrap();
        let meta = std::fs::metadata(dir.path().join("master.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let sealed = k.seal("secret/default/db", b"hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            k.seal("secret/default/db", b"hunter2"),
            "fresh nonces"
        );
        assert_eq!(k.open("secret/default/db", &sealed).unwrap(), b"hunter2");
        assert!(k.open("secret/other/db", &sealed).is_err());
        // The same file gives the same key back; another directory another key.
        let again = MasterKey::load(dir.path(), None).unwrap();
        assert_eq!(
            again.open("secret/default/db", &sealed).unwrap(),
            b"hunter2"
        );
        let other = tempfile::tempdir().unwrap();
        let k2 = MasterKey::load(other.path(), None).unwrap();
        assert!(k2.open("secret/default/db", &sealed).is_err());
    }
}

/// Reads the secrets a function lists from the store, opening them with the master key.
#[derive(Debug, Clone)]
pub(crate) struct StoredSecrets {
    pub store: Store,
    pub master: MasterKey,
}

impl petrel_runtime::SecretSource for StoredSecrets {
    fn read<'a>(
        &'a self,
        ns: &'a str,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<petrel_runtime::SecretValues, String>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let record = self.store.secret(ns, name).await.map_err(|e| {
                    tracing::error!(error = %e, "could not read a secret");
                    "the secret store could not be read; the instance will be started again on the next request".to_owned()
                })?;
                let Some(record) = record else {
                    return Err(format!("the function lists secret {name}, which namespace {ns} does not hold: set it with `petrel secret set {name} -n {ns}`"));
                };
                let value = self
                    .master
                    .open(&crate::api::secret_context(ns, name), &record.sealed)
                    .map_err(|e| format!("secret {name} cannot be opened: {e}"))?;
                out.push((name.clone(), value));
            }
            Ok(out)
        })
    }
}
