//! The store's suite, run against SQLite (a real file) and PostgreSQL (the server started by
//! `scripts/services.sh`; its URL comes in `PETREL_TEST_POSTGRES_URL`).

use petrel_core::api::{AsyncKind, AsyncStatus, InvocationOutcome, LogLine, Trigger};
use petrel_core::release::{AliasRoute, RolloutEvent, RolloutPlan, RolloutState, Weighted};
use petrel_core::{FunctionSpec, Manifest};
use petrel_store::{ArtifactStore, Backend, PackageLimits, Store};
use sqlx::Connection;
use std::io::Write;

mod artifacts;
mod hostile_packages;

fn spec(name: &str, runtime: &str) -> FunctionSpec {
    let handler = if runtime == "http" {
        "node server.js"
    } else {
        "app.handler"
    };
    Manifest::from_toml(&format!(
        "name = \"{name}\"\nruntime = \"{runtime}\"\nhandler = \"{handler}\"\n"
    ))
    .unwrap()
    .validate()
    .unwrap()
}

/// A PostgreSQL database made for one test and dropped after it.
struct PgDb {
    admin_url: String,
    name: String,
    store: Store,
}

impl PgDb {
    async fn new() -> Self {
        let admin_url = std::env::var("PETREL_TEST_POSTGRES_URL").expect(
            "PostgreSQL tests need PETREL_TEST_POSTGRES_URL: run them through scripts/test.sh, \
             or `. scripts/services.sh` first",
        );
        sqlx::any::install_default_drivers();
        let name = format!("petrel_t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::AnyConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let store = Store::open(&format!("{base}/{name}")).await.unwrap();
        Self {
            admin_url,
            name,
            store,
        }
    }

    async fn drop_db(self) {
        self.store.close().await;
        let mut admin = sqlx::AnyConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    Store::open_sqlite(&dir.path().join("petrel.db"))
        .await
        .unwrap()
}

/// Declares one test per backend for a suite function `async fn(Store)`.
macro_rules! both_backends {
    ($($suite:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $suite() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::sqlite_store(&dir).await;
                    assert_eq!(store.backend(), super::Backend::Sqlite);
                    super::$suite(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $suite() {
                    let db = super::PgDb::new().await;
                    assert_eq!(db.store.backend(), super::Backend::Postgres);
                    super::$suite(db.store.clone()).await;
                    db.drop_db().await;
                }
            )*
        }
    };
}

both_backends!(
    versions_are_numbered_and_immutable,
    concurrent_deploys_get_distinct_versions,
    list_get_and_delete,
    logs_are_read_filtered_and_trimmed,
    invocations_are_recorded_and_metered,
    idle_histograms_are_saved_and_replaced,
    async_claims_are_exclusive_guarded_and_resumable,
    aliases_name_versions_and_go_with_their_function,
    aliases_split_and_rollouts_have_one_driver,
    trigger_states_count_pause_and_claim_cron_fires_once,
    tenancy_keeps_namespaces_keys_secrets_and_audit,
);

async fn aliases_split_and_rollouts_have_one_driver(store: Store) {
    for d in ["d1", "d2"] {
        store
            .create_version("default", &spec("f", "python3"), d, 1)
            .await
            .unwrap();
    }
    let key = ("default", "f");
    let split = AliasRoute {
        version: Some(1),
        additional: Some(Weighted {
            version: 2,
            weight: 0.1,
        }),
    };
    assert!(store.put_alias(key, "prod", split, "", true).await.unwrap());
    let a = store
        .get_alias("default", "f", "prod")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.route, split, "the weight survives the round trip");

    // A move only happens from the route it expects.
    let wider = AliasRoute {
        additional: Some(Weighted {
            version: 2,
            weight: 0.5,
        }),
        ..split
    };
    assert!(!store
        .move_alias(key, "prod", AliasRoute::single(Some(1)), wider)
        .await
        .unwrap());
    assert!(store.move_alias(key, "prod", split, wider).await.unwrap());

    // --no-traffic pins the aliases that follow the latest, and only those.
    assert!(store
        .put_alias(key, "edge", AliasRoute::single(None), "", true)
        .await
        .unwrap());
    assert_eq!(
        store
            .pin_following_aliases("default", "f", 2)
            .await
            .unwrap(),
        1
    );
    let edge = store
        .get_alias("default", "f", "edge")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(edge.route, AliasRoute::single(Some(2)));

    let plan = RolloutPlan::parse(Some("10,100"), None, Some("5s")).unwrap();
    let event = || RolloutEvent {
        at: 0,
        percent: 10.0,
        message: "started".into(),
    };
    let r = store
        .create_rollout(key, "prod", (1, 2), &plan, event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.state, r.step, r.plan.steps.len()),
        (RolloutState::Running, 0, 2)
    );
    assert!(
        store
            .create_rollout(key, "prod", (1, 2), &plan, event())
            .await
            .unwrap()
            .is_none(),
        "one rollout in progress per alias"
    );

    // Two servers: the first claims it, the second gets nothing until the lease runs out. No
    // one claims it before its start has moved the alias.
    assert!(store.any_running_rollout().await.unwrap());
    let far = petrel_store::now_ms() + 60_000;
    assert!(
        store.claim_rollouts("a", far).await.unwrap().is_empty(),
        "held while it starts"
    );
    store.rollout_started(r.id).await.unwrap();
    assert_eq!(store.claim_rollouts("a", far).await.unwrap().len(), 1);
    assert!(store.claim_rollouts("b", far).await.unwrap().is_empty());
    assert_eq!(
        store.claim_rollouts("a", far).await.unwrap().len(),
        1,
        "renewed"
    );
    let mut next = r.clone();
    next.step = 1;
    assert!(!store.update_rollout(&next, Some("b")).await.unwrap());
    assert!(store.update_rollout(&next, Some("a")).await.unwrap());
    // An expired lease passes to another server.
    assert_eq!(store.claim_rollouts("a", 0).await.unwrap().len(), 1);
    assert_eq!(store.claim_rollouts("b", far).await.unwrap().len(), 1);

    next.state = RolloutState::RolledBack;
    next.reason = Some("error rate".into());
    next.history.push(event());
    assert!(store.update_rollout(&next, None).await.unwrap(), "by hand");
    let back = store.get_rollout(r.id).await.unwrap().unwrap();
    assert_eq!(
        (
            back.state,
            back.step,
            back.history.len(),
            back.reason.as_deref()
        ),
        (RolloutState::RolledBack, 1, 2, Some("error rate"))
    );
    assert!(store
        .active_rollout("default", "f", "prod")
        .await
        .unwrap()
        .is_none());
    assert!(
        store.claim_rollouts("c", far).await.unwrap().is_empty(),
        "finished"
    );
    assert!(store
        .create_rollout(key, "prod", (2, 1), &plan, event())
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.list_rollouts("default", "f").await.unwrap().len(), 2);

    // What the driver judges: a version's calls, errors and p99 since a time, from its records.
    let mut recs: Vec<_> = (1..=200u64)
        .map(|i| {
            let outcome = if i % 10 == 0 {
                "function_error"
            } else {
                "success"
            };
            let mut r = record(&format!("v2-{i}"), "f", 1_000 + i as i64, i, 128, outcome);
            r.version = 2;
            r
        })
        .collect();
    // Version 1's and older records are not counted.
    recs.push(record("v1-old", "f", 5_000, 9_999, 128, "timeout"));
    recs.push(record("v2-old", "f", 10, 9_999, 128, "timeout"));
    recs.last_mut().unwrap().version = 2;
    store.append_invocations(&recs).await.unwrap();
    let s = store.version_stats(key, 2, 1_000).await.unwrap();
    assert_eq!((s.calls, s.errors, s.p99_ms), (200, 20, 198), "{s:?}");
    assert_eq!(s.error_rate(), 0.1);
    assert_eq!(
        store.version_stats(key, 3, 0).await.unwrap(),
        petrel_store::VersionStats::default()
    );
    assert!(store.delete_function("default", "f").await.unwrap());
    assert!(store
        .list_rollouts("default", "f")
        .await
        .unwrap()
        .is_empty());
}

async fn tenancy_keeps_namespaces_keys_secrets_and_audit(store: Store) {
    use petrel_store::{AuditEntry, KeyRecord};
    // `default` exists from the start; others are made once.
    assert!(store.namespace_exists("default").await.unwrap());
    assert!(store.create_namespace("a").await.unwrap());
    assert!(!store.create_namespace("a").await.unwrap());
    assert!(store
        .set_namespace_quotas("a", Some("{\"max_rps\":5}"))
        .await
        .unwrap());
    assert_eq!(
        store.namespace_quotas("a").await.unwrap().as_deref(),
        Some("{\"max_rps\":5}")
    );
    assert!(!store.set_namespace_quotas("nope", None).await.unwrap());
    assert_eq!(store.all_quotas().await.unwrap().len(), 1);
    // Keys with their roles; revoked once.
    assert_eq!(store.key_count().await.unwrap(), 0);
    let k = KeyRecord {
        id: "k1".into(),
        description: "ci".into(),
        hash: "$argon2id$...".into(),
        owner: false,
        sigv4: Some("sealed".into()),
        created_by: Some("owner".into()),
        created_at: 5,
        revoked_at: None,
        roles: vec![
            ("a".into(), "developer".into()),
            ("default".into(), "viewer".into()),
        ],
    };
    store.insert_key(&k).await.unwrap();
    let mut got = store.key("k1").await.unwrap().unwrap();
    got.roles.sort();
    assert_eq!(got, k);
    assert_eq!(store.list_keys().await.unwrap().len(), 1);
    assert!(store.revoke_key("k1").await.unwrap());
    assert!(!store.revoke_key("k1").await.unwrap());
    assert!(store.key("k1").await.unwrap().unwrap().revoked_at.is_some());
    // Secrets: a version per set.
    assert_eq!(store.put_secret("a", "db", "s1").await.unwrap(), 1);
    assert_eq!(store.put_secret("a", "db", "s2").await.unwrap(), 2);
    let sec = store.secret("a", "db").await.unwrap().unwrap();
    assert_eq!((sec.sealed.as_str(), sec.version), ("s2", 2));
    assert!(store.secret("default", "db").await.unwrap().is_none());
    assert_eq!(store.list_secrets("a").await.unwrap().len(), 1);
    // The audit log, per namespace, newest first.
    for (ns, action) in [("a", "one"), ("a", "two"), ("default", "three")] {
        store
            .insert_audit(&AuditEntry {
                ts: 1,
                namespace: Some(ns.into()),
                action: action.into(),
                target: "t".into(),
                outcome: "ok".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let a: Vec<_> = store
        .list_audit(Some("a"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(a, ["two", "one"]);
    assert_eq!(store.list_audit(None, 2).await.unwrap().len(), 2);
    // A namespace that holds functions stays; an empty one goes with its roles and secrets.
    store
        .create_version("a", &spec("f", "python3"), "d", 1)
        .await
        .unwrap();
    assert_eq!(store.delete_namespace("a").await.unwrap(), Err(1));
    assert!(store.delete_function("a", "f").await.unwrap());
    assert_eq!(store.delete_namespace("a").await.unwrap(), Ok(true));
    assert_eq!(store.delete_namespace("a").await.unwrap(), Ok(false));
    assert!(store.secret("a", "db").await.unwrap().is_none());
    assert_eq!(store.key("k1").await.unwrap().unwrap().roles.len(), 1);
}

async fn trigger_states_count_pause_and_claim_cron_fires_once(store: Store) {
    use petrel_store::TriggerCounts;
    let c = |d, f, x| TriggerCounts {
        delivered: d,
        failed: f,
        dead: x,
    };
    // The first write makes the row; later ones add; an error sticks until another replaces it.
    store
        .add_trigger_counts("ns", "f", "t", c(3, 1, 0), Some("boom"))
        .await
        .unwrap();
    store
        .add_trigger_counts("ns", "f", "t", c(2, 0, 1), None)
        .await
        .unwrap();
    store
        .set_trigger_paused("ns", "f", "t", true)
        .await
        .unwrap();
    let s = &store.trigger_states("ns", "f").await.unwrap()[0];
    assert_eq!((s.delivered, s.failed, s.dead, s.paused), (5, 1, 1, true));
    assert_eq!(s.last_error.as_deref(), Some("boom"));
    assert!(s.last_error_at.is_some());
    store
        .set_trigger_paused("ns", "f", "t", false)
        .await
        .unwrap();
    assert!(!store.trigger_states("ns", "f").await.unwrap()[0].paused);
    // A new cron trigger starts from its baseline; each due time is claimed once, and never one
    // earlier than the last.
    assert_eq!(
        store.cron_last_fire("ns", "f", "c", 1_000).await.unwrap(),
        1_000
    );
    assert_eq!(
        store.cron_last_fire("ns", "f", "c", 5_000).await.unwrap(),
        1_000
    );
    assert!(store.claim_cron_fire("ns", "f", "c", 2_000).await.unwrap());
    assert!(!store.claim_cron_fire("ns", "f", "c", 2_000).await.unwrap());
    assert!(!store.claim_cron_fire("ns", "f", "c", 1_500).await.unwrap());
    assert!(store.claim_cron_fire("ns", "f", "c", 3_000).await.unwrap());
    // A first claim makes the row too.
    assert!(store.claim_cron_fire("ns", "f", "fresh", 10).await.unwrap());
    store.remove_trigger("ns", "f", "c").await.unwrap();
    let names: Vec<String> = store
        .trigger_states("ns", "f")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["fresh", "t"]);
    // A position is kept across writes of counts, and goes with the trigger.
    assert_eq!(store.trigger_position("ns", "f", "t").await.unwrap(), None);
    store
        .set_trigger_position("ns", "f", "t", "binlog.000001:400")
        .await
        .unwrap();
    store
        .add_trigger_counts("ns", "f", "t", c(1, 0, 0), None)
        .await
        .unwrap();
    store
        .set_trigger_position("ns", "f", "t", "binlog.000002:4")
        .await
        .unwrap();
    assert_eq!(
        store
            .trigger_position("ns", "f", "t")
            .await
            .unwrap()
            .as_deref(),
        Some("binlog.000002:4")
    );
    // A secret is made once and kept.
    let secret = store.trigger_secret("ns", "f", "t").await.unwrap();
    assert!(secret.len() >= 32);
    assert_eq!(store.trigger_secret("ns", "f", "t").await.unwrap(), secret);
    assert_ne!(
        store.trigger_secret("ns", "f", "other").await.unwrap(),
        secret
    );
    store.remove_trigger("ns", "f", "t").await.unwrap();
    assert_eq!(store.trigger_position("ns", "f", "t").await.unwrap(), None);
}

async fn aliases_name_versions_and_go_with_their_function(store: Store) {
    store
        .create_version("default", &spec("f", "python3"), "d1", 1)
        .await
        .unwrap();
    let key = ("default", "f");
    assert!(store
        .put_alias(key, "live", AliasRoute::single(Some(1)), "first", true)
        .await
        .unwrap());
    assert!(
        !store
            .put_alias(key, "live", AliasRoute::single(Some(1)), "again", true)
            .await
            .unwrap(),
        "exists"
    );
    assert!(
        !store
            .put_alias(key, "nope", AliasRoute::single(Some(1)), "", false)
            .await
            .unwrap(),
        "no such alias"
    );
    let before = store
        .get_alias("default", "f", "live")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (before.route.version, before.description.as_str()),
        (Some(1), "first")
    );
    assert!(store
        .put_alias(key, "live", AliasRoute::single(None), "latest", false)
        .await
        .unwrap());
    let after = store
        .get_alias("default", "f", "live")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.route.version, None);
    assert_ne!(
        after.revision, before.revision,
        "each update has its revision"
    );
    assert!(store
        .put_alias(key, "beta", AliasRoute::single(Some(1)), "", true)
        .await
        .unwrap());
    let names: Vec<String> = store
        .list_aliases("default", "f")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["beta", "live"]);
    assert!(store.delete_alias("default", "f", "beta").await.unwrap());
    assert!(!store.delete_alias("default", "f", "beta").await.unwrap());
    store.delete_function("default", "f").await.unwrap();
    assert!(store.list_aliases("default", "f").await.unwrap().is_empty());
}

fn submission(id: &str, key: Option<&str>) -> petrel_store::NewAsync {
    petrel_store::NewAsync {
        id: id.to_owned(),
        namespace: "default".into(),
        function: "f".into(),
        version: None,
        kind: AsyncKind::Event,
        method: "POST".into(),
        path: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"n": 1}"#.to_vec(),
        created_at: 1_000,
        run_at: 1_000,
        callback_url: None,
        idem_key: key.map(str::to_owned),
    }
}

fn finish(status: &str) -> petrel_store::Finish {
    petrel_store::Finish {
        status: status.parse().unwrap(),
        run_at: 2_000,
        executed_version: Some(1),
        result: Some((200, vec![], b"ok".to_vec())),
        error: None,
        deliveries: vec![petrel_store::NewDelivery {
            url: "http://127.0.0.1:9/cb".into(),
            headers: vec![],
            body: b"ok".to_vec(),
        }],
        follow_ups: vec![],
    }
}

async fn async_claims_are_exclusive_guarded_and_resumable(store: Store) {
    use std::collections::HashSet;
    // PostgreSQL announces the work at the commit; SQLite has nobody else to tell.
    let mut wakes = store.async_wakes().await.unwrap();
    assert_eq!(wakes.is_some(), store.backend() == Backend::Postgres);
    let subs: Vec<_> = (0..200)
        .map(|i| submission(&format!("id-{i:03}"), None))
        .collect();
    store.insert_async(&subs).await.unwrap();
    if let Some(w) = &mut wakes {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), w.recv()).await;
        assert_eq!(
            got.unwrap(),
            Some(("default".into(), "f".into())),
            "one announcement per function"
        );
        assert!(w.try_recv().is_err());
    }
    assert_eq!(
        store.ready_async(1_000).await.unwrap(),
        vec![("default".into(), "f".into(), 200)]
    );
    assert!(
        store.ready_async(999).await.unwrap().is_empty(),
        "not due yet"
    );
    let depth = |status: &str, count| petrel_store::AsyncBacklog {
        namespace: "default".into(),
        function: "f".into(),
        status: status.parse().unwrap(),
        count,
        oldest_created_at: 1_000,
    };
    assert_eq!(
        store.async_backlog().await.unwrap(),
        vec![depth("queued", 200)]
    );
    // Two claimers at once: on PostgreSQL, SKIP LOCKED keeps them apart.
    let key = ("default", "f");
    let (a, b) = tokio::join!(
        store.lease_async("a", key, 150, 1_000, 31_000),
        store.lease_async("b", key, 150, 1_000, 31_000)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let rest = store
        .lease_async("c", key, 500, 1_000, 31_000)
        .await
        .unwrap();
    let ids =
        |v: &[petrel_store::LeasedAsync]| v.iter().map(|j| j.id.clone()).collect::<HashSet<_>>();
    let (ia, ib, ic) = (ids(&a), ids(&b), ids(&rest));
    assert!(ia.is_disjoint(&ib) && ia.is_disjoint(&ic) && ib.is_disjoint(&ic));
    assert_eq!(
        ia.len() + ib.len() + ic.len(),
        200,
        "every one claimed once"
    );
    assert!(a
        .iter()
        .chain(&b)
        .all(|j| j.attempt == 1 && j.body == br#"{"n": 1}"#));
    // An outcome counts only from the holder of the claim, for that attempt.
    let j = &a[0];
    let ended = |id: &str, attempt| petrel_store::Ended {
        id: id.to_owned(),
        attempt,
        now: 2_000,
        finish: finish("succeeded"),
    };
    assert_eq!(
        store.finish_async("b", &[ended(&j.id, 1)]).await.unwrap(),
        vec![false]
    );
    assert_eq!(
        store.finish_async("a", &[ended(&j.id, 2)]).await.unwrap(),
        vec![false]
    );
    assert_eq!(
        store.finish_async("a", &[ended(&j.id, 1)]).await.unwrap(),
        vec![true]
    );
    let got = store.get_async(&j.id).await.unwrap().unwrap();
    assert_eq!((got.status.as_str(), got.attempts), ("succeeded", 1));
    assert_eq!(
        store.async_backlog().await.unwrap(),
        vec![depth("running", 199)],
        "finished work is not in the backlog"
    );
    assert_eq!(got.result.unwrap().body, "ok");
    assert_eq!(
        store.deliveries_of(&j.id).await.unwrap().len(),
        1,
        "written with it"
    );
    // A restarted "a" takes back what it ran; the attempts stay counted.
    let back = store.requeue_async(Some("a"), 3_000).await.unwrap();
    assert_eq!(back as usize, a.len() - 1);
    let again = store
        .lease_async("a", key, 500, 3_000, 33_000)
        .await
        .unwrap();
    assert_eq!(again.len(), a.len() - 1);
    assert!(again.iter().all(|j| j.attempt == 2));
    // Lapsed claims of "b" and "c" are put back by anyone.
    assert_eq!(
        store.requeue_async(None, 40_000).await.unwrap() as usize,
        b.len() + rest.len() + again.len()
    );
    // Dead letters replay with fresh attempts.
    let one = store
        .lease_async("a", key, 1, 40_000, 70_000)
        .await
        .unwrap();
    assert!(
        store
            .finish_async(
                "a",
                &[ended(&one[0].id, one[0].attempt)].map(|mut e| {
                    e.finish = finish("dead");
                    e
                })
            )
            .await
            .unwrap()[0]
    );
    assert_eq!(
        store
            .list_async("default", "f", Some(AsyncStatus::Dead), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let replayed = store
        .replay_dead("default", "f", &[], 50_000)
        .await
        .unwrap();
    assert_eq!(replayed, vec![one[0].id.clone()]);
    let r = store.get_async(&one[0].id).await.unwrap().unwrap();
    assert_eq!((r.status.as_str(), r.attempts, r.replays), ("queued", 0, 1));
    // An idempotency key: the second submission gets the first id; after the window, a new one.
    let (first, dup) = store
        .insert_async_once(&submission("k-1", Some("key")), 10_000)
        .await
        .unwrap();
    assert_eq!((first.as_str(), dup), ("k-1", false));
    let (second, dup) = store
        .insert_async_once(&submission("k-2", Some("key")), 10_000)
        .await
        .unwrap();
    assert_eq!((second.as_str(), dup), ("k-1", true));
    let mut later = submission("k-3", Some("key"));
    later.created_at = 20_000;
    assert_eq!(
        store.insert_async_once(&later, 10_000).await.unwrap(),
        ("k-3".into(), false)
    );
    // Cancelling: a queued one; a running one, whose outcome can then not be recorded; a dead
    // one keeps its last error after its own. What has ended stays as it is.
    use petrel_store::Cancel;
    let was = |c: Cancel| match c {
        Cancel::Cancelled { was, now } => (was, now.status, now.error.unwrap_or_default()),
        other => panic!("not cancelled: {other:?}"),
    };
    assert_eq!(
        was(store.cancel_async("k-3", 60_000).await.unwrap()),
        (
            AsyncStatus::Queued,
            AsyncStatus::Cancelled,
            "cancelled while queued".into()
        )
    );
    let run = store
        .lease_async("a", key, 1, 60_000, 90_000)
        .await
        .unwrap();
    assert_eq!(
        was(store.cancel_async(&run[0].id, 61_000).await.unwrap()).0,
        AsyncStatus::Running
    );
    assert_eq!(
        store
            .finish_async("a", &[ended(&run[0].id, run[0].attempt)])
            .await
            .unwrap(),
        vec![false],
        "a cancelled invocation's outcome is dropped"
    );
    let dead = store
        .lease_async("a", key, 1, 60_000, 90_000)
        .await
        .unwrap();
    let mut e = ended(&dead[0].id, dead[0].attempt);
    e.finish = finish("dead");
    e.finish.error = Some("retries ran out".into());
    assert!(store.finish_async("a", &[e]).await.unwrap()[0]);
    assert_eq!(
        was(store.cancel_async(&dead[0].id, 62_000).await.unwrap()).2,
        "cancelled while dead; before: retries ran out"
    );
    // What "a" held and was cancelled lately: its running attempts among them are to stop.
    let mut held = store.cancelled_claims("a", 61_000).await.unwrap();
    held.sort();
    let mut expected = vec![run[0].id.clone(), dead[0].id.clone()];
    expected.sort();
    assert_eq!(held, expected);
    assert!(store
        .cancelled_claims("a", 62_001)
        .await
        .unwrap()
        .is_empty());
    assert!(store.cancelled_claims("b", 0).await.unwrap().is_empty());
    assert!(matches!(
        store.cancel_async(&dead[0].id, 63_000).await.unwrap(),
        Cancel::Ended(a) if a.status == AsyncStatus::Cancelled
    ));
    assert!(matches!(
        store.cancel_async(&j.id, 63_000).await.unwrap(),
        Cancel::Ended(a) if a.status == AsyncStatus::Succeeded
    ));
    assert!(matches!(
        store.cancel_async("nope", 63_000).await.unwrap(),
        Cancel::NotFound
    ));
    // Cancelled work is kept for the retention of finished work, then dropped.
    assert!(store.get_async("k-3").await.unwrap().is_some());
    store.trim_async(70_000, 5_000, 1_000_000).await.unwrap();
    assert!(store.get_async("k-3").await.unwrap().is_none());
}

async fn idle_histograms_are_saved_and_replaced(store: Store) {
    assert!(store.load_idle_histograms().await.unwrap().is_empty());
    let rows = vec![
        (
            "default".to_owned(),
            "a".to_owned(),
            r#"{"v":1}"#.to_owned(),
        ),
        ("dev".to_owned(), "a".to_owned(), r#"{"v":2}"#.to_owned()),
    ];
    store.save_idle_histograms(&rows).await.unwrap();
    // Saving again replaces a function's row rather than adding one.
    store
        .save_idle_histograms(&[("default".into(), "a".into(), r#"{"v":3}"#.into())])
        .await
        .unwrap();
    let mut got = store.load_idle_histograms().await.unwrap();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("default".into(), "a".into(), r#"{"v":3}"#.into()),
            ("dev".into(), "a".into(), r#"{"v":2}"#.into()),
        ]
    );
}

async fn versions_are_numbered_and_immutable(store: Store) {
    let s1 = spec("hello", "python3");
    let (v, created) = store
        .create_version("default", &s1, "aa11", 10)
        .await
        .unwrap();
    assert_eq!((v, created), (1, true));
    let mut s2 = s1.clone();
    s2.memory_mb = 256;
    let (v, created) = store
        .create_version("default", &s2, "bb22", 20)
        .await
        .unwrap();
    assert_eq!((v, created), (2, false));

    let v1 = store
        .get_version("default", "hello", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (v1.digest.as_str(), v1.spec.memory_mb, v1.size_bytes),
        ("aa11", 128, 10)
    );
    let v2 = store
        .get_version("default", "hello", 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v2.digest.as_str(), v2.spec.memory_mb), ("bb22", 256));
    assert_eq!(v2.spec, s2);
    assert!(store
        .get_version("default", "hello", 3)
        .await
        .unwrap()
        .is_none());

    let versions = store.list_versions("default", "hello").await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let f = store
        .get_function("default", "hello")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.latest_version, 2);
    assert!(f.updated_at >= f.created_at);
    // The same name in another namespace is another function.
    let (v, created) = store.create_version("dev", &s1, "aa11", 10).await.unwrap();
    assert_eq!((v, created), (1, true));
}

async fn concurrent_deploys_get_distinct_versions(store: Store) {
    let s = spec("busy", "nodejs");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_version("default", &s, &format!("d{i}"), 1)
                .await
                .unwrap()
                .0
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort();
    assert_eq!(got, (1..=8).collect::<Vec<_>>());
    assert_eq!(
        store.list_versions("default", "busy").await.unwrap().len(),
        8
    );
}

async fn list_get_and_delete(store: Store) {
    store
        .create_version("default", &spec("b-fn", "http"), "d1", 1)
        .await
        .unwrap();
    store
        .create_version("default", &spec("a-fn", "python3"), "d2", 1)
        .await
        .unwrap();
    store
        .create_version("prod", &spec("c-fn", "nodejs"), "d3", 1)
        .await
        .unwrap();
    let all = store.list_functions(None).await.unwrap();
    let names: Vec<_> = all
        .iter()
        .map(|f| format!("{}/{}:{}", f.namespace, f.name, f.runtime))
        .collect();
    assert_eq!(
        names,
        vec![
            "default/a-fn:python3",
            "default/b-fn:http",
            "prod/c-fn:nodejs"
        ]
    );
    assert_eq!(store.list_functions(Some("prod")).await.unwrap().len(), 1);
    assert_eq!(store.latest_versions().await.unwrap().len(), 3);

    store
        .append_logs(&[log_line("a-fn", 1, None, "bye")])
        .await
        .unwrap();
    assert!(store.delete_function("default", "a-fn").await.unwrap());
    assert!(!store.delete_function("default", "a-fn").await.unwrap());
    assert!(store
        .get_function("default", "a-fn")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .list_versions("default", "a-fn")
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_logs("default", "a-fn", 0, 0, None, 100, false)
        .await
        .unwrap()
        .is_empty());
    // A function deployed again after deletion starts over at version 1.
    let (v, created) = store
        .create_version("default", &spec("a-fn", "python3"), "d9", 1)
        .await
        .unwrap();
    assert_eq!((v, created), (1, true));
    assert_eq!(store.referenced_digests().await.unwrap().len(), 3);
}

fn log_line(function: &str, ts: i64, invocation: Option<&str>, line: &str) -> LogLine {
    LogLine {
        ts,
        namespace: "default".into(),
        function: function.into(),
        version: 1,
        instance: "i-1".into(),
        invocation: invocation.map(Into::into),
        stream: "stdout".into(),
        line: line.into(),
    }
}

async fn logs_are_read_filtered_and_trimmed(store: Store) {
    let now = petrel_store::now_ms();
    let lines: Vec<_> = (0..10)
        .map(|i| {
            log_line(
                "logger",
                now + i,
                Some(if i % 2 == 0 { "even" } else { "odd" }),
                &format!("line {i}"),
            )
        })
        .collect();
    store.append_logs(&lines).await.unwrap();
    store
        .append_logs(&[log_line("other", now, None, "elsewhere")])
        .await
        .unwrap();

    let all = store
        .read_logs("default", "logger", 0, 0, None, 100, false)
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all[0].1.line, "line 0");
    // Cursor: only what came after.
    let after = store
        .read_logs("default", "logger", all[6].0, 0, None, 100, false)
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|l| l.1.line.as_str()).collect::<Vec<_>>(),
        vec!["line 7", "line 8", "line 9"]
    );
    // By invocation.
    let odd = store
        .read_logs("default", "logger", 0, 0, Some("odd"), 100, false)
        .await
        .unwrap();
    assert_eq!(odd.len(), 5);
    assert!(odd.iter().all(|l| l.1.invocation.as_deref() == Some("odd")));
    // Since a time.
    let recent = store
        .read_logs("default", "logger", 0, now + 8, None, 100, false)
        .await
        .unwrap();
    assert_eq!(recent.len(), 2);
    // Tail: the newest lines, oldest first.
    let tail = store
        .read_logs("default", "logger", 0, 0, None, 3, true)
        .await
        .unwrap();
    assert_eq!(
        tail.iter().map(|l| l.1.line.as_str()).collect::<Vec<_>>(),
        vec!["line 7", "line 8", "line 9"]
    );

    // Retention: keep 4 lines per function; then drop everything older than an hour.
    let dropped = store.trim_logs(4, 3_600_000).await.unwrap();
    assert_eq!(dropped, 6);
    let kept = store
        .read_logs("default", "logger", 0, 0, None, 100, false)
        .await
        .unwrap();
    assert_eq!(
        kept.iter().map(|l| l.1.line.as_str()).collect::<Vec<_>>(),
        vec!["line 6", "line 7", "line 8", "line 9"]
    );
    assert_eq!(
        store
            .read_logs("default", "other", 0, 0, None, 100, false)
            .await
            .unwrap()
            .len(),
        1
    );
    store
        .append_logs(&[log_line("old", now - 7_200_000, None, "ancient")])
        .await
        .unwrap();
    assert_eq!(store.trim_logs(4, 3_600_000).await.unwrap(), 1);
}

fn record(
    id: &str,
    function: &str,
    started_at: i64,
    billed_ms: u64,
    memory_mb: u32,
    outcome: &str,
) -> petrel_core::api::InvocationRecord {
    petrel_core::api::InvocationRecord {
        id: id.into(),
        namespace: "default".into(),
        function: function.into(),
        version: 1,
        trigger: Trigger::Invoke.into(),
        started_at,
        duration_ms: billed_ms,
        billed_ms,
        memory_mb,
        cold_start: id == "a",
        outcome: outcome.parse().unwrap(),
        error: (outcome != "success").then(|| "boom".into()),
        instance: Some("i-1".into()),
    }
}

async fn invocations_are_recorded_and_metered(store: Store) {
    let now = petrel_store::now_ms();
    let records = vec![
        record("a", "billed", now - 3000, 100, 128, "success"),
        record("b", "billed", now - 2000, 250, 128, "function_error"),
        record("c", "billed", now - 1000, 1, 1024, "success"),
        record("d", "other", now - 500, 40, 256, "timeout"),
    ];
    store.append_invocations(&records).await.unwrap();
    // Writing a record twice (a retried batch) keeps one.
    store.append_invocations(&records[..1]).await.unwrap();

    let list = store
        .list_invocations("default", "billed", None, 0, 100)
        .await
        .unwrap();
    assert_eq!(
        list.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["c", "b", "a"]
    );
    assert_eq!(list[2], records[0]);
    let failed = store
        .list_invocations("default", "billed", Some("function_error"), 0, 100)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        store
            .list_invocations("default", "billed", None, now - 1500, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.get_invocation("d").await.unwrap().unwrap().outcome,
        InvocationOutcome::Timeout
    );
    assert!(store.get_invocation("zzz").await.unwrap().is_none());

    let usage = store.usage(None, now - 10_000, now + 1).await.unwrap();
    assert_eq!(usage.len(), 2);
    let billed = &usage[0];
    assert_eq!(
        (
            billed.function.as_str(),
            billed.invocations,
            billed.errors,
            billed.billed_ms
        ),
        ("billed", 3, 1, 351)
    );
    // 128 MB x 100 ms + 128 MB x 250 ms + 1024 MB x 1 ms, in GB-seconds.
    let expected = (128.0 * 100.0 + 128.0 * 250.0 + 1024.0 * 1.0) / 1024.0 / 1000.0;
    assert!(
        (billed.gb_seconds - expected).abs() < 1e-12,
        "{} != {expected}",
        billed.gb_seconds
    );
    assert_eq!(
        store
            .usage(None, now - 1500, now + 1)
            .await
            .unwrap()
            .iter()
            .map(|u| u.invocations)
            .sum::<u64>(),
        2
    );

    // Deleting a function deletes its records.
    store
        .create_version("default", &spec("other", "python3"), "d", 1)
        .await
        .unwrap();
    assert!(store.delete_function("default", "other").await.unwrap());
    assert!(store.get_invocation("d").await.unwrap().is_none());
    // Retention drops what is older than the bound (here: only "a", 3 s old).
    assert_eq!(store.trim_invocations(2500).await.unwrap(), 1);
    assert!(store.get_invocation("a").await.unwrap().is_none());
    assert!(store.get_invocation("b").await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode_and_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    assert_eq!(
        store.sqlite_journal_mode().await.unwrap().as_deref(),
        Some("wal")
    );
    store
        .create_version("default", &spec("kept", "python3"), "d", 1)
        .await
        .unwrap();
    store.close().await;
    let again = sqlite_store(&dir).await;
    assert_eq!(
        again
            .get_function("default", "kept")
            .await
            .unwrap()
            .unwrap()
            .latest_version,
        1
    );
}

#[tokio::test]
async fn postgres_migrations_are_idempotent_across_reopen() {
    let db = PgDb::new().await;
    db.store
        .create_version("default", &spec("kept", "python3"), "d", 1)
        .await
        .unwrap();
    let (base, _) = db.admin_url.rsplit_once('/').unwrap();
    let again = Store::open(&format!("{base}/{}", db.name)).await.unwrap();
    assert_eq!(
        again
            .get_function("default", "kept")
            .await
            .unwrap()
            .unwrap()
            .latest_version,
        1
    );
    again.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn unsupported_store_url_is_refused() {
    let e = Store::open("mysql://x").await.unwrap_err().to_string();
    assert!(e.contains("sqlite://") && e.contains("postgres://"), "{e}");
}

pub fn zip_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut buf);
        for (name, data, mode) in files {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }
    buf.into_inner()
}

pub fn artifact_store(dir: &tempfile::TempDir) -> ArtifactStore {
    ArtifactStore::new(
        dir.path(),
        PackageLimits {
            max_files: 50,
            max_unpacked_bytes: 1024 * 1024,
        },
    )
    .unwrap()
}
