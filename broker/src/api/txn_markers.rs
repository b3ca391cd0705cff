//! WriteTxnMarkers: a transaction coordinator ends a transaction in the
//! partitions this broker leads by writing its commit or abort marker there.
//! Each marker is written as acks=all (Kafka's coordinator appends them with
//! requiredAcks -1), so a partition answers once the marker is replicated to
//! its ISR and the last stable offset can pass it.

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use super::Apis;
use crate::error::Error;
use crate::log::marker::Marker;

pub async fn handle(apis: &Apis, request: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    let mut markers = Vec::with_capacity(request.markers.len());
    for m in request.markers {
        let marker = if m.transaction_result {
            Marker::Commit
        } else {
            Marker::Abort
        };
        let mut topics = Vec::with_capacity(m.topics.len());
        for t in m.topics {
            let mut partitions = Vec::with_capacity(t.partition_indexes.len());
            for p in t.partition_indexes {
                let result = write(
                    apis,
                    t.name.as_str(),
                    p,
                    m.producer_id.0,
                    m.producer_epoch,
                    m.coordinator_epoch,
                    marker,
                )
                .await;
                if let Err(e) = &result {
                    tracing::info!(topic = %t.name.as_str(), partition = p, producer_id = m.producer_id.0, error = %e, "transaction marker not written");
                }
                partitions.push(
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(p)
                        .with_error_code(result.err().map_or(0, |e| e.code())),
                );
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}

async fn write(
    apis: &Apis,
    topic: &str,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    marker: Marker,
) -> Result<(), Error> {
    crate::txn::markers::write_local(
        &apis.replicas,
        &apis.groups,
        topic,
        partition,
        producer_id,
        producer_epoch,
        coordinator_epoch,
        marker,
    )
    .await
    .map(|_| ())
}
