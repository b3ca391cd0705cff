//! Request handlers, one file per API family: each turns a decoded request
//! into calls on the controller and replica manager and builds the response.

mod api_versions;
mod cluster;
mod configs;
mod coordinator;
mod fetch;
mod list_offsets;
mod metadata;
mod produce;
mod producer_id;
mod records;
mod topics;

use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use crate::broker::BrokerContext;
use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::network::zero_copy::FileRecords;

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

pub fn str(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

impl Apis {
    pub fn new(ctx: Arc<BrokerContext>) -> Apis {
        Apis { ctx }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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

    pub fn supports(&self, api_key: ApiKey, version: i16) -> bool {
        Self::supported_versions().any(|(k, min, max)| k == api_key && (min..=max).contains(&version))
    }

    pub fn api_versions_fallback(&self) -> ResponseKind {
        ResponseKind::ApiVersions(api_versions::unsupported_version_response())
    }

    /// Dispatches by API key. `None` means no response is sent (acks=0
    /// produce). Fetch responses come with the file regions behind their record sets.
    pub async fn handle(&self, header: &RequestHeader, request: RequestKind) -> Option<(ResponseKind, FileRecords)> {
        let version = header.request_api_version;
        if let RequestKind::Fetch(r) = request {
            let (response, files) = fetch::handle(self, r, version).await;
            return Some((ResponseKind::Fetch(response), files));
        }
        let response = match request {
            RequestKind::ApiVersions(r) => ResponseKind::ApiVersions(api_versions::handle(r)),
            RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::handle(self, r, version)),
            RequestKind::Produce(r) => ResponseKind::Produce(produce::handle(self, r, version)?),
            RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(list_offsets::handle(self, r, version)),
            RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(topics::create_topics(self, r, version)),
            RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(topics::delete_topics(self, r, version)),
            RequestKind::CreatePartitions(r) => ResponseKind::CreatePartitions(topics::create_partitions(self, r)),
            RequestKind::DeleteRecords(r) => ResponseKind::DeleteRecords(records::delete_records(self, r)),
            RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(producer_id::handle(self, r)),
            RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(configs::describe(self, r, version)),
            RequestKind::IncrementalAlterConfigs(r) => {
                ResponseKind::IncrementalAlterConfigs(configs::incremental_alter(self, r))
            }
            RequestKind::DescribeCluster(r) => ResponseKind::DescribeCluster(cluster::describe(self, r)),
            RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(coordinator::find(self, r, version)),
            RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(configs::alter(self, r)),
            other => {
                // Unreachable: parse_request refuses APIs we do not advertise.
                tracing::warn!(request = ?std::mem::discriminant(&other), "no handler for request");
                return None;
            }
        };
        Some((response, FileRecords::default()))
    }
}
