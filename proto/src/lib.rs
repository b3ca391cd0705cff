//! gRPC definitions of Fjord's admin API (`proto/admin.proto`) and the brokers' metadata quorum (`proto/controller.proto`).

pub mod controller {
    pub mod v1 {
        tonic::include_proto!("fjord.controller.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("fjord.admin.v1");
    }
}

/// Machine-readable reasons carried in a `tonic::Status`'s details (as
/// google.rpc.ErrorInfo's `reason`), so clients branch on them, never on
/// message text.
pub mod reason {
    /// ResetGroupOffsets on a group that has active members (FAILED_PRECONDITION).
    pub const GROUP_NOT_EMPTY: &[u8] = b"GROUP_NOT_EMPTY";
}

/// Broker configs that change at run time, cluster-wide (Kafka's dynamic
/// broker configs that Fjord acts on): the brokers apply them without a
/// restart, so the operator sets them through `AlterBrokerConfigs` instead of
/// rolling the brokers. Shared by the broker and its tools as part of the API.
pub const DYNAMIC_BROKER_CONFIGS: &[&str] = &[
    "log.retention.ms",
    "log.retention.bytes",
    "log.segment.bytes",
    "log.roll.ms",
    "log.index.interval.bytes",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "log.cleanup.policy",
    "log.message.timestamp.type",
    "log.message.timestamp.before.max.ms",
    "log.message.timestamp.after.max.ms",
    "log.cleaner.delete.retention.ms",
    "compression.type",
    "message.max.bytes",
    "min.insync.replicas",
    "unclean.leader.election.enable",
    "leader.replication.throttled.rate",
    "follower.replication.throttled.rate",
];
