//! ListOffsets: earliest, latest, max timestamp, or the first offset at or
//! after a timestamp (through the time index).

use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::Apis;
use crate::replica::partition::LATEST_TIMESTAMP;

/// Kafka's IsolationLevel READ_COMMITTED (ListOffsets and Fetch).
pub const READ_COMMITTED: i8 = 1;

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
                            // read_committed consumers' latest is the last stable offset.
                            let (offset, timestamp) = match p.timestamp {
                                LATEST_TIMESTAMP if request.isolation_level == READ_COMMITTED => {
                                    (part.last_stable_offset(), -1)
                                }
                                ts => part.offset_for(ts)?,
                            };
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
