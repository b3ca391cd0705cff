//! DeleteRecords: move partitions' log start offsets forward.

use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::Apis;

pub fn delete_records(apis: &Apis, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let result = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
                    match apis
                        .replicas
                        .get(topic.name.as_str(), p.partition_index)
                        .and_then(|part| part.delete_records_before(p.offset))
                    {
                        Ok(low) => result.with_low_watermark(low),
                        Err(e) => result.with_low_watermark(-1).with_error_code(e.code()),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
