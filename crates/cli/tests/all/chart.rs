//! The Helm chart in `deploy/helm/petrel`: rendered by Helm (`PETREL_TEST_HELM`, installed by
//! `scripts/services.sh`) and every object validated against Kubernetes' own schemas
//! (`kubernetes-validate` from PyPI, strict: unknown fields are errors).

use std::path::PathBuf;
use std::process::Command;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/petrel")
}

/// `helm template` of the chart with these `--set` values.
fn render(values: &[&str]) -> std::process::Output {
    let mut helm = Command::new(std::env::var("PETREL_TEST_HELM").expect(
        "the chart test needs PETREL_TEST_HELM: run it through scripts/test.sh, or `. scripts/services.sh` first",
    ));
    helm.args(["template", "t"]).arg(chart());
    for v in values {
        helm.args(["--set", v]);
    }
    helm.output().unwrap()
}

/// Validates each document of `yaml` strictly against the newest Kubernetes schemas the
/// package has; returns the kinds, in order.
fn validate(yaml: &str) -> Vec<String> {
    let pkg = crate::lambda_clients::pip_target("kubernetes-validate==1.37.0");
    let script = r#"
import sys, json, yaml, kubernetes_validate as kv
version = kv.latest_version()
kinds = []
for doc in yaml.safe_load_all(sys.stdin):
    if not doc:
        continue
    kv.validate(doc, version, strict=True)
    kinds.append(doc["kind"])
print(json.dumps(kinds))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", pkg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_chart_renders_objects_kubernetes_accepts() {
    let out = render(&[
        "store.url=postgres://petrel:pw@db:5432/petrel",
        "masterKey.value=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        "persistence.enabled=true",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let mut kinds = validate(&yaml);
    kinds.sort();
    assert_eq!(
        kinds,
        ["Secret", "Secret", "Service", "Service", "StatefulSet"]
    );
    for needle in [
        "--advertise=http://$(POD_NAME).t-petrel-nodes.$(POD_NAMESPACE).svc:8080",
        "--node-id=$(POD_NAME)",
        "path: /readyz",
        "terminationGracePeriodSeconds: 40",
        "name: PETREL_MASTER_KEY",
    ] {
        assert!(yaml.contains(needle), "{needle} missing:\n{yaml}");
    }
    // With existing Secrets, the chart makes none.
    let out = render(&["store.existingSecret=db", "masterKey.existingSecret=mk"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds = validate(&String::from_utf8(out.stdout).unwrap());
    assert!(!kinds.iter().any(|k| k == "Secret"), "{kinds:?}");
}

#[test]
fn the_chart_refuses_to_render_without_a_store() {
    let out = render(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set store.url"), "{err}");
}
