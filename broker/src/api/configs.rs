//! DescribeConfigs and IncrementalAlterConfigs for topics and the broker.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{str, Apis};
use crate::config::{BrokerConfig, LogConfig};
use crate::controller::image::{ConfigOp, OpType, DYNAMIC_BROKER_CONFIGS};
use crate::error::Error;

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// Kafka's ConfigSource codes.
pub const SOURCE_DYNAMIC_TOPIC: i8 = 1;
pub const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

/// One described config with where its value comes from.
pub struct Described {
    pub name: String,
    pub value: String,
    pub source: i8,
    pub read_only: bool,
    pub type_code: i8,
    pub doc: &'static str,
    pub synonyms: Vec<(String, String, i8)>,
}

fn broker_source(
    name: &str,
    broker_overrides: &BTreeMap<String, String>,
    static_config: &BrokerConfig,
) -> Option<(String, i8)> {
    if let Some(v) = broker_overrides.get(name) {
        return Some((v.clone(), SOURCE_DYNAMIC_DEFAULT_BROKER));
    }
    let value = static_config.get(name)?;
    (value != BrokerConfig::default().get(name)?).then_some((value, SOURCE_STATIC_BROKER))
}

/// A topic's effective configs: its overrides, else the broker's, else defaults.
pub fn topic_entries(apis: &Apis, overrides: &BTreeMap<String, String>) -> Vec<Described> {
    let image = apis.controller.image();
    let effective = LogConfig::with_overrides(&apis.controller.effective_broker_config(), overrides)
        .unwrap_or_else(|_| LogConfig::defaults_from(&apis.config));
    effective
        .entries()
        .into_iter()
        .map(|e| {
            let mut synonyms = Vec::new();
            if let Some(v) = overrides.get(e.name) {
                synonyms.push((e.name.to_string(), v.clone(), SOURCE_DYNAMIC_TOPIC));
            }
            let synonym = LogConfig::broker_synonym(e.name);
            if let Some((v, src)) = synonym.and_then(|s| broker_source(s, &image.broker_overrides, &apis.config)) {
                synonyms.push((synonym.unwrap_or_default().to_string(), v, src));
            }
            synonyms.push((e.name.to_string(), e.default.clone(), SOURCE_DEFAULT));
            Described {
                name: e.name.to_string(),
                value: e.value,
                source: synonyms[0].2,
                read_only: false,
                type_code: e.type_code,
                doc: e.doc,
                synonyms,
            }
        })
        .collect()
}

fn broker_entries(apis: &Apis) -> Vec<Described> {
    let image = apis.controller.image();
    apis.controller
        .effective_broker_config()
        .entries()
        .into_iter()
        .map(|e| {
            let (source, synonyms) = match broker_source(e.name, &image.broker_overrides, &apis.config) {
                Some((v, src)) => (src, vec![(e.name.to_string(), v, src)]),
                None => (
                    SOURCE_DEFAULT,
                    vec![(e.name.to_string(), e.default.clone(), SOURCE_DEFAULT)],
                ),
            };
            Described {
                name: e.name.to_string(),
                value: e.value,
                source,
                read_only: !DYNAMIC_BROKER_CONFIGS.contains(&e.name),
                type_code: e.type_code,
                doc: e.doc,
                synonyms,
            }
        })
        .collect()
}

fn is_this_broker(apis: &Apis, name: &str) -> bool {
    name.is_empty() || name == apis.node_id().to_string()
}

pub fn describe(apis: &Apis, request: DescribeConfigsRequest, version: i16) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|r| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let entries = match r.resource_type {
                RESOURCE_TOPIC => match apis.controller.image().topics.get(r.resource_name.as_str()) {
                    Some(t) => Ok(topic_entries(apis, &t.configs)),
                    None => Err(Error::UnknownTopicOrPartition),
                },
                RESOURCE_BROKER if is_this_broker(apis, r.resource_name.as_str()) => Ok(broker_entries(apis)),
                RESOURCE_BROKER => Err(Error::InvalidRequest(format!(
                    "unknown broker '{}'",
                    r.resource_name.as_str()
                ))),
                other => Err(Error::InvalidRequest(format!("unsupported resource type {other}"))),
            };
            let entries = match entries {
                Ok(e) => e,
                Err(e) => {
                    return result
                        .with_error_code(e.code())
                        .with_error_message(Some(str(e.to_string())))
                }
            };
            let keys: Option<Vec<String>> = r
                .configuration_keys
                .map(|k| k.iter().map(|s| s.as_str().to_string()).collect());
            let configs = entries
                .into_iter()
                .filter(|e| keys.as_ref().is_none_or(|k| k.is_empty() || k.contains(&e.name)))
                .map(|e| {
                    let synonyms = if request.include_synonyms {
                        e.synonyms
                            .into_iter()
                            .map(|(n, v, s)| {
                                DescribeConfigsSynonym::default()
                                    .with_name(str(n))
                                    .with_value(Some(str(v)))
                                    .with_source(s)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    DescribeConfigsResourceResult::default()
                        .with_name(str(e.name))
                        .with_value(Some(str(e.value)))
                        .with_read_only(e.read_only)
                        .with_config_source(e.source)
                        .with_config_type(if version >= 3 { e.type_code } else { 0 })
                        .with_documentation(request.include_documentation.then(|| str(e.doc)))
                        .with_synonyms(synonyms)
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Applies config operations to one resource (topic or this broker).
async fn alter_resource(
    apis: &Apis,
    resource_type: i8,
    name: &str,
    ops: &[ConfigOp],
    validate_only: bool,
) -> Result<(), Error> {
    match resource_type {
        RESOURCE_TOPIC => apis.controller.alter_topic_configs(name, ops, validate_only).await,
        RESOURCE_BROKER if is_this_broker(apis, name) => {
            apis.controller
                .alter_broker_configs(ops, name.is_empty(), validate_only)
                .await?;
            for op in ops
                .iter()
                .filter(|op| !DYNAMIC_BROKER_CONFIGS.contains(&op.name.as_str()))
            {
                tracing::info!(config = %op.name, "stored a Kafka broker config that Fjord does not act on yet");
            }
            Ok(())
        }
        _ => Err(Error::InvalidRequest(format!(
            "cannot alter resource type {resource_type} '{name}'"
        ))),
    }
}

fn alter_response(resource_type: i8, name: StrBytes, result: Result<(), Error>) -> AlterConfigsResourceResponse {
    let response = AlterConfigsResourceResponse::default()
        .with_resource_type(resource_type)
        .with_resource_name(name);
    match result {
        Ok(()) => response,
        Err(e) => response
            .with_error_code(e.code())
            .with_error_message(Some(str(e.to_string()))),
    }
}

pub async fn incremental_alter(
    apis: &Apis,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let ops: Result<Vec<ConfigOp>, Error> = r
            .configs
            .iter()
            .map(|c| {
                let op = OpType::from_code(c.config_operation)
                    .ok_or_else(|| Error::InvalidRequest(format!("unknown config operation {}", c.config_operation)))?;
                Ok(ConfigOp {
                    name: c.name.as_str().to_string(),
                    op,
                    value: c.value.as_ref().map(|v| v.as_str().to_string()),
                })
            })
            .collect();
        let result = match ops {
            Ok(ops) => {
                alter_resource(
                    apis,
                    r.resource_type,
                    r.resource_name.as_str(),
                    &ops,
                    request.validate_only,
                )
                .await
            }
            Err(e) => Err(e),
        };
        responses.push(alter_response(r.resource_type, r.resource_name, result));
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// The legacy AlterConfigs replaces a resource's whole set of overrides.
pub async fn alter(apis: &Apis, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let image = apis.controller.image();
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        {
            let name = r.resource_name.as_str();
            let current: Vec<String> = match r.resource_type {
                RESOURCE_TOPIC => image
                    .topics
                    .get(name)
                    .map(|t| t.configs.keys().cloned().collect())
                    .unwrap_or_default(),
                _ => image.broker_overrides.keys().cloned().collect(),
            };
            let given: Vec<(String, Option<String>)> = r
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.as_str().to_string(),
                        c.value.as_ref().map(|v| v.as_str().to_string()),
                    )
                })
                .collect();
            let mut ops: Vec<ConfigOp> = current
                .into_iter()
                .filter(|k| !given.iter().any(|(g, _)| g == k))
                .map(|k| ConfigOp {
                    name: k,
                    op: OpType::Delete,
                    value: None,
                })
                .collect();
            ops.extend(given.into_iter().map(|(k, v)| match v {
                Some(v) => ConfigOp {
                    name: k,
                    op: OpType::Set,
                    value: Some(v),
                },
                None => ConfigOp {
                    name: k,
                    op: OpType::Delete,
                    value: None,
                },
            }));
            let result = alter_resource(apis, r.resource_type, name, &ops, request.validate_only).await;
            let response = alter_response(r.resource_type, r.resource_name.clone(), result);
            responses.push(
                kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(response.resource_type)
                    .with_resource_name(response.resource_name)
                    .with_error_code(response.error_code)
                    .with_error_message(response.error_message),
            );
        }
    }
    AlterConfigsResponse::default().with_responses(responses)
}
