//! Followers: one fetcher per leader broker, multiplexing every partition
//! this broker follows from it over one connection, with the Kafka Fetch API
//! (replica id set, so the leader serves up to its log end and learns each
//! follower's progress from its fetch offset). Batches are stored exactly as
//! the leader sent them.
//!
//! Divergence (KIP-101/KIP-595): every fetch names the epoch of the
//! follower's last batch; when the leader's log ends that epoch earlier, it
//! answers with the diverging epoch's end offset and the follower cuts its
//! log there before fetching again. So a returning broker never keeps records
//! the new leader does not have at the same offsets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{Partition, ReplicaManager};
use crate::broker_client;
use crate::controller::Controller;

/// Fetch v12: topics by name, the follower's last fetched epoch, and the
/// leader's diverging epoch in the answer.
const FETCH_VERSION: i16 = 12;
const MAX_WAIT_MS: i32 = 500;
const PARTITION_MAX_BYTES: i32 = 1 << 20;
const MAX_BYTES: i32 = 16 << 20;

/// Keeps one fetcher task per leader this broker follows partitions from.
pub async fn run(
    node_id: i32,
    replicas: Arc<ReplicaManager>,
    controller: Arc<Controller>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut fetchers: HashMap<i32, JoinHandle<()>> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = crate::shutdown::stopped(&mut shutdown) => {
                for (_, f) in fetchers {
                    f.abort();
                }
                return;
            }
        }
        fetchers.retain(|_, f| !f.is_finished());
        for leader in followed_leaders(node_id, &replicas) {
            fetchers
                .entry(leader)
                .or_insert_with(|| tokio::spawn(fetch_from(node_id, leader, replicas.clone(), controller.clone())));
        }
    }
}

fn followed_leaders(node_id: i32, replicas: &ReplicaManager) -> std::collections::BTreeSet<i32> {
    replicas
        .followed(node_id)
        .into_iter()
        .map(|(leader, _)| leader)
        .collect()
}

/// One leader's fetcher: runs while this broker follows anything from it.
async fn fetch_from(node_id: i32, leader: i32, replicas: Arc<ReplicaManager>, controller: Arc<Controller>) {
    let mut conn: Option<TcpStream> = None;
    // Responses are read into one buffer, reused once the records of the
    // last response (slices of it) have been appended and dropped.
    let mut buffer = BytesMut::new();
    let mut correlation = 0;
    loop {
        let parts: Vec<Arc<Partition>> = replicas
            .followed(node_id)
            .into_iter()
            .filter(|(l, _)| *l == leader)
            .map(|(_, p)| p)
            .collect();
        if parts.is_empty() {
            return;
        }
        let Some(addr) = controller
            .image()
            .brokers
            .get(&leader)
            .map(|b| format!("{}:{}", b.host, b.port))
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // The leader epoch each partition is fetched under: an answer is
        // applied only while this broker still follows it in that epoch.
        let epochs: Vec<i32> = parts.iter().map(|p| p.leader_epoch()).collect();
        // Replicas a reassignment is adding here fetch within
        // follower.replication.throttled.rate (nothing while it is spent).
        let throttle = replicas.follower_throttle();
        let throttled: Vec<bool> = parts.iter().map(|p| p.is_throttled_for(node_id)).collect();
        let spent = throttle.exhausted(crate::log::segment::now_ms());
        let limits: Vec<i32> = throttled
            .iter()
            .map(|t| if *t && spent { 0 } else { PARTITION_MAX_BYTES })
            .collect();
        let request = fetch_request(node_id, &parts, &epochs, &limits);
        correlation += 1;
        let answer = async {
            if conn.is_none() {
                conn = Some(TcpStream::connect(&addr).await?);
            }
            let stream = conn.as_mut().expect("connected");
            broker_client::exchange::<_, FetchResponse>(
                stream,
                &mut buffer,
                ApiKey::Fetch,
                FETCH_VERSION,
                correlation,
                "fjord-replica-fetcher",
                &request,
            )
            .await
        };
        let response = match tokio::time::timeout(Duration::from_secs(30), answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(leader, %addr, error = %e, "replica fetch failed");
                if crate::controller::liveness::suggests_a_dead_peer(&e) {
                    // The controller probes it and fences it if it is gone.
                    controller.suspect(leader);
                }
                conn = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                conn = None;
                continue;
            }
        };
        let mut backoff = false;
        let mut starts_moved = false;
        for topic in response.responses {
            for data in topic.partitions {
                let Some((part, (epoch, throttled))) = parts
                    .iter()
                    .zip(epochs.iter().zip(&throttled))
                    .find(|(p, _)| p.tp.topic == topic.topic.as_str() && p.tp.partition == data.partition_index)
                else {
                    continue;
                };
                if *throttled {
                    let bytes = data.records.as_ref().map_or(0, |r| r.len());
                    throttle.record(bytes, crate::log::segment::now_ms());
                }
                if !part.follows(leader, *epoch) {
                    // Leadership moved while the fetch was out: a late answer
                    // from an old leader must not touch this log.
                    continue;
                }
                match apply(part, data).await {
                    Ok(Applied::LogStartMoved) => starts_moved = true,
                    Ok(Applied::Records) => {}
                    Err(e) => {
                        tracing::warn!(tp = %part.tp, leader, error = %e, "replicating from the leader");
                        backoff = true;
                    }
                }
            }
        }
        if starts_moved {
            let replicas = replicas.clone();
            let written = tokio::task::spawn_blocking(move || replicas.logs().checkpoint()).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(leader, error = %e, "writing the log start offset checkpoint");
            }
        }
        if backoff {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One fetch for `parts`, each under its leader epoch and byte limit.
fn fetch_request(node_id: i32, parts: &[Arc<Partition>], epochs: &[i32], limits: &[i32]) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for ((p, epoch), limit) in parts.iter().zip(epochs).zip(limits) {
        let last_epoch = p.log.last_epoch();
        let partition = FetchPartition::default()
            .with_partition(p.tp.partition)
            .with_current_leader_epoch(*epoch)
            .with_fetch_offset(p.log.log_end_offset())
            .with_last_fetched_epoch(last_epoch)
            .with_log_start_offset(p.log.log_start_offset())
            .with_partition_max_bytes(*limit);
        match topics.iter_mut().find(|t| t.topic.as_str() == p.tp.topic) {
            Some(t) => t.partitions.push(partition),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(p.tp.topic.clone())))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(node_id))
        .with_max_wait_ms(MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(MAX_BYTES)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// One partition of the leader's answer: append, cut a divergent tail, or
/// follow the leader's high watermark.
async fn apply(
    part: &Arc<Partition>,
    data: kafka_protocol::messages::fetch_response::PartitionData,
) -> crate::error::Result<Applied> {
    let error = ResponseError::try_from_code(data.error_code);
    let leo = part.log.log_end_offset();
    if error == Some(ResponseError::OffsetOutOfRange) {
        if data.log_start_offset > leo {
            // Behind the leader's log start (a new replica, or one away
            // past retention): start over empty where the leader's log starts.
            let (p, start) = (part.clone(), data.log_start_offset);
            tracing::info!(tp = %part.tp, start, "behind the leader's log start: starting over there");
            tokio::task::spawn_blocking(move || p.log.truncate_fully_and_start_at(start))
                .await
                .map_err(|e| crate::error::Error::Storage(std::io::Error::other(e)))??;
            part.reset_high_watermark(start);
            return Ok(Applied::LogStartMoved);
        } else if data.high_watermark >= 0 && leo > data.high_watermark {
            // Past the leader's end: an unreplicated tail from an older epoch.
            truncate(part, data.high_watermark).await?;
        }
        return Ok(Applied::Records);
    }
    if data.error_code != 0 {
        return Err(crate::error::Error::NotLeaderOrFollower);
    }
    if data.diverging_epoch.end_offset >= 0 || data.diverging_epoch.epoch >= 0 {
        let leader = (data.diverging_epoch.epoch, data.diverging_epoch.end_offset);
        let to = truncation_offset(leader, part.log.end_offset_for_epoch(leader.0), leo);
        tracing::info!(
            tp = %part.tp,
            epoch = data.diverging_epoch.epoch,
            end_offset = data.diverging_epoch.end_offset,
            "the leader's log diverges from ours: cutting the tail"
        );
        truncate(part, to).await?;
        return Ok(Applied::Records);
    }
    if let Some(records) = data.records.filter(|r| !r.is_empty()) {
        crate::blocking::blocking(|| {
            let info = part.log.append_as_follower(&records)?;
            if info.flush_due {
                part.log.flush_through_end()?;
            }
            Ok::<_, crate::error::Error>(())
        })?;
    }
    part.set_high_watermark(data.high_watermark.min(part.log.log_end_offset()));
    // The leader's log start (DeleteRecords, retention): records below it
    // are gone here too, so a failover never serves them again.
    if data.log_start_offset > part.log.log_start_offset() {
        let p = part.clone();
        let moved = tokio::task::spawn_blocking(move || p.follow_log_start(data.log_start_offset))
            .await
            .map_err(|e| crate::error::Error::Storage(std::io::Error::other(e)))??;
        if moved {
            return Ok(Applied::LogStartMoved);
        }
    }
    Ok(Applied::Records)
}

/// What a partition's share of a fetch response did to the follower.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Records,
    /// Its log start offset moved: the checkpoint is written so that it
    /// holds after a crash of this broker as well.
    LogStartMoved,
}

/// Where a follower cuts its log when the leader reports a diverging epoch
/// (Kafka's getOffsetTruncationState): `leader` is the leader's largest
/// epoch at or below the follower's last one and where it ends there;
/// `follower` is the follower's own answer for that epoch. The follower's
/// log may end that epoch earlier than the leader's (its later batches are
/// from a term the leader never saw), or not know it at all (then it cuts
/// to the end of the largest epoch it has below it and asks again).
pub fn truncation_offset(leader: (i32, i64), follower: (i32, i64), log_end_offset: i64) -> i64 {
    let (leader_epoch, leader_end) = leader;
    let (follower_epoch, follower_end) = follower;
    let to = if leader_end < 0 {
        0
    } else if leader_epoch < 0 || follower_epoch < 0 {
        // The leader holds no epoch that old (it answers its log start), or
        // the follower tracks none: the leader's offset.
        leader_end
    } else if follower_epoch != leader_epoch {
        follower_end
    } else {
        follower_end.min(leader_end)
    };
    to.min(log_end_offset)
}

async fn truncate(part: &Arc<Partition>, to: i64) -> crate::error::Result<()> {
    let p = part.clone();
    tokio::task::spawn_blocking(move || p.log.truncate_to(to))
        .await
        .map_err(|e| crate::error::Error::Storage(std::io::Error::other(e)))??;
    let leo = part.log.log_end_offset();
    if part.high_watermark() > leo {
        part.reset_high_watermark(leo);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::truncation_offset;

    #[test]
    fn a_follower_cuts_where_both_logs_last_agree() {
        // Follower: epoch 6 up to 80, then its own epoch 7 to 120. Leader:
        // epoch 6 ends at 100. The follower's epoch 6 ends first: cut at 80.
        assert_eq!(truncation_offset((6, 100), (6, 80), 120), 80);
        // The leader's epoch 6 ends first: cut there.
        assert_eq!(truncation_offset((6, 70), (6, 80), 120), 70);
        // The follower never had epoch 6: to the end of its largest below it.
        assert_eq!(truncation_offset((6, 100), (5, 50), 120), 50);
        // The follower tracks no such epoch: the leader's end.
        assert_eq!(truncation_offset((6, 100), (-1, -1), 120), 100);
        // Never past the follower's own end; nothing agreed: everything.
        assert_eq!(truncation_offset((6, 500), (6, 600), 120), 120);
        assert_eq!(truncation_offset((-1, 40), (3, 10), 120), 40);
        assert_eq!(truncation_offset((-1, -1), (3, 10), 120), 0);
    }

    proptest::proptest! {
        /// Wherever the logs diverge, the follower never cuts past its own
        /// end, never keeps more of a shared epoch than the leader has, and
        /// cuts to 0 when the leader has nothing of the epoch's history.
        #[test]
        fn truncation_never_keeps_what_the_leader_lacks(
            leader_epoch in -1i32..8,
            leader_end in -1i64..500,
            follower_epoch in -1i32..8,
            follower_end in -1i64..500,
            log_end in 0i64..500,
        ) {
            let to = truncation_offset((leader_epoch, leader_end), (follower_epoch, follower_end), log_end);
            proptest::prop_assert!(to <= log_end);
            if leader_end < 0 {
                proptest::prop_assert_eq!(to, 0);
            }
            if leader_epoch >= 0 && follower_epoch == leader_epoch && leader_end >= 0 {
                proptest::prop_assert!(to <= leader_end);
            }
            if leader_epoch < 0 || follower_epoch < 0 {
                proptest::prop_assert!(leader_end < 0 || to == leader_end.min(log_end));
            }
        }
    }
}
