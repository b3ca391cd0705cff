//! CreateTopics, DeleteTopics and CreatePartitions.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, TopicName,
};

use super::configs::topic_entries;
use super::{str, Apis};
use crate::error::Error;

pub async fn create_topics(apis: &Apis, request: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.name.as_str().to_string())
        .filter(|n| !seen.insert(n.clone()))
        .collect();
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let result = CreatableTopicResult::default().with_name(t.name.clone());
        let result = if duplicates.contains(t.name.as_str()) {
            result
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(str(format!(
                    "topic '{}' appears more than once in the request",
                    t.name.as_str()
                ))))
        } else {
            create_one(apis, t, result, request.validate_only, version).await
        };
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn create_one(
    apis: &Apis,
    t: CreatableTopic,
    result: CreatableTopicResult,
    validate_only: bool,
    version: i16,
) -> CreatableTopicResult {
    let name = t.name.as_str().to_string();
    // Replicas named by the client, partition by partition (checked by the controller).
    let assignments = if t.assignments.is_empty() {
        None
    } else {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return failed(
                result,
                Error::InvalidRequest("assignments given with partitions or replication factor".into()),
            );
        }
        let mut by_partition: Vec<_> = t.assignments.iter().collect();
        by_partition.sort_by_key(|a| a.partition_index);
        if by_partition
            .iter()
            .enumerate()
            .any(|(i, a)| a.partition_index != i as i32)
        {
            return failed(
                result,
                Error::InvalidReplicaAssignment("partitions must be numbered 0..n without gaps".into()),
            );
        }
        Some(
            by_partition
                .iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect(),
        )
    };
    let configs: BTreeMap<String, String> = t
        .configs
        .into_iter()
        .filter_map(|c| c.value.map(|v| (c.name.as_str().to_string(), v.as_str().to_string())))
        .collect();
    let created = apis
        .controller
        .create_topic(
            &name,
            t.num_partitions,
            t.replication_factor,
            configs,
            assignments,
            validate_only,
        )
        .await;
    let topic = match created {
        Ok(topic) => topic,
        Err(e) => return failed(result, e),
    };
    if !validate_only {
        tracing::info!(topic = %name, partitions = topic.partitions, "created topic");
    }
    let configs = topic_entries(apis, &topic.configs)
        .into_iter()
        .map(|e| {
            CreatableTopicConfigs::default()
                .with_name(str(e.name))
                .with_value(Some(str(e.value)))
                .with_config_source(e.source)
        })
        .collect();
    let result = if version >= 7 && !validate_only {
        result.with_topic_id(topic.id)
    } else {
        result
    };
    if version >= 5 {
        result
            .with_num_partitions(topic.partitions)
            .with_replication_factor(topic.replication_factor)
            .with_configs(Some(configs))
    } else {
        result
    }
}

fn failed(result: CreatableTopicResult, e: Error) -> CreatableTopicResult {
    result
        .with_error_code(e.code())
        .with_error_message(Some(str(e.to_string())))
}

pub async fn delete_topics(apis: &Apis, request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let image = apis.controller.image();
    // v6 names topics by name or id; older versions by name.
    let targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| match &t.name {
                Some(n) => (Some(n.as_str().to_string()), t.topic_id),
                None => (image.topic_by_id(t.topic_id).map(|x| x.name.clone()), t.topic_id),
            })
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.as_str().to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let result = DeletableTopicResult::default().with_topic_id(id);
        let Some(name) = name else {
            responses.push(result.with_error_code(ResponseError::UnknownTopicId.code()));
            continue;
        };
        let result = result.with_name(Some(TopicName(str(name.clone()))));
        responses.push(match apis.controller.delete_topic(&name).await {
            Ok(topic) => {
                tracing::info!(topic = %name, "deleted topic");
                if version >= 6 {
                    result.with_topic_id(topic.id)
                } else {
                    result
                }
            }
            Err(e) => result
                .with_error_code(e.code())
                .with_error_message((version >= 5).then(|| str(e.to_string()))),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(apis: &Apis, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let assignments = t
            .assignments
            .as_ref()
            .map(|a| a.iter().map(|p| p.broker_ids.iter().map(|id| id.0).collect()).collect());
        let grown = apis
            .controller
            .create_partitions(t.name.as_str(), t.count, assignments, request.validate_only)
            .await;
        results.push(match grown {
            Ok(()) => result,
            Err(e) => result
                .with_error_code(e.code())
                .with_error_message(Some(str(e.to_string()))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}
