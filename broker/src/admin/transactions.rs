//! The admin API's transactions, as `kafka-transactions.sh` works with them:
//! the coordinators' transactional ids (every broker asked), the producers
//! of partitions with their open transactions (each partition's leader
//! asked), and the abort of a hanging transaction in a partition.

use std::collections::BTreeMap;

use fjord_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};

use super::{forward, forwarded, peer, AdminService};
use crate::log::marker::Marker;

impl AdminService {
    pub(super) async fn list_transactions_rpc(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let me = self.ctx.config.node_id;
        let (found, _) = self.ctx.txns.list(&[], &[]);
        let mut transactions: Vec<pb::TransactionDescription> = found
            .into_iter()
            .map(|t| {
                let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (topic, p) in &t.metadata.partitions {
                    by_topic.entry(topic.clone()).or_default().push(*p);
                }
                pb::TransactionDescription {
                    transactional_id: t.transactional_id,
                    producer_id: t.metadata.producer_id,
                    producer_epoch: t.metadata.producer_epoch.into(),
                    state: t.metadata.state.name().to_string(),
                    timeout_ms: t.metadata.timeout_ms,
                    start_time_ms: t.metadata.started_ms,
                    partitions: by_topic
                        .into_iter()
                        .map(|(topic, partitions)| pb::TopicPartitions { topic, partitions })
                        .collect(),
                    coordinator: me,
                }
            })
            .collect();
        if !forwarded(&request) {
            for addr in self.other_brokers() {
                let theirs = peer(&addr)
                    .await?
                    .list_transactions(forward(pb::ListTransactionsRequest {}))
                    .await?
                    .into_inner();
                transactions.extend(theirs.transactions);
            }
            transactions.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
            transactions.dedup_by(|a, b| a.transactional_id == b.transactional_id);
        }
        Ok(Response::new(pb::ListTransactionsResponse { transactions }))
    }

    pub(super) async fn describe_producers_rpc(
        &self,
        request: Request<pb::DescribeProducersRequest>,
    ) -> Result<Response<pb::DescribeProducersResponse>, Status> {
        let fan_out = !forwarded(&request);
        let image = self.ctx.controller.image();
        let mut producers = Vec::new();
        let mut elsewhere: BTreeMap<String, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        for tp in request.into_inner().partitions {
            for p in tp.partitions {
                match self.ctx.replicas.get(&tp.topic, p) {
                    Ok(part) => producers.extend(part.producers().into_iter().map(|a| pb::ActiveProducer {
                        topic: tp.topic.clone(),
                        partition: p,
                        producer_id: a.producer_id,
                        producer_epoch: a.epoch.into(),
                        last_sequence: a.last_sequence,
                        last_timestamp: a.last_timestamp,
                        current_txn_start_offset: a.txn_first_offset.unwrap_or(-1),
                        coordinator_epoch: a.coordinator_epoch,
                    })),
                    Err(e) => {
                        let leader = image
                            .topics
                            .get(&tp.topic)
                            .and_then(|t| image.leader(t, p))
                            .and_then(|l| image.brokers.get(&l));
                        match leader {
                            Some(b) if fan_out => elsewhere
                                .entry(b.admin.clone())
                                .or_default()
                                .entry(tp.topic.clone())
                                .or_default()
                                .push(p),
                            _ => return Err(super::status(e)),
                        }
                    }
                }
            }
        }
        for (addr, topics) in elsewhere {
            let partitions = topics
                .into_iter()
                .map(|(topic, partitions)| pb::TopicPartitions { topic, partitions })
                .collect();
            let theirs = peer(&addr)
                .await?
                .describe_producers(forward(pb::DescribeProducersRequest { partitions }))
                .await?
                .into_inner();
            producers.extend(theirs.producers);
        }
        Ok(Response::new(pb::DescribeProducersResponse { producers }))
    }

    pub(super) async fn abort_transaction_rpc(
        &self,
        request: Request<pb::AbortTransactionRequest>,
    ) -> Result<Response<pb::AbortTransactionResponse>, Status> {
        let r = request.get_ref();
        if self.ctx.replicas.get(&r.topic, r.partition).is_err() && !forwarded(&request) {
            let image = self.ctx.controller.image();
            let leader = image
                .topics
                .get(&r.topic)
                .and_then(|t| image.leader(t, r.partition))
                .and_then(|l| image.brokers.get(&l))
                .map(|b| b.admin.clone());
            if let Some(addr) = leader {
                return peer(&addr)
                    .await?
                    .abort_transaction(forward(request.into_inner()))
                    .await;
            }
        }
        let r = request.into_inner();
        let epoch = i16::try_from(r.producer_epoch)
            .map_err(|_| Status::invalid_argument(format!("producer epoch {} out of range", r.producer_epoch)))?;
        // The coordinator epoch of a tool's marker: the producer's last one
        // here, as kafka-transactions.sh takes it from DescribeProducers (-1
        // when none), so the partition's coordinator fencing lets it through.
        let coordinator_epoch = self
            .ctx
            .replicas
            .get(&r.topic, r.partition)
            .ok()
            .and_then(|part| part.producer_entry(r.producer_id))
            .map_or(-1, |e| e.coordinator_epoch);
        let marker_offset = crate::txn::markers::write_local(
            &self.ctx.replicas,
            &self.ctx.groups,
            &r.topic,
            r.partition,
            r.producer_id,
            epoch,
            coordinator_epoch,
            Marker::Abort,
        )
        .await
        .map_err(super::status)?;
        tracing::info!(topic = %r.topic, partition = r.partition, producer_id = r.producer_id, "aborted a hanging transaction (admin)");
        Ok(Response::new(pb::AbortTransactionResponse { marker_offset }))
    }
}
