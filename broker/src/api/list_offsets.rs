//! ListOffsets: earliest, latest, max timestamp, or the first offset at or
//! after a timestamp (through the time index).

use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::Apis;
use crate::error::Result;
use crate::replica::Partition;

pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;
pub const EARLIEST_LOCAL: i64 = -4;
pub const LATEST_TIERED: i64 = -5;

/// (offset, timestamp) answering one partition's query.
pub fn lookup(part: &Partition, timestamp: i64) -> Result<(i64, i64)> {
    Ok(match timestamp {
        LATEST => (part.high_watermark(), -1),
        EARLIEST | EARLIEST_LOCAL => (part.log_start_offset(), -1),
        // Nothing is tiered: the latest tiered offset is just below the log start.
        LATEST_TIERED => (part.log_start_offset() - 1, -1),
        MAX_TIMESTAMP => part.max_timestamp_offset()?,
        ts => part.offset_for_timestamp(ts)?.unwrap_or((-1, -1)),
    })
}

pub fn handle(apis: &Apis, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
                    let result = apis
                        .replicas
                        .get(topic.name.as_str(), p.partition_index)
                        .and_then(|part| {
                            part.check_leader_epoch(p.current_leader_epoch)?;
                            let (offset, timestamp) = lookup(&part, p.timestamp)?;
                            Ok((offset, timestamp, part.leader_epoch()))
                        });
                    match result {
                        Ok((offset, timestamp, epoch)) => response
                            .with_offset(offset)
                            .with_timestamp(timestamp)
                            // Leader epochs exist on the wire from v4.
                            .with_leader_epoch(if offset >= 0 && version >= 4 { epoch } else { -1 }),
                        Err(e) => response.with_error_code(e.code()).with_offset(-1).with_timestamp(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
