//! CreateTopics, DeleteTopics and CreatePartitions.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, TopicName,
};

use super::configs::topic_entries;
use super::{str, Apis};
use crate::error::Error;

pub fn create_topics(apis: &Apis, request: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.name.as_str().to_string())
        .filter(|n| !seen.insert(n.clone()))
        .collect();
    let node = apis.node_id();
    let results = request
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.as_str().to_string();
            let result = CreatableTopicResult::default().with_name(t.name.clone());
            if duplicates.contains(&name) {
                return result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str(format!(
                        "topic '{name}' appears more than once in the request"
                    ))));
            }
            // Manual assignments may only name this broker, one replica each.
            let mut partitions = t.num_partitions;
            let mut replication = t.replication_factor;
            if !t.assignments.is_empty() {
                if t.num_partitions != -1 || t.replication_factor != -1 {
                    return failed(
                        result,
                        Error::InvalidRequest("assignments given with partitions or replication factor".into()),
                    );
                }
                if t.assignments
                    .iter()
                    .any(|a| a.broker_ids.len() != 1 || a.broker_ids[0].0 != node)
                {
                    return failed(
                        result,
                        Error::InvalidReplicationFactor(format!("replicas must be [{node}]")),
                    );
                }
                partitions = t.assignments.len() as i32;
                replication = 1;
            }
            let configs: BTreeMap<String, String> = t
                .configs
                .into_iter()
                .filter_map(|c| c.value.map(|v| (c.name.as_str().to_string(), v.as_str().to_string())))
                .collect();
            match apis
                .controller
                .create_topic(&name, partitions, replication, configs, request.validate_only)
            {
                Ok(topic) => {
                    if !request.validate_only {
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
                    let result = if version >= 7 && !request.validate_only {
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
                Err(e) => failed(result, e),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(results)
}

fn failed(result: CreatableTopicResult, e: Error) -> CreatableTopicResult {
    result
        .with_error_code(e.code())
        .with_error_message(Some(str(e.to_string())))
}

pub fn delete_topics(apis: &Apis, request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
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
    let responses = targets
        .into_iter()
        .map(|(name, id)| {
            let result = DeletableTopicResult::default().with_topic_id(id);
            let Some(name) = name else {
                return result.with_error_code(ResponseError::UnknownTopicId.code());
            };
            let result = result.with_name(Some(TopicName(str(name.clone()))));
            match apis.controller.delete_topic(&name) {
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
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub fn create_partitions(apis: &Apis, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let results = request
        .topics
        .into_iter()
        .map(|t| {
            let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            match apis
                .controller
                .create_partitions(t.name.as_str(), t.count, request.validate_only)
            {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(e.code())
                    .with_error_message(Some(str(e.to_string()))),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
