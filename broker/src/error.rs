//! The broker's typed errors and their Kafka error codes, mapped in one place.

use kafka_protocol::error::ResponseError;

use crate::log::batch::BatchError;
use crate::log::producer_state::SequenceError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("corrupt record batch: {0}")]
    CorruptMessage(String),
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: usize, max: i32 },
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// Records of a batch refused one by one (KIP-467): the whole batch is
    /// rejected and the client learns which records were at fault.
    #[error("{} invalid records, first: {}", .0.len(), .0.first().map_or("", |e| e.message.as_str()))]
    InvalidRecords(Vec<RecordError>),
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("this server does not host this topic-partition")]
    UnknownTopicOrPartition,
    #[error("unknown topic id")]
    UnknownTopicId,
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("topic '{0}' already exists")]
    TopicAlreadyExists(String),
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error("this broker does not lead the partition")]
    NotLeaderOrFollower,
    #[error("not the active controller: {0}")]
    NotController(String),
    #[error("fenced leader epoch: {0}")]
    FencedLeaderEpoch(String),
    #[error("leader epoch {0} is newer than this broker knows")]
    UnknownLeaderEpoch(i32),
    #[error("stale partition epoch: {0}")]
    InvalidUpdateVersion(String),
    #[error("no reassignment in progress: {0}")]
    NoReassignmentInProgress(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid required acks {0}: must be -1, 0 or 1")]
    InvalidRequiredAcks(i16),
    #[error("{isr} in-sync replicas, fewer than min.insync.replicas {min}")]
    NotEnoughReplicas { isr: usize, min: i32 },
    #[error("not done within the request's timeout")]
    RequestTimedOut,
    #[error("appended, but the ISR fell below min.insync.replicas before it was replicated")]
    NotEnoughReplicasAfterAppend,
    /// A transactional batch whose transaction its coordinator does not
    /// know in this partition (KIP-890 verification), with the code to answer.
    #[error("the transaction's coordinator refused the batch: {0:?}")]
    TxnVerification(ResponseError),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("storage error: {0}")]
    Storage(#[from] std::io::Error),
}

/// Why one record of a batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordErrorKind {
    InvalidRecord,
    InvalidTimestamp,
}

/// One refused record: its index in the batch and why (Produce v8+ `record_errors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub batch_index: i32,
    pub kind: RecordErrorKind,
    pub message: String,
}

impl RecordError {
    pub fn new(batch_index: i32, kind: RecordErrorKind, message: String) -> RecordError {
        RecordError {
            batch_index,
            kind,
            message,
        }
    }
}

impl From<BatchError> for Error {
    fn from(e: BatchError) -> Self {
        Error::CorruptMessage(e.to_string())
    }
}

/// What a transaction coordinator answers when a transition is refused.
impl crate::txn::metadata::TxnError {
    pub fn response_error(&self) -> ResponseError {
        use crate::txn::metadata::TxnError;
        match self {
            TxnError::ProducerFenced { .. } => ResponseError::ProducerFenced,
            TxnError::InvalidProducerIdMapping { .. } => ResponseError::InvalidProducerIdMapping,
            TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
            TxnError::InvalidTxnState => ResponseError::InvalidTxnState,
            TxnError::InvalidTransactionTimeout(_) => ResponseError::InvalidTransactionTimeout,
        }
    }
}

/// PRODUCER_FENCED is known to clients from the request versions of KIP-588
/// (`fenced_from`); older ones are told INVALID_PRODUCER_EPOCH, as Kafka does.
pub fn fenced_for_version(e: ResponseError, version: i16, fenced_from: i16) -> ResponseError {
    if e == ResponseError::ProducerFenced && version < fenced_from {
        ResponseError::InvalidProducerEpoch
    } else {
        e
    }
}

/// A group or offset record whose strings do not fit Kafka's record format.
impl From<crate::group::records::StringTooLong> for Error {
    fn from(e: crate::group::records::StringTooLong) -> Self {
        Error::InvalidRequest(e.to_string())
    }
}

impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Self {
        Error::InvalidConfig(e.to_string())
    }
}

impl Error {
    /// The Kafka error this maps to on the wire.
    pub fn response_error(&self) -> ResponseError {
        match self {
            Error::CorruptMessage(_) => ResponseError::CorruptMessage,
            Error::TxnVerification(e) => *e,
            Error::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
            Error::InvalidRecord(_) => ResponseError::InvalidRecord,
            // Kafka answers INVALID_TIMESTAMP when any record's timestamp is at fault.
            Error::InvalidRecords(errors) if errors.iter().any(|e| e.kind == RecordErrorKind::InvalidTimestamp) => {
                ResponseError::InvalidTimestamp
            }
            Error::InvalidRecords(_) => ResponseError::InvalidRecord,
            Error::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            Error::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
            Error::UnknownTopicId => ResponseError::UnknownTopicId,
            Error::InvalidTopic(_) => ResponseError::InvalidTopicException,
            Error::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
            Error::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            Error::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            Error::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            Error::NotController(_) => ResponseError::NotController,
            Error::FencedLeaderEpoch(_) => ResponseError::FencedLeaderEpoch,
            Error::UnknownLeaderEpoch(_) => ResponseError::UnknownLeaderEpoch,
            Error::InvalidUpdateVersion(_) => ResponseError::InvalidUpdateVersion,
            Error::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
            Error::NoReassignmentInProgress(_) => ResponseError::NoReassignmentInProgress,
            Error::InvalidConfig(_) => ResponseError::InvalidConfig,
            Error::InvalidRequest(_) => ResponseError::InvalidRequest,
            Error::InvalidRequiredAcks(_) => ResponseError::InvalidRequiredAcks,
            Error::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
            Error::RequestTimedOut => ResponseError::RequestTimedOut,
            Error::NotEnoughReplicasAfterAppend => ResponseError::NotEnoughReplicasAfterAppend,
            Error::Sequence(SequenceError::InvalidProducerEpoch { .. }) => ResponseError::InvalidProducerEpoch,
            Error::Sequence(SequenceError::OutOfOrderSequence { .. }) => ResponseError::OutOfOrderSequenceNumber,
            Error::Sequence(SequenceError::CoordinatorFenced { .. }) => ResponseError::TransactionCoordinatorFenced,
            Error::Storage(_) => ResponseError::KafkaStorageError,
        }
    }

    pub fn code(&self) -> i16 {
        self.response_error().code()
    }

    /// What a group coordinator answers when its write to `__consumer_offsets`
    /// fails, as Kafka maps it: a retriable coordinator error, so clients back
    /// off or rediscover the coordinator instead of failing for good.
    pub fn coordinator_write_error(&self) -> ResponseError {
        match self {
            Error::NotEnoughReplicas { .. } | Error::UnknownTopicOrPartition => ResponseError::CoordinatorNotAvailable,
            // The partition moved to another broker: the client finds the new coordinator.
            Error::Storage(_) | Error::NotLeaderOrFollower => ResponseError::NotCoordinator,
            Error::MessageTooLarge { .. } => ResponseError::InvalidCommitOffsetSize,
            other => other.response_error(),
        }
    }

    /// gRPC status for the admin API.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            Error::UnknownTopicOrPartition | Error::UnknownTopicId => Code::NotFound,
            Error::TopicAlreadyExists(_) => Code::AlreadyExists,
            Error::Storage(_) => Code::Internal,
            Error::NotEnoughReplicas { .. } => Code::Unavailable,
            Error::InvalidPartitions(_)
            | Error::InvalidReplicationFactor(_)
            | Error::InvalidReplicaAssignment(_)
            | Error::NoReassignmentInProgress(_) => Code::FailedPrecondition,
            _ => Code::InvalidArgument,
        };
        tonic::Status::new(code, self.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
