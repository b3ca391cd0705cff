//! OffsetsForLeaderEpoch (KIP-101/279/320): where a leader epoch ends in the
//! leader's log. A consumer that resumes after a leader change asks for the
//! epoch of its last consumed record and learns whether the log it read was
//! truncated below its position.

use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::Apis;

pub fn handle(apis: &Apis, request: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = EpochEndOffset::default().with_partition(p.partition);
                    let result = apis.replicas.get(topic.topic.as_str(), p.partition).and_then(|part| {
                        part.check_leader_epoch(p.current_leader_epoch)?;
                        Ok(part.end_offset_for_epoch(p.leader_epoch))
                    });
                    match result {
                        Ok((epoch, end_offset)) => answer.with_leader_epoch(epoch).with_end_offset(end_offset),
                        Err(e) => answer
                            .with_error_code(e.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
