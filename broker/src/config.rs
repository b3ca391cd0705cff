//! Typed configuration with Kafka's names and defaults.
//!
//! Sources, later ones winning: built-in defaults, a `.properties` or `.toml`
//! file, `FJORD_*` environment variables (`FJORD_LOG_DIRS` -> `log.dirs`), and
//! `--override key=value` flags. Topic-level configs ([`LogConfig`]) take
//! their defaults from the broker's `log.*` settings, exactly as in Kafka.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown config '{0}'")]
    Unknown(String),
    #[error("invalid value '{value}' for config '{name}': {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {0}: {1}")]
    File(String, String),
}

/// A value that can live in a config map as a string.
pub trait ConfigValue: Sized {
    fn parse_value(s: &str) -> Result<Self, String>;
    fn render(&self) -> String;
    /// Kafka's DescribeConfigs `config_type` code.
    fn type_code() -> i8;
}

macro_rules! int_value {
    ($t:ty, $code:expr) => {
        impl ConfigValue for $t {
            fn parse_value(s: &str) -> Result<Self, String> {
                s.trim().parse::<$t>().map_err(|e| e.to_string())
            }
            fn render(&self) -> String {
                self.to_string()
            }
            fn type_code() -> i8 {
                $code
            }
        }
    };
}
int_value!(i32, 3);
int_value!(i64, 5);
int_value!(f64, 6);

impl ConfigValue for bool {
    fn parse_value(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!("expected true or false, got {other}")),
        }
    }
    fn render(&self) -> String {
        self.to_string()
    }
    fn type_code() -> i8 {
        1
    }
}

impl ConfigValue for String {
    fn parse_value(s: &str) -> Result<Self, String> {
        Ok(s.trim().to_string())
    }
    fn render(&self) -> String {
        self.clone()
    }
    fn type_code() -> i8 {
        2
    }
}

/// One documented config entry, used by DescribeConfigs and the README.
#[derive(Debug, Clone)]
pub struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub default: String,
    pub type_code: i8,
    pub doc: &'static str,
}

/// Declares a config struct whose fields carry Kafka names, defaults and docs,
/// with parsing from a string map and rendering back to entries.
macro_rules! config_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $key:literal, $default:expr; )* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name { $( $(#[doc = $doc])* pub $field: $ty, )* }

        impl Default for $name {
            fn default() -> Self { Self { $( $field: $default, )* } }
        }

        impl $name {
            /// Every config name this struct knows.
            pub const NAMES: &'static [&'static str] = &[$($key),*];

            /// Applies one `name=value` pair; unknown names are an error.
            pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
                match name {
                    $( $key => {
                        self.$field = <$ty as ConfigValue>::parse_value(value).map_err(|reason| ConfigError::Invalid {
                            name: name.to_string(), value: value.to_string(), reason,
                        })?;
                        Ok(())
                    } )*
                    _ => Err(ConfigError::Unknown(name.to_string())),
                }
            }

            /// The rendered value of one config.
            pub fn get(&self, name: &str) -> Option<String> {
                match name {
                    $( $key => Some(self.$field.render()), )*
                    _ => None,
                }
            }

            /// All entries with value, default, type and documentation.
            pub fn entries(&self) -> Vec<ConfigEntry> {
                let defaults = Self::default();
                vec![$( ConfigEntry {
                    name: $key,
                    value: self.$field.render(),
                    default: defaults.$field.render(),
                    type_code: <$ty as ConfigValue>::type_code(),
                    doc: concat!($($doc),*),
                }, )*]
            }
        }
    };
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

config_struct! {
    /// Broker configuration (`server.properties`).
    pub struct BrokerConfig {
        /// This broker's id; also its controller voter id.
        node_id: i32 = "node.id", 0;
        /// Roles of this process: broker, controller or both.
        process_roles: String = "process.roles", "broker,controller".to_string();
        /// Cluster id the quorum takes when it first forms; generated when empty.
        cluster_id: String = "cluster.id", String::new();
        /// The metadata quorum's voters, `id@host:port` (their admin listeners),
        /// comma-separated. Empty: this node alone, on its admin listener.
        controller_quorum_voters: String = "controller.quorum.voters", String::new();
        /// A broker without a heartbeat for this long is fenced.
        broker_session_timeout_ms: i64 = "broker.session.timeout.ms", 9000;
        /// How often a broker heartbeats to the active controller. Shorter
        /// than Kafka's 2000: two missed heartbeats get a broker probed, and
        /// fenced at once if its listener is gone.
        broker_heartbeat_interval_ms: i64 = "broker.heartbeat.interval.ms", 500;
        /// Bytes of metadata records applied between two snapshots of the
        /// image; the log before a snapshot is then dropped.
        metadata_log_max_record_bytes_between_snapshots: i64 = "metadata.log.max.record.bytes.between.snapshots", 20 * 1024 * 1024;
        /// A follower that has not caught up with its leader's log end for this long leaves the ISR.
        replica_lag_time_max_ms: i64 = "replica.lag.time.max.ms", 30_000;
        /// Let an out-of-sync replica lead when no in-sync one is live, losing
        /// the records only the ISR held (topic: unclean.leader.election.enable).
        unclean_leader_election_enable: bool = "unclean.leader.election.enable", false;
        /// Bytes per second a leader serves to replicas a reassignment is adding.
        leader_replication_throttled_rate: i64 = "leader.replication.throttled.rate", i64::MAX;
        /// Bytes per second a follower fetches for its replicas a reassignment is adding.
        follower_replication_throttled_rate: i64 = "follower.replication.throttled.rate", i64::MAX;
        /// The active controller moves leadership back to preferred replicas.
        auto_leader_rebalance_enable: bool = "auto.leader.rebalance.enable", true;
        /// How often the active controller checks leader imbalance.
        leader_imbalance_check_interval_seconds: i64 = "leader.imbalance.check.interval.seconds", 300;
        /// Imbalance (share of a broker's preferred partitions led elsewhere) above which leadership moves back.
        leader_imbalance_per_broker_percentage: i32 = "leader.imbalance.per.broker.percentage", 10;
        /// Kafka protocol listener.
        listeners: String = "listeners", "PLAINTEXT://127.0.0.1:9092".to_string();
        /// Listener given to clients in Metadata; defaults to `listeners`.
        advertised_listeners: String = "advertised.listeners", String::new();
        /// Admin gRPC listener (host:port).
        admin_listener: String = "admin.listener", "127.0.0.1:9093".to_string();
        /// Metrics and health HTTP listener (host:port).
        metrics_listener: String = "metrics.listener", "127.0.0.1:9644".to_string();
        /// Rack of this broker, for rack-aware placement.
        broker_rack: String = "broker.rack", String::new();
        /// Directory holding the partition logs.
        log_dirs: String = "log.dirs", "./data".to_string();
        /// Default partition count of new topics.
        num_partitions: i32 = "num.partitions", 1;
        /// Default replication factor of new topics.
        default_replication_factor: i32 = "default.replication.factor", 1;
        /// Create unknown topics when a Metadata request asks for them (as Kafka does).
        auto_create_topics_enable: bool = "auto.create.topics.enable", true;
        /// Largest request frame accepted.
        socket_request_max_bytes: i32 = "socket.request.max.bytes", 104_857_600;
        /// Largest record batch accepted (topic: max.message.bytes).
        message_max_bytes: i32 = "message.max.bytes", 1_048_588;
        /// Largest fetch response the broker builds.
        fetch_max_bytes: i32 = "fetch.max.bytes", 57_671_680;
        /// Segment size at which the active segment rolls (topic: segment.bytes).
        log_segment_bytes: i32 = "log.segment.bytes", 1_073_741_824;
        /// Age at which the active segment rolls (topic: segment.ms).
        log_roll_ms: i64 = "log.roll.ms", 7 * DAY_MS;
        /// Time-based retention (topic: retention.ms); -1 keeps forever.
        log_retention_ms: i64 = "log.retention.ms", 7 * DAY_MS;
        /// Size-based retention per partition (topic: retention.bytes); -1 is unbounded.
        log_retention_bytes: i64 = "log.retention.bytes", -1;
        /// How often retention is enforced.
        log_retention_check_interval_ms: i64 = "log.retention.check.interval.ms", 300_000;
        /// Bytes between two offset/time index entries (topic: index.interval.bytes).
        log_index_interval_bytes: i32 = "log.index.interval.bytes", 4096;
        /// Preallocated size of each index file (topic: segment.index.bytes).
        log_index_size_max_bytes: i32 = "log.index.size.max.bytes", 10_485_760;
        /// fsync after this many messages (topic: flush.messages); default leaves it to the page cache.
        log_flush_interval_messages: i64 = "log.flush.interval.messages", i64::MAX;
        /// fsync when data is older than this (topic: flush.ms); default leaves it to the page cache.
        log_flush_interval_ms: i64 = "log.flush.interval.ms", i64::MAX;
        /// How often the flusher checks logs against flush.ms.
        log_flush_scheduler_interval_ms: i64 = "log.flush.scheduler.interval.ms", 1000;
        /// How often the recovery point is checkpointed.
        log_flush_offset_checkpoint_interval_ms: i64 = "log.flush.offset.checkpoint.interval.ms", 60_000;
        /// CreateTime or LogAppendTime (topic: message.timestamp.type).
        log_message_timestamp_type: String = "log.message.timestamp.type", "CreateTime".to_string();
        /// Oldest record timestamp accepted, in ms before the broker's time, on CreateTime topics (topic: message.timestamp.before.max.ms).
        log_message_timestamp_before_max_ms: i64 = "log.message.timestamp.before.max.ms", i64::MAX;
        /// Newest record timestamp accepted, in ms after the broker's time, on CreateTime topics (topic: message.timestamp.after.max.ms).
        log_message_timestamp_after_max_ms: i64 = "log.message.timestamp.after.max.ms", 3_600_000;
        /// delete, compact or both (topic: cleanup.policy).
        log_cleanup_policy: String = "log.cleanup.policy", "delete".to_string();
        /// producer keeps the producer's codec; otherwise batches are recompressed (topic: compression.type).
        compression_type: String = "compression.type", "producer".to_string();
        /// Tombstone retention on compacted topics (topic: delete.retention.ms).
        log_cleaner_delete_retention_ms: i64 = "log.cleaner.delete.retention.ms", DAY_MS;
        /// Minimum in-sync replicas for acks=all (topic: min.insync.replicas).
        min_insync_replicas: i32 = "min.insync.replicas", 1;
        /// Request bytes all connections together may hold read but not yet handled; a
        /// connection waits to read a frame until its bytes fit (Kafka bounds the queue
        /// with queued.max.requests; -1 is unbounded).
        queued_max_request_bytes: i64 = "queued.max.request.bytes", 536_870_912;
        /// A request frame whose body has not fully arrived this long after its size closes the connection.
        socket_request_read_timeout_ms: i64 = "socket.request.read.timeout.ms", 30_000;
        /// Idle connections are closed after this long.
        connections_max_idle_ms: i64 = "connections.max.idle.ms", 600_000;
        /// How long a group forming from empty waits for more members before its first rebalance.
        group_initial_rebalance_delay_ms: i64 = "group.initial.rebalance.delay.ms", 3000;
        /// Smallest session timeout a member may ask for.
        group_min_session_timeout_ms: i64 = "group.min.session.timeout.ms", 6000;
        /// Largest session timeout a member may ask for.
        group_max_session_timeout_ms: i64 = "group.max.session.timeout.ms", 1_800_000;
        /// Most members in one group.
        group_max_size: i32 = "group.max.size", i32::MAX;
        /// Partitions of __consumer_offsets (fixed once created).
        offsets_topic_num_partitions: i32 = "offsets.topic.num.partitions", 50;
        /// Replicas of each __consumer_offsets partition (at most the live brokers when it is created).
        offsets_topic_replication_factor: i32 = "offsets.topic.replication.factor", 3;
        /// Segment size of __consumer_offsets, small so it compacts often.
        offsets_topic_segment_bytes: i32 = "offsets.topic.segment.bytes", 104_857_600;
        /// Offsets of a group that stays empty this long are deleted.
        offsets_retention_minutes: i64 = "offsets.retention.minutes", 10_080;
        /// How often expired offsets are looked for.
        offsets_retention_check_interval_ms: i64 = "offsets.retention.check.interval.ms", 600_000;
        /// How long an offset commit waits for the __consumer_offsets ISR before COORDINATOR_NOT_AVAILABLE.
        offsets_commit_timeout_ms: i64 = "offsets.commit.timeout.ms", 5000;
        /// Largest metadata string stored with a committed offset.
        offset_metadata_max_bytes: i32 = "offset.metadata.max.bytes", 4096;
        /// Partitions of __transaction_state (fixed once created).
        transaction_state_log_num_partitions: i32 = "transaction.state.log.num.partitions", 50;
        /// Replicas of each __transaction_state partition (at most the live brokers when it is created).
        transaction_state_log_replication_factor: i32 = "transaction.state.log.replication.factor", 3;
        /// min.insync.replicas of __transaction_state (at most its replication factor).
        transaction_state_log_min_isr: i32 = "transaction.state.log.min.isr", 2;
        /// Segment size of __transaction_state.
        transaction_state_log_segment_bytes: i32 = "transaction.state.log.segment.bytes", 104_857_600;
        /// Largest transaction.timeout.ms a producer may ask for (INVALID_TRANSACTION_TIMEOUT above it).
        transaction_max_timeout_ms: i32 = "transaction.max.timeout.ms", 900_000;
        /// A partition asks the transaction's coordinator before it takes the first
        /// transactional batch of a transaction (KIP-890 part 1).
        transaction_partition_verification_enable: bool = "transaction.partition.verification.enable", true;
        /// How often the coordinator looks for transactions open past their timeout, to abort them.
        transaction_abort_timed_out_transaction_cleanup_interval_ms: i64 = "transaction.abort.timed.out.transaction.cleanup.interval.ms", 10_000;
        /// A transactional id with no transaction open is forgotten after this long without an update.
        transactional_id_expiration_ms: i64 = "transactional.id.expiration.ms", 7 * DAY_MS;
        /// How often expired transactional ids are looked for.
        transaction_remove_expired_transaction_cleanup_interval_ms: i64 = "transaction.remove.expired.transaction.cleanup.interval.ms", 3_600_000;
        /// Idempotent producer state is forgotten after this long without a batch.
        producer_id_expiration_ms: i64 = "producer.id.expiration.ms", DAY_MS;
        /// How often idle producer ids are looked for.
        producer_id_expiration_check_interval_ms: i64 = "producer.id.expiration.check.interval.ms", 600_000;
        /// Run the log cleaner for compacted topics.
        log_cleaner_enable: bool = "log.cleaner.enable", true;
        /// Memory for one cleaning pass's key map (24 bytes a key); a pass with more
        /// dirty keys cleans as far as they fit and goes on at the next.
        log_cleaner_dedupe_buffer_size: i64 = "log.cleaner.dedupe.buffer.size", 134_217_728;
        /// How long the cleaner sleeps when no log needs cleaning.
        log_cleaner_backoff_ms: i64 = "log.cleaner.backoff.ms", 15_000;
        /// Dirty ratio above which a log is cleaned (topic: min.cleanable.dirty.ratio).
        log_cleaner_min_cleanable_ratio: f64 = "log.cleaner.min.cleanable.ratio", 0.5;
        /// Minimum age before a record may be compacted (topic: min.compaction.lag.ms).
        log_cleaner_min_compaction_lag_ms: i64 = "log.cleaner.min.compaction.lag.ms", 0;
        /// Maximum time a record stays uncompacted (topic: max.compaction.lag.ms).
        log_cleaner_max_compaction_lag_ms: i64 = "log.cleaner.max.compaction.lag.ms", i64::MAX;
    }
}

config_struct! {
    /// Per-topic log configuration; defaults come from the broker's `log.*` settings.
    pub struct LogConfig {
        /// Time-based retention; -1 keeps forever.
        retention_ms: i64 = "retention.ms", 7 * DAY_MS;
        /// Size-based retention per partition; -1 is unbounded.
        retention_bytes: i64 = "retention.bytes", -1;
        /// Segment size at which the active segment rolls.
        segment_bytes: i32 = "segment.bytes", 1_073_741_824;
        /// Age at which the active segment rolls.
        segment_ms: i64 = "segment.ms", 7 * DAY_MS;
        /// Preallocated size of each index file.
        segment_index_bytes: i32 = "segment.index.bytes", 10_485_760;
        /// Bytes between two index entries.
        index_interval_bytes: i32 = "index.interval.bytes", 4096;
        /// Largest record batch accepted.
        max_message_bytes: i32 = "max.message.bytes", 1_048_588;
        /// CreateTime or LogAppendTime.
        message_timestamp_type: String = "message.timestamp.type", "CreateTime".to_string();
        /// Oldest record timestamp accepted, in ms before the broker's time (CreateTime only).
        message_timestamp_before_max_ms: i64 = "message.timestamp.before.max.ms", i64::MAX;
        /// Newest record timestamp accepted, in ms after the broker's time (CreateTime only).
        message_timestamp_after_max_ms: i64 = "message.timestamp.after.max.ms", 3_600_000;
        /// delete, compact or compact,delete.
        cleanup_policy: String = "cleanup.policy", "delete".to_string();
        /// producer, uncompressed, gzip, snappy, lz4 or zstd.
        compression_type: String = "compression.type", "producer".to_string();
        /// fsync after this many messages.
        flush_messages: i64 = "flush.messages", i64::MAX;
        /// fsync when unflushed data is older than this.
        flush_ms: i64 = "flush.ms", i64::MAX;
        /// Tombstone retention on compacted topics.
        delete_retention_ms: i64 = "delete.retention.ms", DAY_MS;
        /// Minimum in-sync replicas for acks=all.
        min_insync_replicas: i32 = "min.insync.replicas", 1;
        /// Let an out-of-sync replica lead when no in-sync one is live.
        unclean_leader_election_enable: bool = "unclean.leader.election.enable", false;
        /// Dirty ratio above which the cleaner compacts a log.
        min_cleanable_dirty_ratio: f64 = "min.cleanable.dirty.ratio", 0.5;
        /// Minimum age of a record before it may be compacted.
        min_compaction_lag_ms: i64 = "min.compaction.lag.ms", 0;
        /// Maximum time a record stays uncompacted.
        max_compaction_lag_ms: i64 = "max.compaction.lag.ms", i64::MAX;
        /// Kafka's list of replicas a leader throttles ("p:b,...", "*"):
        /// accepted (kafka-reassign-partitions sets it); the throttle here
        /// applies to every replica a reassignment adds.
        leader_replication_throttled_replicas: String = "leader.replication.throttled.replicas", String::new();
        /// The follower side of the same; accepted, not acted on.
        follower_replication_throttled_replicas: String = "follower.replication.throttled.replicas", String::new();
    }
}

impl LogConfig {
    /// Topic defaults derived from the broker's settings (Kafka's synonyms).
    pub fn defaults_from(broker: &BrokerConfig) -> LogConfig {
        LogConfig {
            retention_ms: broker.log_retention_ms,
            retention_bytes: broker.log_retention_bytes,
            segment_bytes: broker.log_segment_bytes,
            segment_ms: broker.log_roll_ms,
            segment_index_bytes: broker.log_index_size_max_bytes,
            index_interval_bytes: broker.log_index_interval_bytes,
            max_message_bytes: broker.message_max_bytes,
            message_timestamp_type: broker.log_message_timestamp_type.clone(),
            message_timestamp_before_max_ms: broker.log_message_timestamp_before_max_ms,
            message_timestamp_after_max_ms: broker.log_message_timestamp_after_max_ms,
            cleanup_policy: broker.log_cleanup_policy.clone(),
            compression_type: broker.compression_type.clone(),
            flush_messages: broker.log_flush_interval_messages,
            flush_ms: broker.log_flush_interval_ms,
            delete_retention_ms: broker.log_cleaner_delete_retention_ms,
            min_insync_replicas: broker.min_insync_replicas,
            unclean_leader_election_enable: broker.unclean_leader_election_enable,
            min_cleanable_dirty_ratio: broker.log_cleaner_min_cleanable_ratio,
            min_compaction_lag_ms: broker.log_cleaner_min_compaction_lag_ms,
            max_compaction_lag_ms: broker.log_cleaner_max_compaction_lag_ms,
            leader_replication_throttled_replicas: String::new(),
            follower_replication_throttled_replicas: String::new(),
        }
    }

    /// The broker config each topic config defaults from, as DescribeConfigs synonyms report it.
    pub fn broker_synonym(name: &str) -> Option<&'static str> {
        Some(match name {
            "retention.ms" => "log.retention.ms",
            "retention.bytes" => "log.retention.bytes",
            "segment.bytes" => "log.segment.bytes",
            "segment.ms" => "log.roll.ms",
            "segment.index.bytes" => "log.index.size.max.bytes",
            "index.interval.bytes" => "log.index.interval.bytes",
            "max.message.bytes" => "message.max.bytes",
            "message.timestamp.type" => "log.message.timestamp.type",
            "message.timestamp.before.max.ms" => "log.message.timestamp.before.max.ms",
            "message.timestamp.after.max.ms" => "log.message.timestamp.after.max.ms",
            "cleanup.policy" => "log.cleanup.policy",
            "compression.type" => "compression.type",
            "flush.messages" => "log.flush.interval.messages",
            "flush.ms" => "log.flush.interval.ms",
            "delete.retention.ms" => "log.cleaner.delete.retention.ms",
            "min.insync.replicas" => "min.insync.replicas",
            "unclean.leader.election.enable" => "unclean.leader.election.enable",
            "min.cleanable.dirty.ratio" => "log.cleaner.min.cleanable.ratio",
            "min.compaction.lag.ms" => "log.cleaner.min.compaction.lag.ms",
            "max.compaction.lag.ms" => "log.cleaner.max.compaction.lag.ms",
            _ => return None,
        })
    }

    /// Effective config of a topic: broker defaults plus the topic's overrides.
    pub fn with_overrides(
        broker: &BrokerConfig,
        overrides: &BTreeMap<String, String>,
    ) -> Result<LogConfig, ConfigError> {
        let mut config = LogConfig::defaults_from(broker);
        for (name, value) in overrides {
            config.set(name, value)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Value checks beyond parsing, as Kafka's LogConfig validates them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, value: String, reason: &str| ConfigError::Invalid {
            name: name.to_string(),
            value,
            reason: reason.to_string(),
        };
        if self.segment_bytes < 14 {
            return Err(invalid(
                "segment.bytes",
                self.segment_bytes.to_string(),
                "must be at least 14",
            ));
        }
        if self.segment_ms < 1 {
            return Err(invalid("segment.ms", self.segment_ms.to_string(), "must be at least 1"));
        }
        if self.max_message_bytes < 0 {
            return Err(invalid(
                "max.message.bytes",
                self.max_message_bytes.to_string(),
                "must be non-negative",
            ));
        }
        if self.index_interval_bytes < 0 {
            return Err(invalid(
                "index.interval.bytes",
                self.index_interval_bytes.to_string(),
                "must be non-negative",
            ));
        }
        if self.segment_index_bytes < 8 {
            return Err(invalid(
                "segment.index.bytes",
                self.segment_index_bytes.to_string(),
                "must be at least 8",
            ));
        }
        for (name, value) in [
            ("message.timestamp.before.max.ms", self.message_timestamp_before_max_ms),
            ("message.timestamp.after.max.ms", self.message_timestamp_after_max_ms),
        ] {
            if value < 0 {
                return Err(invalid(name, value.to_string(), "must be non-negative"));
            }
        }
        if !matches!(self.message_timestamp_type.as_str(), "CreateTime" | "LogAppendTime") {
            return Err(invalid(
                "message.timestamp.type",
                self.message_timestamp_type.clone(),
                "must be CreateTime or LogAppendTime",
            ));
        }
        for policy in self.cleanup_policy.split(',') {
            if !matches!(policy.trim(), "delete" | "compact") {
                return Err(invalid(
                    "cleanup.policy",
                    self.cleanup_policy.clone(),
                    "must be delete, compact or both",
                ));
            }
        }
        if !matches!(
            self.compression_type.as_str(),
            "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd"
        ) {
            return Err(invalid(
                "compression.type",
                self.compression_type.clone(),
                "must be producer, uncompressed, gzip, snappy, lz4 or zstd",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return Err(invalid(
                "min.cleanable.dirty.ratio",
                self.min_cleanable_dirty_ratio.to_string(),
                "must be between 0 and 1",
            ));
        }
        if self.min_insync_replicas < 1 {
            return Err(invalid(
                "min.insync.replicas",
                self.min_insync_replicas.to_string(),
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn log_append_time(&self) -> bool {
        self.message_timestamp_type == "LogAppendTime"
    }

    pub fn compact(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p.trim() == "compact")
    }

    pub fn delete(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p.trim() == "delete")
    }
}

/// A listener's host and port, from `PLAINTEXT://host:port` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(listener: &str) -> Result<Endpoint, String> {
        let first = listener.split(',').next().unwrap_or_default().trim();
        let addr = first.rsplit("://").next().unwrap_or(first);
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("listener '{listener}' has no port"))?;
        let port = port.parse::<u16>().map_err(|e| format!("listener '{listener}': {e}"))?;
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        Ok(Endpoint {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
        })
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl BrokerConfig {
    /// Builds the config from a file (optional), the environment and overrides.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<BrokerConfig, ConfigError> {
        let mut config = BrokerConfig::default();
        if let Some(path) = file {
            for (k, v) in read_config_file(path)? {
                config.set(&k, &v)?;
            }
        }
        for (k, v) in env {
            if let Some(name) = k.strip_prefix("FJORD_") {
                let name = name.to_ascii_lowercase().replace('_', ".");
                // Only names we know: the environment holds unrelated FJORD_ variables too.
                if BrokerConfig::NAMES.contains(&name.as_str()) {
                    config.set(&name, &v)?;
                }
            }
        }
        for (k, v) in overrides {
            config.set(k, v)?;
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, value: String, reason: String| ConfigError::Invalid {
            name: name.to_string(),
            value,
            reason,
        };
        for (name, value) in [
            ("listeners", &self.listeners),
            ("admin.listener", &self.admin_listener),
            ("metrics.listener", &self.metrics_listener),
        ] {
            Endpoint::parse(value).map_err(|e| invalid(name, value.clone(), e))?;
        }
        if self.socket_request_max_bytes < 1 {
            return Err(invalid(
                "socket.request.max.bytes",
                self.socket_request_max_bytes.to_string(),
                "must be positive".into(),
            ));
        }
        if self.num_partitions < 1 {
            return Err(invalid(
                "num.partitions",
                self.num_partitions.to_string(),
                "must be positive".into(),
            ));
        }
        LogConfig::defaults_from(self).validate()
    }

    pub fn listener(&self) -> Endpoint {
        Endpoint::parse(&self.listeners).unwrap_or(Endpoint {
            host: "127.0.0.1".into(),
            port: 9092,
        })
    }

    /// The endpoint clients are told about in Metadata.
    pub fn advertised(&self) -> Endpoint {
        if self.advertised_listeners.is_empty() {
            self.listener()
        } else {
            Endpoint::parse(&self.advertised_listeners).unwrap_or_else(|_| self.listener())
        }
    }

    /// The quorum's voters (node id, admin address); this node alone when unset.
    pub fn quorum_voters(&self) -> Result<Vec<(i32, String)>, ConfigError> {
        if self.controller_quorum_voters.trim().is_empty() {
            return Ok(vec![(self.node_id, self.admin_listener.clone())]);
        }
        let bad = |v: &str| ConfigError::Invalid {
            name: "controller.quorum.voters".into(),
            value: self.controller_quorum_voters.clone(),
            reason: format!("{v:?} is not a distinct id@host:port"),
        };
        let mut voters = Vec::new();
        for v in self.controller_quorum_voters.split(',').map(str::trim) {
            let (id, addr) = v.split_once('@').ok_or_else(|| bad(v))?;
            let id: i32 = id.parse().map_err(|_| bad(v))?;
            if id < 0 || !addr.contains(':') || voters.iter().any(|(other, _)| *other == id) {
                return Err(bad(v));
            }
            voters.push((id, addr.to_string()));
        }
        Ok(voters)
    }

    /// `process.roles` by membership of the voters: combined on a voter,
    /// broker alone elsewhere.
    pub fn take_roles_from_voters(&mut self) -> Result<(), ConfigError> {
        let voter = self.quorum_voters()?.iter().any(|(id, _)| *id == self.node_id);
        self.process_roles = if voter { "broker,controller" } else { "broker" }.to_string();
        Ok(())
    }

    pub fn is_controller(&self) -> bool {
        self.process_roles.split(',').any(|r| r.trim() == "controller")
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.log_dirs.split(',').next().unwrap_or("./data").trim())
    }
}

/// The ordinal of a StatefulSet pod (`demo-2` -> 2).
pub fn pod_ordinal(pod_name: &str) -> Option<i32> {
    let (_, ordinal) = pod_name.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse().ok()
}

/// `broker.rack` from a file holding just the rack ("" when empty), waiting
/// up to `wait` for it to appear: on Kubernetes the file is the pod's node's
/// entry in the operator's rack map, which reaches a mounted volume at the
/// kubelet's next sync when the node is new to the map.
pub fn rack_from_file(path: &Path, wait: std::time::Duration) -> Result<String, ConfigError> {
    let deadline = std::time::Instant::now() + wait;
    let mut waited = false;
    loop {
        match std::fs::read_to_string(path) {
            Ok(rack) => return Ok(rack.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::time::Instant::now() < deadline => {
                if !waited {
                    tracing::info!(path = %path.display(), "waiting for this node's rack in the rack map");
                    waited = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(500).min(wait));
            }
            Err(e) => return Err(ConfigError::File(path.display().to_string(), e.to_string())),
        }
    }
}

/// Reads `key=value` lines (`.properties`) or a flat TOML table (`.toml`).
pub fn read_config_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::File(path.display().to_string(), e.to_string()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File(path.display().to_string(), e.to_string()))?;
        let mut out = Vec::new();
        flatten_toml("", &table, &mut out);
        Ok(out)
    } else {
        Ok(parse_properties(&text))
    }
}

fn flatten_toml(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten_toml(&key, t, out),
            toml::Value::String(s) => out.push((key, s.clone())),
            other => out.push((key, other.to_string())),
        }
    }
}

/// Java-style properties: `#`/`!` comments, `=` or `:` separators.
pub fn parse_properties(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .filter_map(|l| {
            let idx = l.find(['=', ':'])?;
            Some((l[..idx].trim().to_string(), l[idx + 1..].trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rack_from_file_reads_trims_and_waits_for_the_file() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-a");
        std::fs::write(&path, "eu-west-1a\n").unwrap();
        assert_eq!(super::rack_from_file(&path, Duration::ZERO).unwrap(), "eu-west-1a");
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            super::rack_from_file(&path, Duration::ZERO).unwrap(),
            "",
            "empty: no rack"
        );
        let late = dir.path().join("node-b");
        assert!(
            super::rack_from_file(&late, Duration::from_millis(50)).is_err(),
            "gives up after the wait"
        );
        // A file that appears while it waits (the kubelet's volume sync).
        let started = std::time::Instant::now();
        let writer = {
            let late = late.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                // Renamed into place, as the kubelet's atomic writer does.
                let tmp = late.with_extension("tmp");
                std::fs::write(&tmp, "eu-west-1b").unwrap();
                std::fs::rename(&tmp, &late).unwrap();
            })
        };
        assert_eq!(
            super::rack_from_file(&late, Duration::from_secs(30)).unwrap(),
            "eu-west-1b"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "read only once written, so it waited"
        );
        writer.join().unwrap();
    }

    #[test]
    fn node_id_and_roles_in_a_stateful_set() {
        assert_eq!(pod_ordinal("demo-2"), Some(2));
        assert_eq!(pod_ordinal("my-kafka-cluster-10"), Some(10));
        for bad in ["demo", "demo-", "demo-x1", "demo-99999999999"] {
            assert_eq!(pod_ordinal(bad), None, "{bad}");
        }
        let mut config = BrokerConfig {
            node_id: 4,
            controller_quorum_voters: "0@a:1,1@b:1,2@c:1".into(),
            ..BrokerConfig::default()
        };
        config.take_roles_from_voters().unwrap();
        assert!(!config.is_controller());
        config.node_id = 1;
        config.take_roles_from_voters().unwrap();
        assert!(config.is_controller());
    }

    use super::*;

    #[test]
    fn defaults_are_kafkas() {
        let c = BrokerConfig::default();
        assert_eq!(
            c.listener(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 9092
            }
        );
        assert_eq!(c.log_segment_bytes, 1 << 30);
        assert_eq!(c.socket_request_max_bytes, 100 * 1024 * 1024);
        let t = LogConfig::defaults_from(&c);
        assert_eq!(t.index_interval_bytes, 4096);
        assert!(t.delete() && !t.compact());
    }

    #[test]
    fn sources_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.properties");
        std::fs::write(&file, "# comment\nnum.partitions=3\nlog.dirs = /tmp/x\n").unwrap();
        let env = vec![
            ("FJORD_NUM_PARTITIONS".to_string(), "4".to_string()),
            ("FJORD_UNRELATED_THING".to_string(), "x".to_string()),
        ];
        let c = BrokerConfig::load(Some(&file), env, &[("log.dirs".into(), "/tmp/y".into())]).unwrap();
        assert_eq!(c.num_partitions, 4);
        assert_eq!(c.log_dirs, "/tmp/y");
    }

    #[test]
    fn toml_files_flatten_to_kafka_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fjord.toml");
        std::fs::write(&file, "[log]\nretention.ms = 1000\n[num]\npartitions = 2\n").unwrap();
        let c = BrokerConfig::load(Some(&file), vec![], &[]).unwrap();
        assert_eq!(c.log_retention_ms, 1000);
        assert_eq!(c.num_partitions, 2);
    }

    #[test]
    fn every_config_is_documented_in_the_readme() {
        let readme = include_str!("../../README.md");
        for name in BrokerConfig::NAMES.iter().chain(LogConfig::NAMES) {
            assert!(
                readme.contains(&format!("`{name}`")),
                "README does not document `{name}`"
            );
        }
    }

    #[test]
    fn bad_values_are_rejected_with_names() {
        let mut c = LogConfig::default();
        assert!(matches!(
            c.set("retention.ms", "soon"),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(c.set("no.such", "1"), Err(ConfigError::Unknown(_))));
        c.set("cleanup.policy", "compact,delete").unwrap();
        assert!(c.compact() && c.delete());
        c.set("compression.type", "brotli").unwrap();
        assert!(c.validate().is_err());
    }
}
