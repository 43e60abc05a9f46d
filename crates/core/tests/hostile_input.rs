//! Property tests of what Petrel parses from users: manifests (any keys, any values, any text)
//! and function references in routes. Nothing panics; a refusal names what is wrong; what is
//! accepted survives being written back and read again unchanged.

use petrel_core::{FunctionRef, Manifest};
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "name",
    "runtime",
    "handler",
    "memory_mb",
    "timeout",
    "concurrency",
    "min_instances",
    "max_instances",
    "keep_alive",
    "keep_alive_policy",
    "queue_size",
    "queue_timeout",
    "allowed_outbound_hosts",
    "network",
    "tmp_mb",
    "max_retries",
    "max_event_age",
    "async_timeout",
    "async_concurrency",
    "on_success",
    "on_failure",
    "invoke_auth",
    "secrets",
    "rate_limit",
    "rate_limit_burst",
    "env",
    "trigger",
    "unknown_key",
];

fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..5000).prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
        prop_oneof![
            Just("\"python3\""),
            Just("\"wasm\""),
            Just("\"http\""),
            Just("\"nodejs\""),
            Just("\"provided\""),
            Just("\"30s\""),
            Just("\"0s\""),
            Just("\"100/s\""),
            Just("\"0/s\""),
            Just("\"public\""),
            Just("\"jwt\""),
            Just("\"dlq\""),
            Just("\"app.handler\""),
            Just("\"a.wasm\""),
            Just("\"host\""),
            Just("\"hybrid\""),
        ]
        .prop_map(str::to_owned),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

fn manifest_text() -> impl Strategy<Value = String> {
    let line = (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}"));
    (
        prop::collection::vec(line, 0..10),
        prop::option::of("\\PC{0,30}"),
    )
        .prop_map(|(lines, junk)| {
            let mut t =
                "name = \"f\"\nruntime = \"python3\"\nhandler = \"app.handler\"\n".to_owned();
            for l in lines {
                t.push_str(&l);
                t.push('\n');
            }
            if let Some(j) = junk {
                t.push_str(&j);
            }
            t
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn any_manifest_is_refused_with_a_reason_or_round_trips(text in manifest_text()) {
        match Manifest::from_toml(&text).and_then(|m| m.validate()) {
            Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
            Ok(spec) => {
                let again = Manifest::from(&spec).to_toml();
                let back = Manifest::from_toml(&again).and_then(|m| m.validate());
                prop_assert_eq!(back.as_ref(), Ok(&spec), "written back as:\n{}", again);
            }
        }
    }

    #[test]
    fn any_text_is_a_manifest_or_an_error(text in "\\PC{0,200}") {
        let _ = Manifest::from_toml(&text).and_then(|m| m.validate());
    }

    #[test]
    fn function_references_parse_or_are_refused_and_print_back(s in "[a-z0-9.:_-]{0,24}|\\PC{0,24}") {
        if let Ok(r) = FunctionRef::parse(&s, "default") {
            let again = FunctionRef::parse(&r.to_string(), "default");
            prop_assert_eq!(again.as_ref(), Ok(&r));
        }
    }
}
