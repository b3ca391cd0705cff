//! DeleteRecords: move partitions' log start offsets forward; the answer
//! waits until each partition's in-sync replicas have deleted as well.

use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::Apis;

pub async fn delete_records(apis: &Apis, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(request.timeout_ms.max(0) as u64);
    // Every partition deletes first, then the waits overlap under one
    // deadline, as in Kafka's single delayed operation per request.
    let pending: Vec<(_, Vec<_>)> = request
        .topics
        .into_iter()
        .map(|topic| {
            let deletes = topic
                .partitions
                .iter()
                .map(|p| {
                    let delete = apis
                        .replicas
                        .delete_records(topic.name.as_str(), p.partition_index, p.offset);
                    (p.partition_index, delete)
                })
                .collect();
            (topic.name, deletes)
        })
        .collect();
    let mut topics = Vec::with_capacity(pending.len());
    for (name, deletes) in pending {
        let mut partitions = Vec::with_capacity(deletes.len());
        for (index, delete) in deletes {
            let result = DeleteRecordsPartitionResult::default().with_partition_index(index);
            partitions.push(match delete {
                Ok(delayed) => match delayed.wait(deadline).await {
                    Ok(low) => result.with_low_watermark(low),
                    Err(e) => result.with_low_watermark(-1).with_error_code(e.code()),
                },
                Err(e) => result.with_low_watermark(-1).with_error_code(e.code()),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
