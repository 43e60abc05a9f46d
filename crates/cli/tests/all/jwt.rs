//! `invoke_auth = "jwt"` through the binary: tokens minted by PyJWT (PyPI) with keys it makes,
//! an issuer served by the test (OpenID discovery and a JWKS it can rotate), and every way a
//! token can be wrong.

use crate::fixtures::echo_function;
use crate::harness::{Petrel, StoreKind};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// PyJWT with the cryptography package, from PyPI (the newest when this was written).
const PYJWT: &str = "pyjwt[crypto]==2.15.1";

/// Mints the test's tokens for the issuer in argv[1]: prints the issuer's key sets (before and
/// after a rotation) and the tokens, as JSON.
const MINT: &str = r#"
import json, sys, time
import jwt
from jwt.utils import base64url_encode
from cryptography.hazmat.primitives.asymmetric import rsa, ec
from jwt.algorithms import RSAAlgorithm, ECAlgorithm

iss, aud = sys.argv[1], "petrel-test"
rsa1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec1 = ec.generate_private_key(ec.SECP256R1())

def jwk(alg, key, kid):
    d = json.loads(alg.to_jwk(key.public_key()))
    d.update(kid=kid, use="sig")
    return d

now = int(time.time())
def claims(**over):
    c = {"iss": iss, "aud": aud, "sub": "user-1", "exp": now + 600, "iat": now,
         "name": "Zoë", "scope": "read write", "groups": ["a", "b"]}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}

def tok(key, alg, kid, **over):
    return jwt.encode(claims(**over), key, algorithm=alg, headers={"kid": kid} if kid else None)

def b64(d):
    return base64url_encode(json.dumps(d).encode()).decode()

good = tok(rsa1, "RS256", "rsa-1")
h, p, s = good.split(".")
# A key type no verifier here reads: left out of the set, not fatal to it.
odd = {"kty": "AKP", "alg": "ML-DSA-44", "kid": "pq-1", "pub": "AAAA"}
jwks1 = {"keys": [jwk(RSAAlgorithm, rsa1, "rsa-1"), jwk(ECAlgorithm, ec1, "ec-1"), odd]}
jwks2 = {"keys": jwks1["keys"] + [jwk(RSAAlgorithm, rsa2, "rsa-2")]}
print(json.dumps({
    "jwks1": jwks1,
    "jwks2": jwks2,
    "tokens": {
        "rs256": good,
        "es256": tok(ec1, "ES256", "ec-1"),
        "within_skew": tok(rsa1, "RS256", "rsa-1", exp=now - 20),
        "expired": tok(rsa1, "RS256", "rsa-1", exp=now - 3600),
        "not_yet": tok(rsa1, "RS256", "rsa-1", nbf=now + 3600),
        "wrong_aud": tok(rsa1, "RS256", "rsa-1", aud="someone-else"),
        "wrong_iss": tok(rsa1, "RS256", "rsa-1", iss="https://evil.example"),
        "no_exp": tok(rsa1, "RS256", "rsa-1", exp=None),
        "tampered": h + "." + b64(claims(sub="admin")) + "." + s,
        "other_key": tok(rsa2, "RS256", "rsa-1"),
        "hs256": jwt.encode(claims(), "a-shared-secret-of-32-bytes-long", algorithm="HS256", headers={"kid": "rsa-1"}),
        "none": b64({"alg": "none", "typ": "JWT", "kid": "rsa-1"}) + "." + b64(claims()) + ".",
        "rs_kid_on_ec": tok(rsa1, "RS256", "ec-1"),
        "rotated": tok(rsa2, "RS256", "rsa-2"),
        "unknown_kid": tok(rsa1, "RS256", "nobody"),
    },
}))
"#;

/// An OpenID issuer on a port of its own: discovery and a JWKS the test can change; counts
/// the JWKS fetches.
struct Issuer {
    url: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<Mutex<usize>>,
}

async fn issuer() -> Issuer {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let jwks = Arc::new(Mutex::new(json!({"keys": []})));
    let fetches = Arc::new(Mutex::new(0));
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/keys")});
    let (keys, count) = (jwks.clone(), fetches.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/keys",
            get(move || async move {
                *count.lock().unwrap() += 1;
                axum::Json(keys.lock().unwrap().clone())
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Issuer { url, jwks, fetches }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A GET of `path` with this `Authorization` (`-`: none).
async fn get(p: &Petrel, path: &str, authorization: impl AsRef<str>) -> crate::harness::Resp {
    p.http_with(
        "GET",
        path,
        &[("authorization", authorization.as_ref())],
        Vec::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_functions_take_only_good_tokens_of_the_issuer_and_see_their_claims() {
    let iss = issuer().await;
    let pyjwt = tokio::task::spawn_blocking(|| crate::lambda_clients::pip_target(PYJWT))
        .await
        .unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", MINT, &iss.url])
        .env("PYTHONPATH", &pyjwt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = |name: &str| minted["tokens"][name].as_str().unwrap().to_owned();
    *iss.jwks.lock().unwrap() = minted["jwks1"].clone();

    // Without a [jwt] table a jwt function is refused at deploy, saying what is missing.
    let plain = Petrel::start().await;
    let f = echo_function("guarded", "python3", "invoke_auth = \"jwt\"\n");
    let refused = plain.cli(&["deploy", f.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("[jwt]"), "{err}");
    drop(plain);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("petrel.toml");
    std::fs::write(
        &config,
        format!(
            "[jwt]\nissuer = \"{}\"\naudience = [\"petrel-test\", \"another\"]\nclock_skew = \"60s\"\n",
            iss.url
        ),
    )
    .unwrap();
    let p = Petrel::start_with(StoreKind::Sqlite, &["--config", config.to_str().unwrap()]).await;
    p.deploy(f.path());
    let web = echo_function("guarded-web", "http", "invoke_auth = \"jwt\"\n");
    p.deploy(web.path());

    // RS256 and ES256 tokens open it; a Lambda handler finds the claims where an HTTP API's
    // JWT authorizer puts them, as text.
    for name in ["rs256", "es256", "within_skew"] {
        let r = get(&p, "/fn/guarded/me", bearer(&token(name))).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let ev = &r.json()["event"];
        let jwt = &ev["requestContext"]["authorizer"]["jwt"];
        assert_eq!(jwt["claims"]["sub"], "user-1", "{name}: {ev}");
        assert_eq!(jwt["claims"]["name"], "Zoë", "{name}: {ev}");
        assert_eq!(jwt["claims"]["groups"], "[a b]", "{name}: {ev}");
        assert_eq!(jwt["scopes"], json!(["read", "write"]), "{name}: {ev}");
        assert!(ev["headers"].get("x-petrel-jwt-claims").is_none(), "{ev}");
    }
    // The keys were fetched once for all of that.
    assert_eq!(*iss.fetches.lock().unwrap(), 1);

    // An http function gets the claims as a header of JSON, and the token itself to pass on.
    let r = get(&p, "/fn/guarded-web/", bearer(&token("es256"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let headers = &r.json()["headers"];
    let claims: Value =
        serde_json::from_str(headers["x-petrel-jwt-claims"].as_str().unwrap()).unwrap();
    assert_eq!(claims["sub"], "user-1");
    assert_eq!(claims["name"], "Zoë");
    assert_eq!(claims["aud"], "petrel-test");
    assert_eq!(headers["authorization"], bearer(&token("es256")));

    // An async request is checked when it is accepted and carries its claims to the run.
    let r = p
        .http_with(
            "POST",
            "/async-fn/guarded/later",
            &[("authorization", &bearer(&token("rs256")))],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let done =
        crate::asynchronous::wait_status(&p, &id, "succeeded", std::time::Duration::from_secs(30))
            .await;
    let ev = &crate::asynchronous::result_json(&done)["event"];
    assert_eq!(
        ev["requestContext"]["authorizer"]["jwt"]["claims"]["sub"], "user-1",
        "{ev}"
    );
    let r = p
        .http_with(
            "POST",
            "/async-fn/guarded/later",
            &[("authorization", &bearer(&token("expired")))],
            b"{}".to_vec(),
        )
        .await;
    r.assert_error(401, "unauthorized");

    // Claims a caller makes up never get through, with a good token or none.
    let forged = r#"{"sub":"admin"}"#;
    let r = p
        .http_with(
            "GET",
            "/fn/guarded-web/",
            &[
                ("authorization", &bearer(&token("rs256"))),
                ("x-petrel-jwt-claims", forged),
            ],
            Vec::new(),
        )
        .await;
    let claims: Value =
        serde_json::from_str(r.json()["headers"]["x-petrel-jwt-claims"].as_str().unwrap()).unwrap();
    assert_eq!(claims["sub"], "user-1");
    let public = echo_function("open", "http", "invoke_auth = \"public\"\n");
    p.deploy(public.path());
    let r = p
        .http_with(
            "GET",
            "/fn/open/",
            &[("authorization", "-"), ("x-petrel-jwt-claims", forged)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["headers"].get("x-petrel-jwt-claims").is_none());

    // Every bad token is a 401 that says what is wrong with it, and the handler never runs.
    let bad = [
        ("expired", "expired"),
        ("not_yet", "not valid yet"),
        ("wrong_aud", "audience"),
        ("wrong_iss", "issuer"),
        ("no_exp", "`exp`"),
        ("tampered", "signature"),
        ("other_key", "signature"),
        ("hs256", "only RS256 and ES256"),
        ("none", "cannot be read"),
    ];
    for (name, says) in bad {
        let r = get(&p, "/fn/guarded/", bearer(&token(name))).await;
        let msg = r.assert_error(401, "unauthorized");
        assert!(msg.contains(says), "{name}: {msg}");
    }
    let r = get(&p, "/fn/guarded/", "-").await;
    assert!(r.assert_error(401, "unauthorized").contains("JWT"));

    // The issuer rotates: a token of its new key works once the set is fetched again (at
    // most every few seconds on account of unknown key ids).
    *iss.jwks.lock().unwrap() = minted["jwks2"].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (mut rotated, mut last) = (false, String::new());
    while !rotated && std::time::Instant::now() < deadline {
        let r = get(&p, "/fn/guarded/", bearer(&token("rotated"))).await;
        rotated = r.status == 200;
        last = r.text();
        if !rotated {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    assert!(rotated, "{last}");
    let fetched = *iss.fetches.lock().unwrap();
    assert!(fetched >= 2);
    // A key id the issuer does not publish, or one of another key type, is refused, and does
    // not make Petrel fetch again and again.
    for (name, says) in [
        ("unknown_kid", "no RS256 key with id \"nobody\""),
        ("rs_kid_on_ec", "no RS256 key with id \"ec-1\""),
    ] {
        for _ in 0..4 {
            let r = get(&p, "/fn/guarded/", bearer(&token(name))).await;
            let msg = r.assert_error(401, "unauthorized");
            assert!(msg.contains(says), "{name}: {msg}");
        }
    }
    assert!(*iss.fetches.lock().unwrap() <= fetched + 1);

    // An API key with invoker opens it too (services call it), and its key stays with Petrel.
    let invoker = crate::tenancy::key(&p, "default", "invoker");
    let r = get(&p, "/fn/guarded-web/", bearer(&invoker)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let headers = &r.json()["headers"];
    assert!(headers.get("authorization").is_none(), "{headers}");
    assert!(headers.get("x-petrel-jwt-claims").is_none(), "{headers}");
    let viewer = crate::tenancy::key(&p, "default", "viewer");
    let r = get(&p, "/fn/guarded/", bearer(&viewer)).await;
    r.assert_error(403, "forbidden");

    // Nothing of a token reaches the server's log.
    let log = p.server_log();
    assert!(!log.contains(&token("rs256")), "a token in the log");
}
