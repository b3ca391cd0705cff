//! Request handlers, one file per API family: each turns a decoded request
//! into calls on the controller and replica manager and builds the response.

mod api_versions;
mod authorized;
mod cluster;
mod configs;
mod coordinator;
mod elect_leaders;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod offsets_for_leader_epoch;
mod produce;
mod producer_id;
mod reassignments;
mod records;
mod topics;
mod txn;
mod txn_markers;

use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use crate::config::BrokerConfig;
use crate::context::BrokerContext;
use crate::metrics::Metrics;
use crate::network::zero_copy::FileRecords;

pub use produce::Appended as ProduceAppended;

/// The APIs this broker answers and the version ranges it implements.
/// Each range is intersected with what the codec crate supports.
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 0, 4),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::WriteTxnMarkers, 0, 1),
    // Transactions as clients use them before KIP-890 part 2 (transaction
    // version 2): AddPartitionsToTxn v4 is broker-to-broker (a partition
    // leader's verification, KIP-890 part 1; clients stay at v3), EndTxn v5
    // and TxnOffsetCommit v5 are transaction version 2.
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
];

/// librdkafka up to 2.11 decides whether gzip, snappy and lz4 may be used by
/// asking whether the broker supports Produce v0, so Produce is advertised
/// from v0 like Kafka 4.0 does, while requests below v3 (message formats 0
/// and 1) are still refused.
const PRODUCE_ADVERTISED_MIN: i16 = 0;

/// The Kafka API handlers over the broker's shared state.
pub struct Apis {
    ctx: Arc<BrokerContext>,
}

impl std::ops::Deref for Apis {
    type Target = BrokerContext;
    fn deref(&self) -> &BrokerContext {
        &self.ctx
    }
}

/// KIP-951: with a NOT_LEADER_OR_FOLLOWER answer (`code`), the partition's
/// current leader and leader epoch, so clients go there without a Metadata
/// round trip; a known leader joins `hinted`, the response's node endpoints.
pub(crate) fn leader_hint(
    image: &crate::controller::MetadataImage,
    topic: &str,
    partition: i32,
    code: i16,
    hinted: &mut std::collections::BTreeSet<i32>,
) -> Option<(i32, i32)> {
    if code != kafka_protocol::error::ResponseError::NotLeaderOrFollower.code() {
        return None;
    }
    let state = image.topics.get(topic)?.state(partition)?;
    if state.leader >= 0 {
        hinted.insert(state.leader);
    }
    Some((state.leader, state.leader_epoch))
}

/// The listener of each broker named in leader hints (KIP-951 NodeEndpoints).
pub(crate) fn hinted_endpoints(
    image: &crate::controller::MetadataImage,
    leaders: &std::collections::BTreeSet<i32>,
) -> Vec<(i32, String, i32, Option<String>)> {
    leaders
        .iter()
        .filter_map(|id| image.brokers.get(id))
        .map(|b| {
            (
                b.id,
                b.host.clone(),
                b.port,
                (!b.rack.is_empty()).then(|| b.rack.clone()),
            )
        })
        .collect()
}

pub fn str(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The network layer's handler: requests it parsed are answered here.
impl crate::network::handler::RequestHandler for Apis {
    type Produce = ProduceAppended;

    fn config(&self) -> &BrokerConfig {
        &self.ctx.config
    }

    fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    fn supports(&self, api_key: ApiKey, version: i16) -> bool {
        Self::supported_versions().any(|(k, min, max)| k == api_key && (min..=max).contains(&version))
    }

    fn api_versions_fallback(&self) -> ResponseKind {
        ResponseKind::ApiVersions(api_versions::unsupported_version_response())
    }

    fn begin_produce(
        &self,
        request: kafka_protocol::messages::ProduceRequest,
        version: i16,
    ) -> impl std::future::Future<Output = ProduceAppended> + Send {
        produce::append(self, request, version)
    }

    fn handle(
        &self,
        header: &RequestHeader,
        request: RequestKind,
        client_host: &str,
    ) -> impl std::future::Future<Output = Option<(ResponseKind, FileRecords)>> + Send {
        self.answer(header, request, client_host)
    }
}

impl Apis {
    pub fn new(ctx: Arc<BrokerContext>) -> Apis {
        Apis { ctx }
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    pub fn supported_versions() -> impl Iterator<Item = (ApiKey, i16, i16)> {
        SUPPORTED.iter().map(|&(key, min, max)| {
            let codec = key.valid_versions();
            (key, min.max(codec.min), max.min(codec.max))
        })
    }

    /// The ranges sent in ApiVersions.
    pub fn advertised_versions() -> impl Iterator<Item = (ApiKey, i16, i16)> {
        Self::supported_versions().map(|(key, min, max)| {
            if key == ApiKey::Produce {
                (key, PRODUCE_ADVERTISED_MIN, max)
            } else {
                (key, min, max)
            }
        })
    }

    /// Dispatches by API key. `None` means no response is sent (acks=0
    /// produce). Fetch responses come with the file regions behind their record sets.
    async fn answer(
        &self,
        header: &RequestHeader,
        request: RequestKind,
        client_host: &str,
    ) -> Option<(ResponseKind, FileRecords)> {
        let version = header.request_api_version;
        let client_id = header.client_id.as_ref().map(|c| c.as_str()).unwrap_or_default();
        if let RequestKind::Fetch(r) = request {
            let (response, files) = fetch::handle(self, r, version).await;
            return Some((ResponseKind::Fetch(response), files));
        }
        let response = match request {
            RequestKind::ApiVersions(r) => ResponseKind::ApiVersions(api_versions::handle(r)),
            RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::handle(self, r, version).await),
            RequestKind::Produce(r) => ResponseKind::Produce(produce::handle(self, r, version).await?),
            RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(list_offsets::handle(self, r, version)),
            RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(topics::create_topics(self, r, version).await),
            RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(topics::delete_topics(self, r, version).await),
            RequestKind::CreatePartitions(r) => {
                ResponseKind::CreatePartitions(topics::create_partitions(self, r).await)
            }
            RequestKind::DeleteRecords(r) => ResponseKind::DeleteRecords(records::delete_records(self, r).await),
            RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(producer_id::handle(self, r, version).await),
            RequestKind::AddPartitionsToTxn(r) => {
                ResponseKind::AddPartitionsToTxn(txn::add_partitions(self, r, version).await)
            }
            RequestKind::AddOffsetsToTxn(r) => ResponseKind::AddOffsetsToTxn(txn::add_offsets(self, r, version).await),
            RequestKind::EndTxn(r) => ResponseKind::EndTxn(txn::end(self, r, version).await),
            RequestKind::TxnOffsetCommit(r) => {
                ResponseKind::TxnOffsetCommit(txn::offset_commit(self, r, version).await)
            }
            RequestKind::DescribeTransactions(r) => ResponseKind::DescribeTransactions(txn::describe(self, r)),
            RequestKind::ListTransactions(r) => ResponseKind::ListTransactions(txn::list(self, r)),
            RequestKind::DescribeProducers(r) => ResponseKind::DescribeProducers(txn::describe_producers(self, r)),
            RequestKind::WriteTxnMarkers(r) => ResponseKind::WriteTxnMarkers(txn_markers::handle(self, r).await),
            RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(configs::describe(self, r, version)),
            RequestKind::IncrementalAlterConfigs(r) => {
                ResponseKind::IncrementalAlterConfigs(configs::incremental_alter(self, r).await)
            }
            RequestKind::DescribeCluster(r) => ResponseKind::DescribeCluster(cluster::describe(self, r)),
            RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(coordinator::find(self, r, version).await),
            RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(configs::alter(self, r).await),
            RequestKind::JoinGroup(r) => {
                ResponseKind::JoinGroup(groups::join(self, r, version, client_host, client_id).await)
            }
            RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync(self, r, version).await),
            RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(self, r)),
            RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(groups::leave(self, r, version)),
            RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(groups::offset_commit(self, r, version).await),
            RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(groups::offset_fetch(self, r, version)),
            RequestKind::ListGroups(r) => ResponseKind::ListGroups(groups::list(self, r, version)),
            RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(groups::describe(self, r, version)),
            RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(groups::delete(self, r)),
            RequestKind::OffsetDelete(r) => ResponseKind::OffsetDelete(groups::offset_delete(self, r)),
            RequestKind::ElectLeaders(r) => ResponseKind::ElectLeaders(elect_leaders::handle(self, r).await),
            RequestKind::AlterPartitionReassignments(r) => {
                ResponseKind::AlterPartitionReassignments(reassignments::alter(self, r, version).await)
            }
            RequestKind::ListPartitionReassignments(r) => {
                ResponseKind::ListPartitionReassignments(reassignments::list(self, r))
            }
            RequestKind::OffsetForLeaderEpoch(r) => {
                ResponseKind::OffsetForLeaderEpoch(offsets_for_leader_epoch::handle(self, r))
            }
            other => {
                // Unreachable: parse_request refuses APIs we do not advertise.
                tracing::warn!(request = ?std::mem::discriminant(&other), "no handler for request");
                return None;
            }
        };
        Some((response, FileRecords::default()))
    }
}
