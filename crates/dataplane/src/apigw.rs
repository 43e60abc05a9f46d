//! The API Gateway HTTP API (payload format 2.0) mapping between an HTTP request and a Lambda
//! event, and between a handler's result and an HTTP response, as AWS documents it.

use axum::extract::Query;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use petrel_runtime::Body;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Content types sent to the handler as text; anything else goes base64-encoded.
fn is_textual(headers: &HeaderMap) -> bool {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    ct.is_empty()
        || ct.starts_with("text/")
        || ct.contains("json")
        || ct.contains("xml")
        || ct.contains("javascript")
        || ct.starts_with("application/x-www-form-urlencoded")
}

/// The event of an API Gateway HTTP API (payload format 2.0), as AWS documents it.
///
/// Written here rather than with `aws_lambda_events`' `ApiGatewayV2httpRequest`: that type
/// serialises the Custom Authorizer v1 fields too (`"httpMethod": "GET"`, `"type": null`,
/// `"methodArn": null`, ...), and handlers (and `lambda_http`) that tell a v1 event from a v2
/// one by `httpMethod` would read the event wrongly. The tests check that the event reads back
/// as that type.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HttpApiEvent<'a> {
    version: &'static str,
    route_key: &'static str,
    raw_path: &'a str,
    raw_query_string: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<String>,
    /// Repeated headers joined with commas, as API Gateway joins them.
    headers: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query_string_parameters: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_parameters: Option<PathParameters<'a>>,
    request_context: RequestContext<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    is_base64_encoded: bool,
}

#[derive(Debug, Serialize)]
struct PathParameters<'a> {
    proxy: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    account_id: &'static str,
    api_id: &'static str,
    domain_name: &'a str,
    domain_prefix: &'a str,
    http: HttpDescription<'a>,
    request_id: &'a str,
    route_key: &'static str,
    stage: &'static str,
    time: String,
    time_epoch: i64,
    /// A verified JWT's claims, as an HTTP API's JWT authorizer hands them on.
    #[serde(skip_serializing_if = "Option::is_none")]
    authorizer: Option<Authorizer>,
}

#[derive(Debug, Serialize)]
struct Authorizer {
    jwt: JwtDescription,
}

#[derive(Debug, Serialize)]
struct JwtDescription {
    /// Every claim as text, as API Gateway gives them: numbers and booleans written out, a
    /// list as `[a b]`, an object as its JSON.
    claims: BTreeMap<String, String>,
    /// The `scope` claim split at spaces (or the `scp` list); `null` without one.
    scopes: Option<Vec<String>>,
}

/// The authorizer part of the event, from the claims the gateway put on the request.
fn authorizer(headers: &HeaderMap) -> Option<Authorizer> {
    let text = headers
        .get(petrel_core::auth::JWT_CLAIMS_HEADER)?
        .to_str()
        .ok()?;
    let claims: serde_json::Map<String, Value> = serde_json::from_str(text).ok()?;
    fn as_text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Array(items) => format!(
                "[{}]",
                items.iter().map(as_text).collect::<Vec<_>>().join(" ")
            ),
            other => other.to_string(),
        }
    }
    let scopes = match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => Some(s.split_whitespace().map(str::to_owned).collect()),
        (_, Some(Value::Array(items))) => Some(items.iter().map(as_text).collect()),
        (_, Some(Value::String(s))) => Some(s.split_whitespace().map(str::to_owned).collect()),
        _ => None,
    };
    Some(Authorizer {
        jwt: JwtDescription {
            claims: claims
                .iter()
                .map(|(k, v)| (k.clone(), as_text(v)))
                .collect(),
            scopes,
        },
    })
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpDescription<'a> {
    method: &'a str,
    path: &'a str,
    protocol: String,
    source_ip: String,
    user_agent: &'a str,
}

/// Builds the event for a request whose URI is already the function's own (`/a/b?x=1`).
pub(crate) fn event<'a>(
    parts: &'a http::request::Parts,
    body: &Bytes,
    request_id: &'a str,
    source_ip: Option<IpAddr>,
    now_ms: i64,
) -> HttpApiEvent<'a> {
    let mut headers = BTreeMap::new();
    let mut cookies = Vec::new();
    for name in parts.headers.keys() {
        if name == petrel_core::auth::JWT_CLAIMS_HEADER {
            // In `requestContext.authorizer` instead.
            continue;
        }
        let values: Vec<&str> = parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if name == header::COOKIE {
            cookies.extend(
                values
                    .iter()
                    .flat_map(|v| v.split(';'))
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty()),
            );
        } else {
            headers.insert(name.as_str(), values.join(","));
        }
    }
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) {
        for (k, v) in pairs {
            query
                .entry(k)
                .and_modify(|s| {
                    s.push(',');
                    s.push_str(&v);
                })
                .or_insert(v);
        }
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let path = parts.uri.path();
    let rest = path.trim_start_matches('/');
    let (body, is_base64_encoded) = match std::str::from_utf8(body) {
        _ if body.is_empty() => (None, false),
        Ok(text) if is_textual(&parts.headers) => (Some(text.to_owned()), false),
        _ => (
            Some(base64::engine::general_purpose::STANDARD.encode(body)),
            true,
        ),
    };
    HttpApiEvent {
        version: "2.0",
        route_key: "$default",
        raw_path: path,
        raw_query_string: parts.uri.query().unwrap_or(""),
        cookies,
        headers,
        query_string_parameters: query,
        path_parameters: (!rest.is_empty()).then_some(PathParameters { proxy: rest }),
        request_context: RequestContext {
            account_id: petrel_core::arn::ACCOUNT,
            api_id: "petrel",
            domain_name: host,
            domain_prefix: host.split('.').next().unwrap_or(host),
            http: HttpDescription {
                method: parts.method.as_str(),
                path,
                protocol: format!("{:?}", parts.version),
                source_ip: source_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "127.0.0.1".into()),
                user_agent: parts
                    .headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            },
            request_id,
            route_key: "$default",
            stage: "$default",
            time: clf_time(now_ms),
            time_epoch: now_ms,
            authorizer: authorizer(&parts.headers),
        },
        body,
        is_base64_encoded,
    }
}

fn header_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Turns a handler's result into an HTTP response. A result with `statusCode` is a response
/// object; anything else is a 200 whose body is the result (a string as is, else its JSON).
pub(crate) fn response(result: &[u8]) -> Result<Response<Body>, String> {
    let parsed: Option<Value> = serde_json::from_slice(result).ok();
    let Some(Value::Object(obj)) = parsed.as_ref().filter(|v| v.get("statusCode").is_some()) else {
        let body = match &parsed {
            Some(Value::String(s)) => Bytes::from(s.clone()),
            _ => Bytes::copy_from_slice(result),
        };
        let mut resp = Response::new(Body::from(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    };
    let status = match &obj["statusCode"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .and_then(|n| u16::try_from(n).ok())
    .and_then(|n| StatusCode::from_u16(n).ok())
    .ok_or_else(|| format!("statusCode {} is not an HTTP status", obj["statusCode"]))?;
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str, append: bool| -> Result<(), String> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?} is invalid"))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name} has an invalid value"))?;
        if append {
            headers.append(n, v);
        } else {
            headers.insert(n, v);
        }
        Ok(())
    };
    if let Some(Value::Object(h)) = obj.get("headers") {
        for (k, v) in h {
            if let Some(t) = header_text(v) {
                put(k, &t, false)?;
            }
        }
    }
    if let Some(Value::Object(h)) = obj.get("multiValueHeaders") {
        for (k, vs) in h {
            for v in vs.as_array().into_iter().flatten() {
                if let Some(t) = header_text(v) {
                    put(k, &t, true)?;
                }
            }
        }
    }
    if let Some(Value::Array(cs)) = obj.get("cookies") {
        for c in cs.iter().filter_map(Value::as_str) {
            put("set-cookie", c, true)?;
        }
    }
    let base64 = obj
        .get("isBase64Encoded")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if base64 => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("body is marked isBase64Encoded but is not base64 ({e})"))?,
        ),
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    if !body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// `26/Nov/2026:11:02:58 +0000`, the time format API Gateway puts in `requestContext.time`.
fn clf_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    use serde_json::json;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn event_carries_the_request() {
        let p = parts(
            "/a/b?x=1&y=two%20words&x=3",
            &[
                ("content-type", "application/json"),
                ("cookie", "a=1; b=2"),
                ("x-multi", "1"),
                ("x-multi", "2"),
            ],
        );
        let ev = serde_json::to_value(event(
            &p,
            &Bytes::from_static(b"{\"k\":1}"),
            "req-1",
            None,
            1_764_154_978_000,
        ))
        .unwrap();
        assert_eq!(ev["version"], "2.0");
        assert_eq!(ev["rawPath"], "/a/b");
        assert_eq!(ev["rawQueryString"], "x=1&y=two%20words&x=3");
        assert_eq!(ev["queryStringParameters"]["x"], "1,3");
        assert_eq!(ev["queryStringParameters"]["y"], "two words");
        assert_eq!(ev["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(ev["headers"]["x-multi"], "1,2");
        assert!(ev["headers"].get("cookie").is_none());
        assert_eq!(ev["requestContext"]["http"]["method"], "POST");
        assert_eq!(ev["requestContext"]["requestId"], "req-1");
        assert_eq!(ev["requestContext"]["time"], "26/Nov/2025:11:02:58 +0000");
        assert_eq!(ev["pathParameters"]["proxy"], "a/b");
        assert_eq!(ev["body"], "{\"k\":1}");
        assert_eq!(ev["isBase64Encoded"], false);
    }

    /// The event reads back as the official Rust types read it (`lambda_http` parses with
    /// them), with nothing lost or mistaken: no v1 field makes it look like a v1 event.
    #[test]
    fn the_event_reads_back_as_aws_lambda_events_types() {
        use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
        let p = parts(
            "/a/b?x=1&x=2",
            &[
                ("content-type", "text/plain"),
                ("cookie", "c=1"),
                ("x-k", "v"),
            ],
        );
        let ev = event(&p, &Bytes::from_static(b"hello"), "req-9", None, 1);
        let json = serde_json::to_value(&ev).unwrap();
        assert!(json.get("httpMethod").is_none(), "{json}");
        let back: ApiGatewayV2httpRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back.version.as_deref(), Some("2.0"));
        assert_eq!(back.raw_path.as_deref(), Some("/a/b"));
        assert_eq!(back.raw_query_string.as_deref(), Some("x=1&x=2"));
        assert_eq!(back.request_context.http.method, http::Method::POST);
        assert_eq!(back.request_context.request_id.as_deref(), Some("req-9"));
        assert_eq!(back.headers["x-k"], "v");
        assert_eq!(back.cookies, Some(vec!["c=1".to_owned()]));
        assert_eq!(back.query_string_parameters.all("x"), Some(vec!["1", "2"]));
        assert_eq!(back.path_parameters["proxy"], "a/b");
        assert_eq!(back.body.as_deref(), Some("hello"));
        assert!(!back.is_base64_encoded);
    }

    /// A verified JWT's claims reach a handler as an HTTP API's JWT authorizer gives them, in
    /// the shape the official Rust types read.
    #[test]
    fn jwt_claims_become_the_authorizer_context() {
        use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
        let claims = r#"{"sub":"u-1","aud":["a","b"],"exp":1764154978,"admin":true,"scope":"read write","org":{"id":7}}"#;
        let p = parts("/", &[(petrel_core::auth::JWT_CLAIMS_HEADER, claims)]);
        let json = serde_json::to_value(event(&p, &Bytes::new(), "r", None, 0)).unwrap();
        let jwt = &json["requestContext"]["authorizer"]["jwt"];
        assert_eq!(jwt["claims"]["sub"], "u-1");
        assert_eq!(jwt["claims"]["aud"], "[a b]");
        assert_eq!(jwt["claims"]["exp"], "1764154978");
        assert_eq!(jwt["claims"]["admin"], "true");
        assert_eq!(jwt["claims"]["org"], r#"{"id":7}"#);
        assert_eq!(jwt["scopes"], json!(["read", "write"]));
        // Only in the authorizer, not among the headers.
        assert!(json["headers"]
            .get(petrel_core::auth::JWT_CLAIMS_HEADER)
            .is_none());
        let back: ApiGatewayV2httpRequest = serde_json::from_value(json).unwrap();
        let read = back.request_context.authorizer.unwrap().jwt.unwrap();
        assert_eq!(read.claims["sub"], "u-1");
        assert_eq!(
            read.scopes,
            Some(vec!["read".to_owned(), "write".to_owned()])
        );
        // Without claims there is no authorizer.
        let plain =
            serde_json::to_value(event(&parts("/", &[]), &Bytes::new(), "r", None, 0)).unwrap();
        assert!(plain["requestContext"].get("authorizer").is_none());
    }

    #[test]
    fn binary_bodies_are_base64() {
        let p = parts("/", &[("content-type", "application/octet-stream")]);
        let ev = serde_json::to_value(event(
            &p,
            &Bytes::from_static(&[0, 159, 146, 150]),
            "r",
            None,
            0,
        ))
        .unwrap();
        assert_eq!(ev["isBase64Encoded"], true);
        assert_eq!(ev["body"], "AJ+Slg==");
        assert!(ev.get("pathParameters").is_none());
    }

    async fn body_of(r: Response<Body>) -> Vec<u8> {
        r.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn response_objects_map_to_http() {
        let r = response(br#"{"statusCode": 201, "headers": {"x-a": "1", "content-type": "text/plain"}, "cookies": ["s=1", "t=2"], "body": "made"}"#).unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(body_of(r).await, b"made");

        let r = response(br#"{"statusCode": "200", "isBase64Encoded": true, "body": "AJ+Slg=="}"#)
            .unwrap();
        assert_eq!(body_of(r).await, vec![0, 159, 146, 150]);

        let r = response(br#"{"hello": "world"}"#).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(body_of(r).await, br#"{"hello": "world"}"#);

        let r = response(br#""just text""#).unwrap();
        assert_eq!(body_of(r).await, b"just text");

        assert!(response(br#"{"statusCode": 99999}"#)
            .unwrap_err()
            .contains("statusCode"));
        assert!(response(br#"{"statusCode": 200, "headers": {"bad name": "x"}}"#).is_err());
    }
}
