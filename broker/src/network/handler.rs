//! What the network layer needs of whoever answers requests: it frames,
//! parses and orders them; the handler (the API layer, `api::Apis`)
//! answers. So the network depends on this trait, not on the API module.

use std::future::Future;

use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, RequestHeader, RequestKind, ResponseKind};

use super::zero_copy::FileRecords;
use crate::config::BrokerConfig;
use crate::metrics::Metrics;

pub trait RequestHandler: Send + Sync + 'static {
    /// A produce appended in the connection's order whose answer may wait.
    type Produce: DelayedAnswer;

    fn config(&self) -> &BrokerConfig;

    fn metrics(&self) -> &Metrics;

    /// Whether `api_key` is answered at `version`.
    fn supports(&self, api_key: ApiKey, version: i16) -> bool;

    /// The ApiVersions v0 answer to a client that asked in a newer version.
    fn api_versions_fallback(&self) -> ResponseKind;

    /// Appends a Produce request, in the connection's request order (the
    /// next request is read once this is done).
    fn begin_produce(
        &self,
        request: ProduceRequest,
        version: i16,
    ) -> impl std::future::Future<Output = Self::Produce> + Send;

    /// Answers any other request (`None`: no answer is sent). Fetch answers
    /// come with the file regions behind their record sets.
    fn handle(
        &self,
        header: &RequestHeader,
        request: RequestKind,
        client_host: &str,
    ) -> impl Future<Output = Option<(ResponseKind, FileRecords)>> + Send;
}

/// A produce's answer, ready now or once durable and replicated.
pub trait DelayedAnswer: Send + 'static {
    fn is_ready(&self) -> bool;

    /// `None`: acks=0, no answer.
    fn complete(self) -> impl Future<Output = Option<ProduceResponse>> + Send;
}
