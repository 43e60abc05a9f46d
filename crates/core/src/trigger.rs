//! Event triggers as the manifest declares them (`[[trigger]]` tables) and their validated form,
//! [`TriggerSpec`], stored with the version like the rest of its configuration.
//!
//! One table vocabulary serves every kind; a key that belongs to another kind is refused by
//! name, as an unknown key is, so a typo never silently falls back to a default.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A `[[trigger]]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerManifest {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub enabled: Option<bool>,
    pub target: Option<String>,
    pub on_failure: Option<String>,
    // kafka
    pub brokers: Option<Vec<String>>,
    pub topic: Option<String>,
    // redis, amqp, mqtt, postgres, mysql
    pub url: Option<String>,
    // amqp
    pub queue: Option<String>,
    // postgres
    pub publication: Option<String>,
    pub slot: Option<String>,
    // postgres and mysql
    pub tables: Option<Vec<String>>,
    // mysql
    pub server_id: Option<u32>,
    // s3
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub events: Option<Vec<String>>,
    pub mode: Option<String>,
    pub poll_interval: Option<String>,
    // nats
    pub servers: Option<Vec<String>>,
    pub stream: Option<String>,
    pub subject: Option<String>,
    // kafka and nats
    pub group: Option<String>,
    pub starting_position: Option<String>,
    pub batch_size: Option<u32>,
    pub batch_window: Option<String>,
    pub max_retries: Option<i32>,
    pub max_record_age: Option<String>,
    pub bisect_on_error: Option<bool>,
    pub report_batch_item_failures: Option<bool>,
    pub parallelization: Option<u32>,
    // cron
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub payload: Option<String>,
}

/// The kinds of trigger Petrel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    Kafka,
    Nats,
    Redis,
    Amqp,
    Mqtt,
    Postgres,
    Mysql,
    S3,
    Cron,
}

impl TriggerKind {
    pub const ALL: &'static [TriggerKind] = &[
        TriggerKind::Kafka,
        TriggerKind::Nats,
        TriggerKind::Redis,
        TriggerKind::Amqp,
        TriggerKind::Mqtt,
        TriggerKind::Postgres,
        TriggerKind::Mysql,
        TriggerKind::S3,
        TriggerKind::Cron,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Kafka => "kafka",
            TriggerKind::Nats => "nats",
            TriggerKind::Redis => "redis",
            TriggerKind::Amqp => "amqp",
            TriggerKind::Mqtt => "mqtt",
            TriggerKind::Postgres => "postgres",
            TriggerKind::Mysql => "mysql",
            TriggerKind::S3 => "s3",
            TriggerKind::Cron => "cron",
        }
    }
}

impl fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerSpec {
    pub name: String,
    pub enabled: bool,
    /// The version (`"3"`) or alias (`"live"`) invoked; `None`: the latest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[schema(value_type = Object)]
    pub source: TriggerSource,
}

/// Where a trigger's events come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TriggerSource {
    Kafka(KafkaSource),
    Nats(NatsSource),
    Redis(RedisSource),
    Amqp(AmqpSource),
    Mqtt(MqttSource),
    Postgres(PostgresSource),
    Mysql(MysqlSource),
    S3(S3Source),
    Cron(CronSource),
}

impl TriggerSource {
    pub fn kind(&self) -> TriggerKind {
        match self {
            TriggerSource::Kafka(_) => TriggerKind::Kafka,
            TriggerSource::Nats(_) => TriggerKind::Nats,
            TriggerSource::Redis(_) => TriggerKind::Redis,
            TriggerSource::Amqp(_) => TriggerKind::Amqp,
            TriggerSource::Mqtt(_) => TriggerKind::Mqtt,
            TriggerSource::Postgres(_) => TriggerKind::Postgres,
            TriggerSource::Mysql(_) => TriggerKind::Mysql,
            TriggerSource::S3(_) => TriggerKind::S3,
            TriggerSource::Cron(_) => TriggerKind::Cron,
        }
    }

    /// The batching and failure settings of a stream source; `None` for cron.
    pub fn stream(&self) -> Option<&StreamSettings> {
        match self {
            TriggerSource::Kafka(k) => Some(&k.settings),
            TriggerSource::Nats(n) => Some(&n.settings),
            TriggerSource::Redis(r) => Some(&r.settings),
            TriggerSource::Amqp(a) => Some(&a.settings),
            TriggerSource::Mqtt(m) => Some(&m.settings),
            TriggerSource::Postgres(p) => Some(&p.settings),
            TriggerSource::Mysql(m) => Some(&m.settings),
            TriggerSource::S3(b) => Some(&b.settings),
            TriggerSource::Cron(_) => None,
        }
    }
}

/// A Kafka topic, read by a consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaSource {
    pub brokers: Vec<String>,
    pub topic: String,
    /// `None`: derived from the namespace, function and trigger (see [`default_group`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub settings: StreamSettings,
}

/// A JetStream stream, read by a durable pull consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsSource {
    pub servers: Vec<String>,
    pub stream: String,
    /// The subjects of the stream the consumer takes (`None`: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The durable consumer's name; `None`: derived (see [`default_group`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub settings: StreamSettings,
}

/// A Redis stream, read by a consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisSource {
    /// `redis://host:6379/0` (or `rediss://` with TLS).
    pub url: String,
    pub stream: String,
    /// The consumer group; `None`: derived (see [`default_group`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub settings: StreamSettings,
}

/// A RabbitMQ (AMQP 0-9-1) queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmqpSource {
    /// `amqp://user:password@host:5672/vhost` (TLS, `amqps://`, is not supported yet).
    pub url: String,
    pub queue: String,
    pub settings: StreamSettings,
}

/// An MQTT topic filter, read at QoS 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttSource {
    /// `mqtt://user:password@host:1883`.
    pub url: String,
    /// A topic filter (`+` and `#` wildcards).
    pub topic: String,
    /// The shared subscription's name; `None`: derived (see [`default_group`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub settings: StreamSettings,
}

/// A PostgreSQL publication, read by logical replication (`pgoutput`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresSource {
    /// `postgres://user:password@host:5432/db`.
    pub url: String,
    pub publication: String,
    /// The replication slot; `None`: derived (see [`default_slot`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Only these tables' changes (`schema.table` or `table`); `None`: the publication's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<String>>,
    pub settings: StreamSettings,
}

/// A MySQL or MariaDB row-based binlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlSource {
    /// `mysql://user:password@host:3306`.
    pub url: String,
    /// Only these tables' changes (`db.table`); `None`: every table's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<String>>,
    /// The replica id Petrel reads the binlog as; `None`: derived from the trigger's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<u32>,
    pub settings: StreamSettings,
}

/// Object-created and object-removed events of a bucket on an S3-compatible store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Source {
    /// `http(s)://ACCESS_KEY:SECRET_KEY@host:port` (path-style requests).
    pub endpoint: String,
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    pub created: bool,
    pub removed: bool,
    pub mode: S3Mode,
    pub poll_interval_ms: u64,
    pub settings: StreamSettings,
}

/// How an s3 trigger learns of changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum S3Mode {
    /// The store POSTs its event notifications (S3's format) to Petrel's webhook route.
    Notify,
    /// Petrel lists the bucket every `poll_interval` (`ListObjectsV2`) against a watermark.
    Poll,
}

pub const DEFAULT_S3_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// A schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronSource {
    /// As written: 5 fields, 6 with seconds, or `rate(N unit)`.
    pub schedule: String,
    /// An IANA time zone name.
    pub timezone: String,
    /// The JSON document each fire passes as `detail`; `None`: `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// Where a stream trigger starts the first time it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartingPosition {
    Latest,
    Earliest,
}

/// Where records go that a stream trigger gives up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureDestination {
    /// Petrel's dead-letter list of the trigger (`petrel trigger dlq`).
    Dlq,
    Function(String),
    Url(String),
    Kafka(String),
    Nats(String),
    /// An AMQP exchange, published to with the record's routing key (a dead-letter exchange).
    Amqp(String),
}

impl fmt::Display for FailureDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureDestination::Dlq => f.write_str("dlq"),
            FailureDestination::Function(n) => write!(f, "function:{n}"),
            FailureDestination::Url(u) => f.write_str(u),
            FailureDestination::Kafka(t) => write!(f, "kafka:{t}"),
            FailureDestination::Nats(s) => write!(f, "nats:{s}"),
            FailureDestination::Amqp(x) => write!(f, "amqp:{x}"),
        }
    }
}

/// How a stream trigger batches its records and what it does when a batch fails, as Lambda's
/// event source mappings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSettings {
    pub starting_position: StartingPosition,
    pub batch_size: u32,
    pub batch_window_ms: u64,
    /// Retries of a failing batch; `-1`: until its records are older than `max_record_age`.
    pub max_retries: i32,
    /// Records older than this are not retried; `0`: no limit.
    pub max_record_age_ms: u64,
    pub bisect_on_error: bool,
    pub report_batch_item_failures: bool,
    pub parallelization: u32,
    pub on_failure: FailureDestination,
}

pub const MAX_BATCH_SIZE: u32 = 10_000;
pub const DEFAULT_BATCH_SIZE: u32 = 100;
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(500);
pub const MAX_BATCH_WINDOW: Duration = Duration::from_secs(300);
pub const DEFAULT_TRIGGER_MAX_RETRIES: i32 = 3;
pub const MAX_TRIGGER_MAX_RETRIES: i32 = 10_000;
pub const DEFAULT_MAX_RECORD_AGE: Duration = Duration::from_secs(3600);
pub const MAX_MAX_RECORD_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_PARALLELIZATION: u32 = 10;

/// The consumer group (Kafka) or durable consumer (JetStream) name a trigger uses when its
/// manifest names none: `petrel-{namespace}-{function}-{trigger}`.
pub fn default_group(namespace: &str, function: &str, trigger: &str) -> String {
    format!("petrel-{namespace}-{function}-{trigger}")
}

/// The replication slot a postgres trigger creates when its manifest names none: PostgreSQL's
/// slot names are lower-case letters, digits and `_`, at most 63 bytes, so the namespace,
/// function and trigger are folded into that with a hash of the three to keep them apart.
pub fn default_slot(namespace: &str, function: &str, trigger: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{namespace}\0{function}\0{trigger}").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let fold = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!(
        "petrel_{}_{}_{}",
        fold(namespace),
        fold(function),
        fold(trigger)
    );
    name.truncate(46);
    format!("{name}_{h:016x}")
}

/// The replica id a mysql trigger reads the binlog as when its manifest names none: stable
/// for the trigger, and clear of the small ids people give their real replicas.
pub fn default_server_id(namespace: &str, function: &str, trigger: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("{namespace}\0{function}\0{trigger}").bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    1_000_000 + h % 1_000_000_000
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<croner::Cron>),
    /// `rate(N unit)`: every `N` units, counted from the Unix epoch (so every server agrees
    /// on the due times).
    Rate(Duration),
}

impl Schedule {
    /// Parses a 5-field or 6-field (with seconds) cron expression, or `rate(5 minutes)`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(inner) = s.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
            let mut parts = inner.split_whitespace();
            let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!(
                    "{s:?} is not a rate: write it like \"rate(5 minutes)\""
                ));
            };
            let n: u64 = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{n:?} in {s:?} is not a positive whole number"))?;
            let unit = match unit {
                "second" | "seconds" => 1,
                "minute" | "minutes" => 60,
                "hour" | "hours" => 3600,
                "day" | "days" => 86_400,
                other => {
                    return Err(format!(
                        "{other:?} in {s:?} is not a unit: use seconds, minutes, hours or days"
                    ))
                }
            };
            return Ok(Schedule::Rate(Duration::from_secs(n * unit)));
        }
        let fields = s.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "{s:?} has {fields} fields: write 5 (minute hour day month weekday), 6 with seconds first, or rate(N unit)"
            ));
        }
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(s)
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| format!("{s:?} is not a cron expression: {e}"))
    }

    /// The first due time strictly after `after`, in `tz`.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
        tz: chrono_tz::Tz,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Schedule::Rate(every) => {
                let every = every.as_millis() as i64;
                let t = after.timestamp_millis();
                let next = (t.div_euclid(every) + 1) * every;
                chrono::DateTime::from_timestamp_millis(next)
            }
            Schedule::Cron(c) => c
                .find_next_occurrence(&after.with_timezone(&tz), false)
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc)),
        }
    }
}

/// Parses an IANA time zone name.
pub fn parse_timezone(s: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(s).map_err(|_| {
        format!("{s:?} is not an IANA time zone name: write it like \"Europe/Paris\" or \"UTC\"")
    })
}

/// What is wrong with one trigger, naming it and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `trigger.{trigger}.{field}`: {message}")]
pub struct TriggerError {
    pub trigger: String,
    pub field: &'static str,
    pub message: String,
}

fn invalid(trigger: &str, field: &'static str, message: impl Into<String>) -> TriggerError {
    TriggerError {
        trigger: trigger.to_owned(),
        field,
        message: message.into(),
    }
}

fn duration(
    trigger: &str,
    field: &'static str,
    value: Option<&str>,
    default: Duration,
    max: Duration,
) -> Result<Duration, TriggerError> {
    let d = match value {
        None => default,
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            invalid(
                trigger,
                field,
                format!("{s:?} is not a duration ({e}); write it like \"500ms\" or \"1h\""),
            )
        })?,
    };
    if d > max {
        return Err(invalid(
            trigger,
            field,
            format!(
                "{} is more than the limit of {}",
                humantime::format_duration(d),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

impl TriggerManifest {
    /// The keys set in this table, by name.
    fn set_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        macro_rules! check {
            ($($f:ident),*) => { $( if self.$f.is_some() { keys.push(stringify!($f)); } )* };
        }
        check!(
            url,
            queue,
            publication,
            slot,
            tables,
            server_id,
            endpoint,
            bucket,
            prefix,
            suffix,
            events,
            mode,
            poll_interval,
            brokers,
            topic,
            servers,
            stream,
            subject,
            group,
            starting_position,
            batch_size,
            batch_window,
            max_retries,
            max_record_age,
            bisect_on_error,
            report_batch_item_failures,
            parallelization,
            on_failure,
            schedule,
            timezone,
            payload
        );
        keys
    }

    /// Validates the table and fills defaults.
    pub fn validate(&self, index: usize) -> Result<TriggerSpec, TriggerError> {
        let label = self
            .name
            .clone()
            .unwrap_or_else(|| format!("#{}", index + 1));
        let name = self.name.clone().ok_or_else(|| {
            invalid(
                &label,
                "name",
                "missing: add name = \"orders\" (unique within the function)",
            )
        })?;
        crate::name::validate_name("trigger name", &name)
            .map_err(|e| invalid(&label, "name", e.to_string()))?;
        let kind = match self.kind.as_deref() {
            None => {
                return Err(invalid(
                    &name,
                    "kind",
                    "missing: add kind = \"kafka\" (or nats, redis, amqp, mqtt, postgres, mysql, s3, cron)",
                ))
            }
            Some(k) => TriggerKind::ALL
                .iter()
                .copied()
                .find(|v| v.as_str() == k)
                .ok_or_else(|| {
                    invalid(
                        &name,
                        "kind",
                        format!("{k:?} is not a trigger kind: use kafka, nats, redis, amqp, mqtt, postgres, mysql, s3 or cron"),
                    )
                })?,
        };
        let allowed: &[&str] = match kind {
            TriggerKind::Kafka => &["brokers", "topic", "group"],
            TriggerKind::Nats => &["servers", "stream", "subject", "group"],
            TriggerKind::Redis => &["url", "stream", "group"],
            TriggerKind::Amqp => &["url", "queue"],
            TriggerKind::Mqtt => &["url", "topic", "group"],
            TriggerKind::Postgres => &["url", "publication", "slot", "tables"],
            TriggerKind::Mysql => &["url", "tables", "server_id"],
            TriggerKind::S3 => &[
                "endpoint",
                "bucket",
                "prefix",
                "suffix",
                "events",
                "mode",
                "poll_interval",
            ],
            TriggerKind::Cron => &["schedule", "timezone", "payload"],
        };
        const STREAM_KEYS: &[&str] = &[
            "starting_position",
            "batch_size",
            "batch_window",
            "max_retries",
            "max_record_age",
            "bisect_on_error",
            "report_batch_item_failures",
            "parallelization",
            "on_failure",
        ];
        for key in self.set_keys() {
            let ok =
                allowed.contains(&key) || (kind != TriggerKind::Cron && STREAM_KEYS.contains(&key));
            if !ok {
                return Err(invalid(
                    &name,
                    field_name(key),
                    format!("`{key}` is not a key of a {kind} trigger"),
                ));
            }
        }
        let target = match self.target.as_deref().map(str::trim) {
            None | Some("") | Some("latest") => None,
            Some(t) if t.bytes().all(|b| b.is_ascii_digit()) => {
                if t.parse::<u32>().ok().filter(|n| *n > 0).is_none() {
                    return Err(invalid(
                        &name,
                        "target",
                        format!("{t:?} is not a version: versions start at 1"),
                    ));
                }
                Some(t.to_owned())
            }
            Some(t) => {
                crate::name::validate_name("alias", t)
                    .map_err(|e| invalid(&name, "target", e.to_string()))?;
                Some(t.to_owned())
            }
        };
        let source = match kind {
            TriggerKind::Kafka => TriggerSource::Kafka(KafkaSource {
                brokers: addresses(&name, "brokers", self.brokers.as_ref(), "brokers = [\"127.0.0.1:9092\"]", |b| {
                    !b.contains("://") && b.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                }, "host:port")?,
                topic: required_name(&name, "topic", self.topic.as_deref(), kafka_topic_ok, "topic = \"orders\"")?,
                group: self.group_name(&name)?,
                settings: self.stream_settings(&name)?,
            }),
            TriggerKind::Nats => TriggerSource::Nats(NatsSource {
                servers: addresses(&name, "servers", self.servers.as_ref(), "servers = [\"nats://127.0.0.1:4222\"]", |s| {
                    s.starts_with("nats://") || s.starts_with("tls://") || !s.contains("://")
                }, "nats://host:port")?,
                stream: required_name(&name, "stream", self.stream.as_deref(), |s| {
                    !s.is_empty() && s.len() <= 255 && !s.contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c))
                }, "stream = \"ORDERS\"")?,
                subject: match self.subject.as_deref() {
                    None => None,
                    Some(s) if nats_subject_ok(s) => Some(s.to_owned()),
                    Some(s) => {
                        return Err(invalid(&name, "subject", format!("{s:?} is not a subject: write tokens separated by dots, with * or a final > as wildcards (\"orders.>\")")))
                    }
                },
                group: self.group_name(&name)?,
                settings: self.stream_settings(&name)?,
            }),
            TriggerKind::Redis => TriggerSource::Redis(RedisSource {
                url: match self.url.as_deref() {
                    None => return Err(invalid(&name, "url", "missing: add url = \"redis://127.0.0.1:6379/0\"")),
                    Some(u) if (u.starts_with("redis://") || u.starts_with("rediss://")) && u.len() > "redis://".len() => u.to_owned(),
                    Some(u) => return Err(invalid(&name, "url", format!("{u:?} is not a Redis URL: write redis://host:port/db"))),
                },
                stream: required_name(&name, "stream", self.stream.as_deref(), |s| !s.is_empty() && s.len() <= 512 && !s.contains(char::is_whitespace), "stream = \"orders\"")?,
                group: self.group_name(&name)?,
                settings: self.stream_settings(&name)?,
            }),
            TriggerKind::Amqp => TriggerSource::Amqp(AmqpSource {
                url: url_of(&name, self.url.as_deref(), &["amqp"], "amqp://guest:guest@127.0.0.1:5672/%2f")?,
                queue: required_name(&name, "queue", self.queue.as_deref(), |q| !q.is_empty() && q.len() <= 255 && !q.starts_with("amq."), "queue = \"orders\"")?,
                settings: self.stream_settings(&name)?,
            }),
            TriggerKind::Mqtt => TriggerSource::Mqtt(MqttSource {
                url: url_of(&name, self.url.as_deref(), &["mqtt"], "mqtt://127.0.0.1:1883")?,
                topic: match self.topic.as_deref() {
                    None => return Err(invalid(&name, "topic", "missing: add topic = \"sensors/+/temperature\"")),
                    Some(t) if mqtt_filter_ok(t) => t.to_owned(),
                    Some(t) => return Err(invalid(&name, "topic", format!("{t:?} is not a topic filter: levels separated by '/', '+' for one whole level, '#' only as the last one (and no leading $share/: name the group in `group`)"))),
                },
                group: self.group_name(&name)?,
                settings: self.stream_settings(&name)?,
            }),
            TriggerKind::Postgres => {
                let settings = self.change_stream_settings(&name)?;
                TriggerSource::Postgres(PostgresSource {
                    url: url_of(&name, self.url.as_deref(), &["postgres", "postgresql"], "postgres://user:password@127.0.0.1:5432/db")?,
                    publication: required_name(&name, "publication", self.publication.as_deref(), pg_identifier_ok, "publication = \"orders_changes\"")?,
                    slot: match self.slot.as_deref() {
                        None => None,
                        Some(s) if !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') => Some(s.to_owned()),
                        Some(s) => return Err(invalid(&name, "slot", format!("{s:?} is not a slot name: use lower-case letters, digits and '_' (at most 63)"))),
                    },
                    tables: self.table_list(&name, 2)?,
                    settings,
                })
            }
            TriggerKind::Mysql => {
                let settings = self.change_stream_settings(&name)?;
                TriggerSource::Mysql(MysqlSource {
                    url: url_of(&name, self.url.as_deref(), &["mysql", "mariadb"], "mysql://user:password@127.0.0.1:3306")?,
                    tables: self.table_list(&name, 2)?,
                    server_id: match self.server_id {
                        Some(0) => return Err(invalid(&name, "server_id", "0 is not a replica id: use 1 to 4294967295, apart from every other server's")),
                        id => id,
                    },
                    settings,
                })
            }
            TriggerKind::S3 => {
                let endpoint = match self.endpoint.as_deref() {
                    None => return Err(invalid(&name, "endpoint", "missing: add endpoint = \"http://ACCESS_KEY:SECRET_KEY@127.0.0.1:9000\"")),
                    Some(e) if crate::outbound::is_http_url(e) => e.trim_end_matches('/').to_owned(),
                    Some(e) => return Err(invalid(&name, "endpoint", format!("{e:?} is not an http(s):// URL"))),
                };
                let bucket = required_name(&name, "bucket", self.bucket.as_deref(), |b| {
                    (3..=63).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
                }, "bucket = \"uploads\"")?;
                let (mut created, mut removed) = (false, false);
                match &self.events {
                    None => created = true,
                    Some(list) if list.is_empty() => return Err(invalid(&name, "events", "empty: name created, removed or both")),
                    Some(list) => {
                        for e in list {
                            match e.as_str() {
                                "created" => created = true,
                                "removed" => removed = true,
                                other => return Err(invalid(&name, "events", format!("{other:?} is not an event: use created or removed"))),
                            }
                        }
                    }
                }
                let mode = match self.mode.as_deref() {
                    None | Some("poll") => S3Mode::Poll,
                    Some("notify") => S3Mode::Notify,
                    Some(m) => return Err(invalid(&name, "mode", format!("{m:?}: use notify or poll"))),
                };
                if mode == S3Mode::Notify && self.poll_interval.is_some() {
                    return Err(invalid(&name, "poll_interval", "a notify trigger does not poll: leave poll_interval out or use mode = \"poll\""));
                }
                let poll = duration(&name, "poll_interval", self.poll_interval.as_deref(), DEFAULT_S3_POLL_INTERVAL, Duration::from_secs(86_400))?;
                if poll < Duration::from_millis(100) {
                    return Err(invalid(&name, "poll_interval", "less than 100ms: a listing costs a request per 1000 objects"));
                }
                let mut settings = self.stream_settings(&name)?;
                if self.batch_window.is_none() {
                    settings.batch_window_ms = 0;
                }
                TriggerSource::S3(S3Source {
                    endpoint,
                    bucket,
                    prefix: self.prefix.clone().filter(|p| !p.is_empty()),
                    suffix: self.suffix.clone().filter(|p| !p.is_empty()),
                    created,
                    removed,
                    mode,
                    poll_interval_ms: poll.as_millis() as u64,
                    settings,
                })
            }
            TriggerKind::Cron => {
                let schedule = self.schedule.as_deref().ok_or_else(|| {
                    invalid(&name, "schedule", "missing: add schedule = \"0 3 * * *\" (or rate(5 minutes))")
                })?;
                Schedule::parse(schedule).map_err(|e| invalid(&name, "schedule", e))?;
                let timezone = self.timezone.clone().unwrap_or_else(|| "UTC".to_owned());
                parse_timezone(&timezone).map_err(|e| invalid(&name, "timezone", e))?;
                if let Some(p) = &self.payload {
                    serde_json::from_str::<serde::de::IgnoredAny>(p).map_err(|e| {
                        invalid(&name, "payload", format!("must be a JSON document ({e})"))
                    })?;
                }
                TriggerSource::Cron(CronSource {
                    schedule: schedule.trim().to_owned(),
                    timezone,
                    payload: self.payload.clone(),
                })
            }
        };
        // A topic or subject destination is published to with the trigger's own connection.
        match (&source, source.stream().map(|s| &s.on_failure)) {
            (TriggerSource::Nats(_), Some(FailureDestination::Kafka(_))) => {
                return Err(invalid(&name, "on_failure", "kafka:TOPIC is for kafka triggers (their brokers take it); use nats:SUBJECT, dlq, function:NAME or a URL"))
            }
            (TriggerSource::Kafka(_), Some(FailureDestination::Nats(_))) => {
                return Err(invalid(&name, "on_failure", "nats:SUBJECT is for nats triggers (their servers take it); use kafka:TOPIC, dlq, function:NAME or a URL"))
            }
            (TriggerSource::Amqp(_), Some(FailureDestination::Kafka(_) | FailureDestination::Nats(_))) => {
                return Err(invalid(&name, "on_failure", "an amqp trigger sends what it gives up on to amqp:EXCHANGE, dlq, function:NAME or a URL"))
            }
            (TriggerSource::Amqp(_), _) => {}
            (_, Some(FailureDestination::Amqp(_))) => {
                return Err(invalid(&name, "on_failure", "amqp:EXCHANGE is for amqp triggers (their broker takes it)"))
            }
            (TriggerSource::Redis(_) | TriggerSource::Mqtt(_) | TriggerSource::Postgres(_) | TriggerSource::Mysql(_) | TriggerSource::S3(_), Some(FailureDestination::Kafka(_) | FailureDestination::Nats(_))) => {
                return Err(invalid(&name, "on_failure", format!("a {} trigger sends what it gives up on to dlq, function:NAME or a URL", source.kind())))
            }
            _ => {}
        }
        Ok(TriggerSpec {
            name,
            enabled: self.enabled.unwrap_or(true),
            target,
            source,
        })
    }

    fn group_name(&self, name: &str) -> Result<Option<String>, TriggerError> {
        match self.group.as_deref() {
            None => Ok(None),
            Some(g)
                if !g.is_empty()
                    && g.len() <= 200
                    && g.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) =>
            {
                Ok(Some(g.to_owned()))
            }
            Some(g) => Err(invalid(
                name,
                "group",
                format!(
                    "{g:?} is not a group name: use letters, digits, '-' and '_' (at most 200)"
                ),
            )),
        }
    }

    /// A change stream's settings: its slot or binlog position starts where it is created,
    /// and its changes keep their order (one lane).
    fn change_stream_settings(&self, name: &str) -> Result<StreamSettings, TriggerError> {
        if self.starting_position.as_deref() == Some("earliest") {
            return Err(invalid(name, "starting_position", "a change stream starts where the trigger first runs (its slot or binlog position): only latest"));
        }
        if self.parallelization.is_some_and(|p| p != 1) {
            return Err(invalid(name, "parallelization", "a change stream is delivered in commit order, one batch at a time: leave parallelization at 1"));
        }
        let mut settings = self.stream_settings(name)?;
        // Like Lambda's stream sources: a change goes out at once unless a window is asked for.
        if self.batch_window.is_none() {
            settings.batch_window_ms = 0;
        }
        Ok(settings)
    }

    fn table_list(
        &self,
        name: &str,
        max_parts: usize,
    ) -> Result<Option<Vec<String>>, TriggerError> {
        let Some(tables) = &self.tables else {
            return Ok(None);
        };
        if tables.is_empty() {
            return Err(invalid(
                name,
                "tables",
                "empty: leave `tables` out to take every table",
            ));
        }
        for t in tables {
            let parts: Vec<&str> = t.split('.').collect();
            if parts.len() > max_parts || !parts.iter().all(|p| pg_identifier_ok(p)) {
                return Err(invalid(
                    name,
                    "tables",
                    format!("{t:?} is not a table name: write table or schema.table"),
                ));
            }
        }
        Ok(Some(tables.clone()))
    }

    fn stream_settings(&self, name: &str) -> Result<StreamSettings, TriggerError> {
        let starting_position = match self.starting_position.as_deref() {
            None | Some("latest") => StartingPosition::Latest,
            Some("earliest") => StartingPosition::Earliest,
            Some(s) => {
                return Err(invalid(
                    name,
                    "starting_position",
                    format!("{s:?}: use latest or earliest"),
                ))
            }
        };
        let batch_size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            return Err(invalid(
                name,
                "batch_size",
                format!("{batch_size} is out of range: use 1 to {MAX_BATCH_SIZE}"),
            ));
        }
        let batch_window = duration(
            name,
            "batch_window",
            self.batch_window.as_deref(),
            DEFAULT_BATCH_WINDOW,
            MAX_BATCH_WINDOW,
        )?;
        let max_retries = self.max_retries.unwrap_or(DEFAULT_TRIGGER_MAX_RETRIES);
        if !(-1..=MAX_TRIGGER_MAX_RETRIES).contains(&max_retries) {
            return Err(invalid(name, "max_retries", format!("{max_retries} is out of range: use -1 (until max_record_age) to {MAX_TRIGGER_MAX_RETRIES}")));
        }
        let max_record_age = duration(
            name,
            "max_record_age",
            self.max_record_age.as_deref(),
            DEFAULT_MAX_RECORD_AGE,
            MAX_MAX_RECORD_AGE,
        )?;
        if max_retries == -1 && max_record_age.is_zero() {
            return Err(invalid(name, "max_retries", "-1 retries until max_record_age, which is 0 (no limit): a failing record would block its partition for ever; set one of them"));
        }
        let parallelization = self.parallelization.unwrap_or(1);
        if !(1..=MAX_PARALLELIZATION).contains(&parallelization) {
            return Err(invalid(
                name,
                "parallelization",
                format!("{parallelization} is out of range: use 1 to {MAX_PARALLELIZATION}"),
            ));
        }
        let on_failure = match self.on_failure.as_deref() {
            None | Some("dlq") => FailureDestination::Dlq,
            Some(s) => {
                if let Some(f) = s.strip_prefix("function:") {
                    crate::name::validate_name("function name", f)
                        .map_err(|e| invalid(name, "on_failure", e.to_string()))?;
                    FailureDestination::Function(f.to_owned())
                } else if let Some(t) = s.strip_prefix("kafka:") {
                    if !kafka_topic_ok(t) {
                        return Err(invalid(
                            name,
                            "on_failure",
                            format!("{t:?} is not a Kafka topic"),
                        ));
                    }
                    FailureDestination::Kafka(t.to_owned())
                } else if let Some(subj) = s.strip_prefix("nats:") {
                    if !nats_subject_ok(subj) || subj.contains(['*', '>']) {
                        return Err(invalid(
                            name,
                            "on_failure",
                            format!("{subj:?} is not a subject to publish to"),
                        ));
                    }
                    FailureDestination::Nats(subj.to_owned())
                } else if let Some(x) = s.strip_prefix("amqp:") {
                    if x.is_empty() || x.len() > 255 || x.contains(char::is_whitespace) {
                        return Err(invalid(
                            name,
                            "on_failure",
                            format!("{x:?} is not an exchange name"),
                        ));
                    }
                    FailureDestination::Amqp(x.to_owned())
                } else if crate::outbound::is_http_url(s) {
                    FailureDestination::Url(s.to_owned())
                } else {
                    return Err(invalid(name, "on_failure", format!("{s:?} is not a destination: write dlq, function:NAME, an http(s):// URL, kafka:TOPIC, nats:SUBJECT or amqp:EXCHANGE")));
                }
            }
        };
        Ok(StreamSettings {
            starting_position,
            batch_size,
            batch_window_ms: batch_window.as_millis() as u64,
            max_retries,
            max_record_age_ms: max_record_age.as_millis() as u64,
            bisect_on_error: self.bisect_on_error.unwrap_or(false),
            report_batch_item_failures: self.report_batch_item_failures.unwrap_or(false),
            parallelization,
            on_failure,
        })
    }
}

/// The `&'static` name of a manifest key, for errors.
fn field_name(key: &str) -> &'static str {
    const KEYS: &[&str] = &[
        "url",
        "queue",
        "publication",
        "slot",
        "tables",
        "server_id",
        "endpoint",
        "bucket",
        "prefix",
        "suffix",
        "events",
        "mode",
        "poll_interval",
        "brokers",
        "topic",
        "servers",
        "stream",
        "subject",
        "group",
        "starting_position",
        "batch_size",
        "batch_window",
        "max_retries",
        "max_record_age",
        "bisect_on_error",
        "report_batch_item_failures",
        "parallelization",
        "on_failure",
        "schedule",
        "timezone",
        "payload",
    ];
    KEYS.iter()
        .copied()
        .find(|k| *k == key)
        .unwrap_or("trigger")
}

fn addresses(
    name: &str,
    field: &'static str,
    value: Option<&Vec<String>>,
    example: &str,
    ok: impl Fn(&str) -> bool,
    form: &str,
) -> Result<Vec<String>, TriggerError> {
    let list = value
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid(name, field, format!("missing: add {example}")))?;
    for a in list {
        if !ok(a) {
            return Err(invalid(
                name,
                field,
                format!("{a:?} is not an address: write {form}"),
            ));
        }
    }
    Ok(list.clone())
}

fn required_name(
    name: &str,
    field: &'static str,
    value: Option<&str>,
    ok: impl Fn(&str) -> bool,
    example: &str,
) -> Result<String, TriggerError> {
    let v = value.ok_or_else(|| invalid(name, field, format!("missing: add {example}")))?;
    if !ok(v) {
        return Err(invalid(
            name,
            field,
            format!("{v:?} is not a valid {field} name"),
        ));
    }
    Ok(v.to_owned())
}

/// Kafka's own rule: 1 to 249 of letters, digits, '.', '_' and '-'.
fn kafka_topic_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A URL of one of these schemes with a host.
fn url_of(
    name: &str,
    value: Option<&str>,
    schemes: &[&str],
    example: &str,
) -> Result<String, TriggerError> {
    let u =
        value.ok_or_else(|| invalid(name, "url", format!("missing: add url = \"{example}\"")))?;
    let ok = schemes.iter().any(|s| {
        u.strip_prefix(s)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    });
    if !ok {
        return Err(invalid(
            name,
            "url",
            format!(
                "{u:?} is not a {}:// URL: write it like {example}",
                schemes[0]
            ),
        ));
    }
    Ok(u.to_owned())
}

/// An MQTT topic filter: `+` stands for one whole level, `#` for the rest (last level only).
fn mqtt_filter_ok(t: &str) -> bool {
    let levels: Vec<&str> = t.split('/').collect();
    !t.is_empty()
        && t.len() <= 65_535
        && !t.starts_with("$share/")
        && !t.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (*l == "+" || *l == "#" || !l.contains(['+', '#']))
                && (*l != "#" || i == levels.len() - 1)
        })
}

/// A PostgreSQL identifier as written unquoted (letters, digits, `_`, `$`), at most 63 bytes.
fn pg_identifier_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
}

fn nats_subject_ok(s: &str) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    !s.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.contains(char::is_whitespace)
                && (*t == "*" || *t == ">" || !t.contains(['*', '>']))
                && (*t != ">" || i == tokens.len() - 1)
        })
}

/// Checks a function's triggers together: each valid, names unique.
pub fn validate_all(tables: &[TriggerManifest]) -> Result<Vec<TriggerSpec>, TriggerError> {
    let mut specs: Vec<TriggerSpec> = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let spec = t.validate(i)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(invalid(
                &spec.name,
                "name",
                "two triggers have this name: names are unique within a function",
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

impl From<&TriggerSpec> for TriggerManifest {
    fn from(s: &TriggerSpec) -> Self {
        let mut m = TriggerManifest {
            name: Some(s.name.clone()),
            kind: Some(s.source.kind().as_str().to_owned()),
            enabled: Some(s.enabled),
            target: s.target.clone(),
            ..Default::default()
        };
        if let Some(st) = s.source.stream() {
            m.starting_position = Some(match st.starting_position {
                StartingPosition::Latest => "latest".to_owned(),
                StartingPosition::Earliest => "earliest".to_owned(),
            });
            m.batch_size = Some(st.batch_size);
            m.batch_window = Some(format!("{}ms", st.batch_window_ms));
            m.max_retries = Some(st.max_retries);
            m.max_record_age = Some(format!("{}ms", st.max_record_age_ms));
            m.bisect_on_error = Some(st.bisect_on_error);
            m.report_batch_item_failures = Some(st.report_batch_item_failures);
            m.parallelization = Some(st.parallelization);
            m.on_failure = Some(st.on_failure.to_string());
        }
        match &s.source {
            TriggerSource::Kafka(k) => {
                m.brokers = Some(k.brokers.clone());
                m.topic = Some(k.topic.clone());
                m.group = k.group.clone();
            }
            TriggerSource::Nats(n) => {
                m.servers = Some(n.servers.clone());
                m.stream = Some(n.stream.clone());
                m.subject = n.subject.clone();
                m.group = n.group.clone();
            }
            TriggerSource::Redis(r) => {
                m.url = Some(r.url.clone());
                m.stream = Some(r.stream.clone());
                m.group = r.group.clone();
            }
            TriggerSource::Amqp(a) => {
                m.url = Some(a.url.clone());
                m.queue = Some(a.queue.clone());
            }
            TriggerSource::Mqtt(q) => {
                m.url = Some(q.url.clone());
                m.topic = Some(q.topic.clone());
                m.group = q.group.clone();
            }
            TriggerSource::Postgres(p) => {
                m.url = Some(p.url.clone());
                m.publication = Some(p.publication.clone());
                m.slot = p.slot.clone();
                m.tables = p.tables.clone();
            }
            TriggerSource::Mysql(q) => {
                m.url = Some(q.url.clone());
                m.tables = q.tables.clone();
                m.server_id = q.server_id;
            }
            TriggerSource::S3(b) => {
                m.endpoint = Some(b.endpoint.clone());
                m.bucket = Some(b.bucket.clone());
                m.prefix = b.prefix.clone();
                m.suffix = b.suffix.clone();
                let mut events = Vec::new();
                if b.created {
                    events.push("created".to_owned());
                }
                if b.removed {
                    events.push("removed".to_owned());
                }
                m.events = Some(events);
                m.mode = Some(match b.mode {
                    S3Mode::Notify => "notify".to_owned(),
                    S3Mode::Poll => "poll".to_owned(),
                });
                if b.mode == S3Mode::Poll {
                    m.poll_interval = Some(format!("{}ms", b.poll_interval_ms));
                }
            }
            TriggerSource::Cron(c) => {
                m.schedule = Some(c.schedule.clone());
                m.timezone = Some(c.timezone.clone());
                m.payload = c.payload.clone();
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn one(toml_text: &str) -> Result<TriggerSpec, TriggerError> {
        let m: TriggerManifest =
            toml::from_str(toml_text).map_err(|e| invalid("?", "trigger", e.to_string()))?;
        m.validate(0)
    }

    #[test]
    fn a_kafka_trigger_gets_lambdas_defaults() {
        let t = one("name = \"orders\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\ntopic = \"orders\"").unwrap();
        let TriggerSource::Kafka(k) = &t.source else {
            panic!("{t:?}")
        };
        assert_eq!(k.settings.batch_size, 100);
        assert_eq!(k.settings.batch_window_ms, 500);
        assert_eq!(k.settings.max_retries, 3);
        assert_eq!(k.settings.starting_position, StartingPosition::Latest);
        assert_eq!(k.settings.on_failure, FailureDestination::Dlq);
        assert!(t.enabled);
        assert_eq!(t.target, None);
    }

    #[test]
    fn errors_name_the_trigger_and_the_field() {
        let cases = [
            ("name = \"a\"\nkind = \"sqs\"", "trigger.a.kind"),
            ("name = \"a\"\nkind = \"kafka\"\ntopic = \"t\"", "trigger.a.brokers"),
            ("name = \"a\"\nkind = \"kafka\"\nbrokers = [\"h:1\"]", "trigger.a.topic"),
            ("name = \"a\"\nkind = \"kafka\"\nbrokers = [\"h:1\"]\ntopic = \"t\"\nschedule = \"* * * * *\"", "trigger.a.schedule"),
            ("name = \"a\"\nkind = \"cron\"\nschedule = \"61 * * * *\"", "trigger.a.schedule"),
            ("name = \"a\"\nkind = \"cron\"\nschedule = \"* * *\"", "trigger.a.schedule"),
            ("name = \"a\"\nkind = \"cron\"\nschedule = \"rate(0 minutes)\"", "trigger.a.schedule"),
            ("name = \"a\"\nkind = \"cron\"\nschedule = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"", "trigger.a.timezone"),
            ("name = \"a\"\nkind = \"cron\"\nschedule = \"0 3 * * *\"\nbatch_size = 3", "trigger.a.batch_size"),
            ("name = \"a\"\nkind = \"cron\"\nschedule = \"0 3 * * *\"\npayload = \"{nope\"", "trigger.a.payload"),
            ("name = \"a\"\nkind = \"nats\"\nservers = [\"nats://h:1\"]\nstream = \"S\"\nsubject = \"a.>.b\"", "trigger.a.subject"),
            ("name = \"a\"\nkind = \"nats\"\nservers = [\"nats://h:1\"]\nstream = \"S\"\nbatch_size = 0", "trigger.a.batch_size"),
            ("name = \"a\"\nkind = \"nats\"\nservers = [\"nats://h:1\"]\nstream = \"S\"\non_failure = \"sqs:q\"", "trigger.a.on_failure"),
            ("name = \"a\"\nkind = \"nats\"\nservers = [\"nats://h:1\"]\nstream = \"S\"\nmax_retries = -1\nmax_record_age = \"0s\"", "trigger.a.max_retries"),
            ("kind = \"cron\"\nschedule = \"0 3 * * *\"", "trigger.#1.name"),
            ("name = \"a\"\nkind = \"redis\"\nstream = \"s\"", "trigger.a.url"),
            ("name = \"a\"\nkind = \"redis\"\nurl = \"http://x\"\nstream = \"s\"", "trigger.a.url"),
            ("name = \"a\"\nkind = \"redis\"\nurl = \"redis://x\"\nstream = \"s\"\ntopic = \"t\"", "trigger.a.topic"),
            ("name = \"a\"\nkind = \"redis\"\nurl = \"redis://x\"\nstream = \"s\"\non_failure = \"kafka:t\"", "trigger.a.on_failure"),
            ("name = \"a\"\nkind = \"kafka\"\nbrokers = [\"h:1\"]\ntopic = \"t\"\non_failure = \"nats:x\"", "trigger.a.on_failure"),
            ("name = \"a\"\nkind = \"amqp\"\nurl = \"amqp://h\"", "trigger.a.queue"),
            ("name = \"a\"\nkind = \"amqp\"\nurl = \"redis://h\"\nqueue = \"q\"", "trigger.a.url"),
            ("name = \"a\"\nkind = \"amqp\"\nurl = \"amqp://h\"\nqueue = \"q\"\non_failure = \"nats:x\"", "trigger.a.on_failure"),
            ("name = \"a\"\nkind = \"redis\"\nurl = \"redis://x\"\nstream = \"s\"\non_failure = \"amqp:x\"", "trigger.a.on_failure"),
            ("name = \"a\"\nkind = \"mqtt\"\nurl = \"mqtt://h:1883\"\ntopic = \"a/#/b\"", "trigger.a.topic"),
            ("name = \"a\"\nkind = \"mqtt\"\nurl = \"mqtt://h:1883\"\ntopic = \"a/b+\"", "trigger.a.topic"),
            ("name = \"a\"\nkind = \"mqtt\"\nurl = \"mqtt://h:1883\"\ntopic = \"$share/g/a\"", "trigger.a.topic"),
            ("name = \"a\"\nkind = \"mqtt\"\nurl = \"mqtt://h:1883\"\ntopic = \"a\"\nqueue = \"q\"", "trigger.a.queue"),
            ("name = \"a\"\nkind = \"postgres\"\nurl = \"postgres://h/db\"", "trigger.a.publication"),
            ("name = \"a\"\nkind = \"postgres\"\nurl = \"postgres://h/db\"\npublication = \"p\"\nslot = \"Bad-Slot\"", "trigger.a.slot"),
            ("name = \"a\"\nkind = \"postgres\"\nurl = \"postgres://h/db\"\npublication = \"p\"\nstarting_position = \"earliest\"", "trigger.a.starting_position"),
            ("name = \"a\"\nkind = \"postgres\"\nurl = \"postgres://h/db\"\npublication = \"p\"\nparallelization = 2", "trigger.a.parallelization"),
            ("name = \"a\"\nkind = \"postgres\"\nurl = \"postgres://h/db\"\npublication = \"p\"\ntables = [\"a.b.c\"]", "trigger.a.tables"),
            ("name = \"a\"\nkind = \"mysql\"\nurl = \"mysql://h:3306\"\nserver_id = 0", "trigger.a.server_id"),
            ("name = \"a\"\nkind = \"mysql\"\nurl = \"mysql://h:3306\"\npublication = \"p\"", "trigger.a.publication"),
            ("name = \"a\"\nkind = \"mysql\"\nurl = \"mysql://\"", "trigger.a.url"),
            ("name = \"a\"\nkind = \"s3\"\nbucket = \"b\"", "trigger.a.endpoint"),
            ("name = \"a\"\nkind = \"s3\"\nendpoint = \"http://h\"\nbucket = \"Bad_Bucket\"", "trigger.a.bucket"),
            ("name = \"a\"\nkind = \"s3\"\nendpoint = \"http://h\"\nbucket = \"bkt\"\nevents = [\"changed\"]", "trigger.a.events"),
            ("name = \"a\"\nkind = \"s3\"\nendpoint = \"http://h\"\nbucket = \"bkt\"\nmode = \"push\"", "trigger.a.mode"),
            ("name = \"a\"\nkind = \"s3\"\nendpoint = \"http://h\"\nbucket = \"bkt\"\nmode = \"notify\"\npoll_interval = \"1s\"", "trigger.a.poll_interval"),
        ];
        for (text, field) in cases {
            let e = one(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{text}: {e}");
        }
        let unknown: Result<TriggerManifest, _> =
            toml::from_str("name = \"a\"\nkind = \"cron\"\nshedule = \"x\"");
        assert!(unknown.unwrap_err().to_string().contains("shedule"));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let t: TriggerManifest =
            toml::from_str("name = \"a\"\nkind = \"cron\"\nschedule = \"0 3 * * *\"").unwrap();
        let e = validate_all(&[t.clone(), t]).unwrap_err().to_string();
        assert!(e.contains("unique"), "{e}");
    }

    #[test]
    fn a_spec_writes_back_as_a_table_that_validates_to_it() {
        let t = one("name = \"o\"\nkind = \"nats\"\nservers = [\"nats://h:1\"]\nstream = \"S\"\nsubject = \"o.>\"\nbatch_size = 7\non_failure = \"nats:dead.o\"\ntarget = \"live\"\nparallelization = 4\nmax_retries = -1").unwrap();
        assert_eq!(TriggerManifest::from(&t).validate(0).unwrap(), t);
        let c = one("name = \"n\"\nkind = \"cron\"\nschedule = \"0 3 * * *\"\ntimezone = \"Europe/Paris\"\npayload = '{\"job\": 1}'\nenabled = false").unwrap();
        assert_eq!(TriggerManifest::from(&c).validate(0).unwrap(), c);
        for text in [
            "name = \"q\"\nkind = \"amqp\"\nurl = \"amqp://u:p@h:5672/%2f\"\nqueue = \"orders\"\non_failure = \"amqp:dead\"",
            "name = \"m\"\nkind = \"mqtt\"\nurl = \"mqtt://h:1883\"\ntopic = \"sensors/+/t/#\"\ngroup = \"g\"",
            "name = \"p\"\nkind = \"postgres\"\nurl = \"postgres://u:p@h/db\"\npublication = \"pub\"\nslot = \"s_1\"\ntables = [\"public.orders\", \"items\"]",
            "name = \"b\"\nkind = \"mysql\"\nurl = \"mysql://u:p@h:3306\"\ntables = [\"shop.orders\"]\nserver_id = 77",
            "name = \"u\"\nkind = \"s3\"\nendpoint = \"http://k:s@h:9000\"\nbucket = \"uploads\"\nprefix = \"in/\"\nsuffix = \".jpg\"\nevents = [\"created\", \"removed\"]\npoll_interval = \"2s\"",
            "name = \"n\"\nkind = \"s3\"\nendpoint = \"https://h\"\nbucket = \"uploads\"\nmode = \"notify\"",
        ] {
            let t = one(text).unwrap();
            assert_eq!(TriggerManifest::from(&t).validate(0).unwrap(), t, "{text}");
        }
    }

    #[test]
    fn derived_slots_and_replica_ids_are_valid_and_apart() {
        let a = default_slot("default", "Orders-Fn", "changes");
        let b = default_slot("default", "orders_fn", "changes");
        assert_ne!(a, b);
        assert!(
            a.len() <= 63
                && a.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
            "{a}"
        );
        let long = default_slot(&"n".repeat(60), &"f".repeat(60), "t");
        assert!(long.len() <= 63, "{long}");
        assert_ne!(
            default_server_id("d", "f", "a"),
            default_server_id("d", "f", "b")
        );
        assert!(default_server_id("d", "f", "a") >= 1_000_000);
    }

    #[test]
    fn cron_fires_once_per_day_in_its_zone_across_daylight_saving() {
        let paris = parse_timezone("Europe/Paris").unwrap();
        let s = Schedule::parse("30 2 * * *").unwrap();
        // 2026-03-29: 02:00 → 03:00 in Paris; 02:30 does not exist, it runs right after the gap.
        let mut t = chrono::Utc.with_ymd_and_hms(2026, 3, 27, 12, 0, 0).unwrap();
        let mut fires = Vec::new();
        for _ in 0..4 {
            t = s.next_after(t, paris).unwrap();
            fires.push(t.with_timezone(&paris).format("%m-%d %H:%M %z").to_string());
        }
        assert_eq!(
            fires,
            [
                "03-28 02:30 +0100",
                "03-29 03:00 +0200",
                "03-30 02:30 +0200",
                "03-31 02:30 +0200"
            ]
        );
        // 2026-10-25: 03:00 → 02:00; 02:30 happens twice, it fires once.
        let mut t = chrono::Utc
            .with_ymd_and_hms(2026, 10, 24, 12, 0, 0)
            .unwrap();
        let mut fires = Vec::new();
        for _ in 0..3 {
            t = s.next_after(t, paris).unwrap();
            fires.push(t.with_timezone(&paris).format("%m-%d %H:%M %z").to_string());
        }
        assert_eq!(
            fires,
            [
                "10-25 02:30 +0200",
                "10-26 02:30 +0100",
                "10-27 02:30 +0100"
            ]
        );
    }

    #[test]
    fn six_fields_take_seconds_and_rates_count_from_the_epoch() {
        let utc = parse_timezone("UTC").unwrap();
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 3).unwrap();
        assert_eq!(
            s.next_after(t, utc).unwrap(),
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap()
        );
        let r = Schedule::parse("rate(5 minutes)").unwrap();
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 7, 0).unwrap();
        assert_eq!(
            r.next_after(t, utc).unwrap(),
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 10, 0).unwrap()
        );
    }
}
