//! Fetch: whole batches up to the high watermark, long-polled on
//! `max.wait.ms` / `min.bytes`, limited by `fetch.max.bytes` and
//! `max.partition.fetch.bytes` (the first non-empty partition always gets at
//! least one batch, KIP-74, so large records are never stuck).

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::list_offsets::READ_COMMITTED;
use super::{str, Apis};
use crate::error::Error;
use crate::network::zero_copy::FileRecords;
use crate::replica::fetch::{PartitionFetch, PartitionRead};

pub async fn handle(apis: &Apis, request: FetchRequest, version: i16) -> (FetchResponse, FileRecords) {
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let deadline = Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    // A delayed fetch (Kafka's purgatory, by key): woken only by the
    // partitions it reads, registered with each before it is read so that
    // nothing arriving in between is missed.
    let waker = Arc::new(Notify::new());
    loop {
        let (response, files, bytes, errors) = read_all(apis, &request, version, Some(&waker));
        if bytes >= min_bytes.max(1) || errors || Instant::now() >= deadline {
            return answer(apis, response, files);
        }
        if tokio::time::timeout_at(deadline, waker.notified()).await.is_err() {
            // Timed out: one last read so data that just arrived is not left behind.
            let (response, files, _, _) = read_all(apis, &request, version, None);
            return answer(apis, response, files);
        }
    }
}

/// The response as it leaves: regions evicted from the page cache (a
/// consumer far behind, a replica catching up) are read back in off the
/// async workers first, so that its encoding and sendfile never wait on
/// the disk there.
fn answer(apis: &Apis, response: FetchResponse, files: FileRecords) -> (FetchResponse, FileRecords) {
    files.load_evicted();
    account(apis, &response);
    (response, files)
}

fn read_all(
    apis: &Apis,
    request: &FetchRequest,
    version: i16,
    waker: Option<&Arc<Notify>>,
) -> (FetchResponse, FileRecords, usize, bool) {
    let mut files = FileRecords::default();
    let image = apis.controller.image();
    let mut remaining = (request.max_bytes.max(0) as usize).min(apis.config.fetch_max_bytes.max(0) as usize);
    let mut total = 0usize;
    let mut errors = false;
    let mut hinted = std::collections::BTreeSet::new();
    let mut responses = Vec::with_capacity(request.topics.len());
    // A follower's fetch (replica id set): it reads up to the log end offset,
    // and its fetch offset tells the leader how far its log is.
    let replica = if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    let now = crate::log::segment::now_ms();
    for topic in &request.topics {
        // v13+ names topics by id.
        let name: Option<String> = if version >= 13 {
            image.topic_by_id(topic.topic_id).map(|t| t.name.clone())
        } else {
            Some(topic.topic.as_str().to_string())
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let data = PartitionData::default()
                .with_partition_index(p.partition)
                .with_preferred_read_replica(BrokerId(-1))
                .with_aborted_transactions((request.isolation_level == READ_COMMITTED).then(Vec::new));
            let ask = PartitionFetch {
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                current_leader_epoch: p.current_leader_epoch,
                last_fetched_epoch: p.last_fetched_epoch,
                log_start_offset: p.log_start_offset,
                max_bytes: (p.partition_max_bytes.max(0) as usize).min(remaining),
                read_committed: request.isolation_level == READ_COMMITTED,
            };
            let result = match &name {
                None => Err(Error::UnknownTopicId),
                Some(name) => apis
                    .replicas
                    .read_for_fetch(replica, name, &ask, total == 0, waker, now),
            };
            let data = match result {
                Ok(PartitionRead::Diverging {
                    epoch,
                    end_offset,
                    high_watermark,
                }) => {
                    // Answered at once: the follower must cut its log before fetching on.
                    errors = true;
                    data.with_high_watermark(high_watermark)
                        .with_last_stable_offset(high_watermark)
                        .with_diverging_epoch(EpochEndOffset::default().with_epoch(epoch).with_end_offset(end_offset))
                        .with_records(Some(bytes::Bytes::new()))
                }
                Ok(PartitionRead::Records {
                    info,
                    high_watermark: hw,
                    last_stable_offset,
                    aborted,
                    news,
                }) => {
                    errors |= news;
                    let len = info.slice.as_ref().map_or(0, |s| s.len);
                    // A placeholder the encoder swaps for the file region; read it when none is left.
                    let records = match info.slice {
                        Some(slice) if len > 0 => match files.hold(slice.clone()) {
                            Some(placeholder) => Ok(placeholder),
                            None => slice.read(),
                        },
                        _ => Ok(bytes::Bytes::new()),
                    };
                    match records {
                        Ok(records) => {
                            total += len;
                            remaining = remaining.saturating_sub(len);
                            let aborted = (request.isolation_level == READ_COMMITTED).then(|| {
                                aborted
                                    .iter()
                                    .map(|a| {
                                        AbortedTransaction::default()
                                            .with_producer_id(ProducerId(a.producer_id))
                                            .with_first_offset(a.first_offset)
                                    })
                                    .collect()
                            });
                            data.with_high_watermark(hw)
                                .with_last_stable_offset(last_stable_offset)
                                .with_aborted_transactions(aborted)
                                .with_log_start_offset(if version >= 5 { info.log_start_offset } else { -1 })
                                .with_records(Some(records))
                        }
                        Err(e) => {
                            errors = true;
                            data.with_error_code(Error::Storage(e).code())
                                .with_records(Some(bytes::Bytes::new()))
                        }
                    }
                }
                Err(e) => {
                    errors = true;
                    let (hw, start) = match &e {
                        Error::OffsetOutOfRange { start, end, .. } => (*end, *start),
                        _ => (-1, -1),
                    };
                    let code = e.code();
                    let data = data
                        .with_error_code(code)
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(if version >= 5 { start } else { -1 })
                        // Kafka sends an empty record set, never null: librdkafka rejects -1.
                        .with_records(Some(bytes::Bytes::new()));
                    // KIP-951: where the leader is now.
                    let hint = name
                        .as_deref()
                        .filter(|_| version >= 12)
                        .and_then(|n| super::leader_hint(&image, n, p.partition, code, &mut hinted));
                    match hint {
                        Some((leader, epoch)) => data.with_current_leader(
                            LeaderIdAndEpoch::default()
                                .with_leader_id(BrokerId(leader))
                                .with_leader_epoch(epoch),
                        ),
                        _ => data,
                    }
                }
            };
            partitions.push(data);
        }
        let response = FetchableTopicResponse::default().with_partitions(partitions);
        responses.push(if version >= 13 {
            response.with_topic_id(topic.topic_id)
        } else {
            response.with_topic(TopicName(str(topic.topic.as_str())))
        });
    }
    let endpoints = if version >= 16 {
        super::hinted_endpoints(&image, &hinted)
            .into_iter()
            .map(|(id, host, port, rack)| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(id))
                    .with_host(str(host))
                    .with_port(port)
                    .with_rack(rack.map(str))
            })
            .collect()
    } else {
        Vec::new()
    };
    let response = FetchResponse::default()
        .with_responses(responses)
        .with_session_id(0)
        .with_node_endpoints(endpoints);
    (response, files, total, errors)
}

/// Counts bytes served per topic (records are not parsed on the way out).
fn account(apis: &Apis, response: &FetchResponse) {
    let image = apis.controller.image();
    for topic in &response.responses {
        let name = if topic.topic.is_empty() {
            image
                .topic_by_id(topic.topic_id)
                .map(|t| t.name.clone())
                .unwrap_or_default()
        } else {
            topic.topic.as_str().to_string()
        };
        let bytes: u64 = topic
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64))
            .sum();
        if bytes > 0 {
            apis.metrics.bytes_out.with_label_values(&[&name]).inc_by(bytes);
        }
    }
}
