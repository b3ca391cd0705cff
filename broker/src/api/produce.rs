//! Produce: validate and append each partition's record set; answer per partition.

use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};

use super::{str, Apis};
use crate::error::Error;
use crate::log::batch::BatchHeader;
use crate::log::AppendInfo;
use crate::replica::produce::DelayedProduce;

/// A produce request once appended: its answer, and what that still waits
/// for (durability, replication). The network layer reads the next request
/// on the connection meanwhile; answers still go out in request order.
pub struct Appended {
    acks: i16,
    version: i16,
    timeout: std::time::Duration,
    responses: Vec<TopicProduceResponse>,
    /// Partitions whose answer waits (on disk, in the ISR), by topic and index.
    delayed: Vec<(String, i32, DelayedProduce)>,
    endpoints: Vec<NodeEndpoint>,
}

/// Returns `None` for acks=0: the client expects no response. With acks=all
/// the answer waits (without holding a thread) until the high watermark
/// passes each partition's batch, or `timeout_ms` (REQUEST_TIMED_OUT; or
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND when the ISR fell below
/// min.insync.replicas meanwhile).
pub async fn handle(apis: &Apis, request: ProduceRequest, version: i16) -> Option<ProduceResponse> {
    append(apis, request, version).await.answer().await
}

/// KIP-890 part 1: the transactional batches of `request` that would open
/// their producer's transaction in a partition, verified with the
/// transaction's coordinator; the partitions refused, and why. Batches the
/// append refuses anyway (malformed, a partition not led here) are left to
/// it, unverified.
async fn verify_transactions(
    apis: &Apis,
    request: &ProduceRequest,
) -> std::collections::HashMap<(String, i32), kafka_protocol::error::ResponseError> {
    let mut refused = std::collections::HashMap::new();
    let Some(transactional_id) = request.transactional_id.as_ref() else {
        return refused;
    };
    if !apis.ctx.config.transaction_partition_verification_enable {
        return refused;
    }
    let mut opening: std::collections::BTreeMap<(i64, i16), Vec<(String, i32)>> = Default::default();
    for topic in &request.topic_data {
        for p in &topic.partition_data {
            let Some(header) = p.records.as_deref().and_then(|r| BatchHeader::parse(r).ok()) else {
                continue;
            };
            if !header.is_transactional() {
                continue;
            }
            let (producer_id, epoch) = (header.producer_id(), header.producer_epoch());
            // Only where the batch would append: a follower refuses it
            // (NOT_LEADER_OR_FOLLOWER) without asking the coordinator.
            let opens = apis
                .replicas
                .get(topic.name.as_str(), p.index)
                .is_ok_and(|part| part.is_leading() && !part.in_transaction(producer_id, epoch));
            if opens {
                opening
                    .entry((producer_id, epoch))
                    .or_default()
                    .push((topic.name.as_str().to_string(), p.index));
            }
        }
    }
    for ((producer_id, epoch), partitions) in opening {
        let verified = apis
            .txns
            .verify(transactional_id.as_str(), producer_id, epoch, partitions)
            .await;
        for (tp, e) in verified {
            if let Some(e) = e {
                tracing::debug!(topic = %tp.0, partition = tp.1, producer_id, epoch, error = ?e, "transactional batch not verified");
                refused.insert(tp, e);
            }
        }
    }
    refused
}

/// Validates and appends each partition's record set, in request order. A
/// transactional batch that would open its producer's transaction in a
/// partition is first verified with the transaction's coordinator
/// (KIP-890 part 1); the connection's next request waits meanwhile, so
/// requests still append in order.
pub async fn append(apis: &Apis, request: ProduceRequest, version: i16) -> Appended {
    let refused = verify_transactions(apis, &request).await;
    let acks = request.acks;
    let timeout = std::time::Duration::from_millis(request.timeout_ms.clamp(0, 300_000) as u64);
    let mut delayed: Vec<(String, i32, DelayedProduce)> = Vec::new();
    let request_error = if !matches!(acks, -1..=1) {
        Some(Error::InvalidRequiredAcks(acks))
    } else {
        None
    };
    let mut hinted = std::collections::BTreeSet::new();
    let responses = request
        .topic_data
        .into_iter()
        .map(|topic| {
            let name = topic.name.as_str().to_string();
            let partition_responses = topic
                .partition_data
                .into_iter()
                .map(|p| {
                    let mut record_errors = Vec::new();
                    let result = match (&request_error, p.records) {
                        (Some(e), _) => Err(e.to_string_and_code()),
                        (None, None) => Err(Error::CorruptMessage("no records".into()).to_string_and_code()),
                        (None, Some(_)) if name == crate::group::OFFSETS_TOPIC => {
                            Err(Error::InvalidTopic(format!("cannot append to internal topic {name}"))
                                .to_string_and_code())
                        }
                        (None, Some(_)) if refused.contains_key(&(name.clone(), p.index)) => {
                            Err(Error::TxnVerification(refused[&(name.clone(), p.index)]).to_string_and_code())
                        }
                        (None, Some(records)) => one_batch(&records)
                            .and_then(|()| transactional_needs_id(&records, request.transactional_id.is_some()))
                            .and_then(|()| apis.replicas.append_records(&name, p.index, &records, acks))
                            .map(|(info, waits)| {
                                if !waits.is_done() {
                                    delayed.push((name.clone(), p.index, waits));
                                }
                                info
                            })
                            .map_err(|e| {
                                record_errors = record_errors_of(&e);
                                e.to_string_and_code()
                            }),
                    };
                    let response = PartitionProduceResponse::default().with_index(p.index);
                    match result {
                        Ok(info) => {
                            record_metrics(apis, &name, &info);
                            let response = response
                                .with_base_offset(info.first_offset)
                                .with_log_append_time_ms(info.log_append_time);
                            if version >= 5 {
                                response.with_log_start_offset(info.log_start_offset)
                            } else {
                                response
                            }
                        }
                        Err((message, code)) => {
                            tracing::debug!(topic = %name, partition = p.index, %message, "produce rejected");
                            let code_name = format!("{code}");
                            apis.metrics
                                .produce_errors
                                .with_label_values(&[&name, &code_name])
                                .inc();
                            let response = response
                                .with_error_code(code)
                                .with_base_offset(-1)
                                .with_log_append_time_ms(-1)
                                .with_error_message((version >= 8).then(|| str(message)))
                                .with_record_errors(if version >= 8 { record_errors } else { Vec::new() });
                            // Only on this error path is the image needed.
                            let hint = (version >= 10)
                                .then(|| {
                                    super::leader_hint(&apis.controller.image(), &name, p.index, code, &mut hinted)
                                })
                                .flatten();
                            match hint {
                                Some((leader, epoch)) => response.with_current_leader(
                                    LeaderIdAndEpoch::default()
                                        .with_leader_id(BrokerId(leader))
                                        .with_leader_epoch(epoch),
                                ),
                                _ => response,
                            }
                        }
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partition_responses)
        })
        .collect();
    let endpoints = if hinted.is_empty() {
        Vec::new()
    } else {
        super::hinted_endpoints(&apis.controller.image(), &hinted)
    };
    let endpoints = endpoints
        .into_iter()
        .map(|(id, host, port, rack)| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(id))
                .with_host(str(host))
                .with_port(port)
                .with_rack(rack.map(str))
        })
        .collect();
    Appended {
        acks,
        version,
        timeout,
        responses,
        delayed,
        endpoints,
    }
}

impl crate::network::handler::DelayedAnswer for Appended {
    /// Nothing to wait for: the answer is final now.
    fn is_ready(&self) -> bool {
        self.delayed.is_empty()
    }

    fn complete(self) -> impl std::future::Future<Output = Option<ProduceResponse>> + Send {
        self.answer()
    }
}

impl Appended {
    /// The answer, once every waited-for partition is durable and replicated
    /// (or its wait failed, or timed out).
    async fn answer(self) -> Option<ProduceResponse> {
        let Appended {
            acks,
            version,
            timeout,
            mut responses,
            delayed,
            endpoints,
        } = self;
        let deadline = tokio::time::Instant::now() + timeout;
        for (topic, index, waits) in delayed {
            let Err(e) = waits.wait(deadline).await else {
                continue;
            };
            tracing::debug!(%topic, partition = index, error = %e, "produce not completed");
            if let Some(r) = responses
                .iter_mut()
                .filter(|t| t.name.as_str() == topic)
                .flat_map(|t| t.partition_responses.iter_mut())
                .find(|r| r.index == index && r.error_code == 0)
            {
                r.error_code = e.code();
            }
        }
        (acks != 0).then(|| {
            ProduceResponse::default()
                .with_responses(responses)
                .with_node_endpoints(if version >= 10 { endpoints } else { Vec::new() })
        })
    }
}

/// Produce v3+ carries exactly one v2 batch per partition, as Kafka's
/// ProduceRequest.validateRecords requires; record errors index into it.
fn one_batch(records: &bytes::Bytes) -> Result<(), Error> {
    let first = crate::log::batch::total_size(records)?;
    if first < records.len() {
        return Err(Error::InvalidRecord(
            "produce requests may carry exactly one record batch per partition".into(),
        ));
    }
    Ok(())
}

/// As Kafka: a transactional batch comes with the transactional id whose
/// coordinator will end it, or not at all.
fn transactional_needs_id(records: &bytes::Bytes, has_id: bool) -> Result<(), Error> {
    let transactional = BatchHeader::parse(records).is_ok_and(|h| h.is_transactional());
    if transactional && !has_id {
        return Err(Error::InvalidRecord(
            "a transactional batch needs the request's transactional id".into(),
        ));
    }
    Ok(())
}

/// KIP-467: which records of the batch were refused, and why.
fn record_errors_of(e: &Error) -> Vec<BatchIndexAndErrorMessage> {
    match e {
        Error::InvalidRecords(errors) => errors
            .iter()
            .map(|r| {
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(r.batch_index)
                    .with_batch_index_error_message(Some(str(r.message.clone())))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn record_metrics(apis: &Apis, topic: &str, info: &AppendInfo) {
    if info.duplicate {
        return;
    }
    apis.metrics.bytes_in.with_label_values(&[topic]).inc_by(info.bytes);
    apis.metrics
        .messages_in
        .with_label_values(&[topic])
        .inc_by(info.records);
}

impl Error {
    fn to_string_and_code(&self) -> (String, i16) {
        (self.to_string(), self.code())
    }
}
