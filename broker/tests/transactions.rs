//! Transactions as a partition sees them, through the wire: transactional
//! batches open a producer's transaction, WriteTxnMarkers (what a
//! transaction coordinator sends) ends it, the last stable offset holds
//! read_committed consumers below the earliest open transaction, and their
//! fetches name the aborted transactions so librdkafka drops those records.
//! The transaction coordinator itself is not here yet: the producer side is
//! driven with raw requests.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::Raw;
use common::TestBroker;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "txn";

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

async fn producer_id(raw: &mut Raw) -> i64 {
    match raw
        .request(
            ApiKey::InitProducerId,
            4,
            RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_transactional_id(None)
                    .with_transaction_timeout_ms(60_000),
            ),
        )
        .await
        .unwrap()
    {
        ResponseKind::InitProducerId(r) => {
            assert_eq!(r.error_code, 0);
            r.producer_id.0
        }
        other => panic!("not an InitProducerId response: {other:?}"),
    }
}

/// One batch of `values` from `producer_id` starting at `sequence`,
/// transactional or not.
fn batch(producer_id: i64, sequence: i32, values: &[&str], transactional: bool) -> Bytes {
    use fjord_broker::log::batch::{encode_records, plain_record};
    let mut records: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut r = plain_record(i as i64, 1_000 + i as i64, None, Some(Bytes::from(v.to_string())));
            r.transactional = transactional;
            r.sequence = sequence + i as i32;
            r
        })
        .collect();
    encode_records(
        &mut records,
        kafka_protocol::records::Compression::None,
        producer_id,
        0,
        sequence,
    )
    .unwrap()
}

async fn produce(raw: &mut Raw, transactional_id: Option<&'static str>, records: Bytes) {
    assert_eq!(produce_code(raw, transactional_id, records).await, 0);
}

async fn produce_code(raw: &mut Raw, transactional_id: Option<&'static str>, records: Bytes) -> i16 {
    let request = ProduceRequest::default()
        .with_transactional_id(transactional_id.map(|t| TransactionalId(StrBytes::from_static_str(t))))
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let response = raw
        .request(ApiKey::Produce, 9, RequestKind::Produce(request))
        .await
        .unwrap();
    common::raw::produce_error(&response)
}

async fn end_txn(raw: &mut Raw, producer_id: i64, commit: bool) {
    let request = WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(0)
        .with_transaction_result(commit)
        .with_coordinator_epoch(0)
        .with_topics(vec![WritableTxnMarkerTopic::default()
            .with_name(topic_name())
            .with_partition_indexes(vec![0])])]);
    match raw
        .request(ApiKey::WriteTxnMarkers, 1, RequestKind::WriteTxnMarkers(request))
        .await
        .unwrap()
    {
        ResponseKind::WriteTxnMarkers(r) => assert_eq!(r.markers[0].topics[0].partitions[0].error_code, 0),
        other => panic!("not a WriteTxnMarkers response: {other:?}"),
    }
}

/// (high watermark, last stable offset, aborted (producer, first offset)) of
/// a read_committed fetch from offset 0.
async fn fetch_committed(raw: &mut Raw) -> (i64, i64, Vec<(i64, i64)>, usize) {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_isolation_level(1)
        .with_topics(vec![FetchTopic::default().with_topic(topic_name()).with_partitions(
            vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)],
        )]);
    match raw
        .request(ApiKey::Fetch, 11, RequestKind::Fetch(request))
        .await
        .unwrap()
    {
        ResponseKind::Fetch(r) => {
            let p = &r.responses[0].partitions[0];
            assert_eq!(p.error_code, 0);
            let aborted = p
                .aborted_transactions
                .as_ref()
                .expect("read_committed fetches name aborted transactions")
                .iter()
                .map(|a| (a.producer_id.0, a.first_offset))
                .collect();
            let bytes = p.records.as_ref().map_or(0, |r| r.len());
            (p.high_watermark, p.last_stable_offset, aborted, bytes)
        }
        other => panic!("not a fetch response: {other:?}"),
    }
}

async fn latest_committed(raw: &mut Raw) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(1)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name())
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    match raw
        .request(ApiKey::ListOffsets, 5, RequestKind::ListOffsets(request))
        .await
        .unwrap()
    {
        ResponseKind::ListOffsets(r) => r.topics[0].partitions[0].offset,
        other => panic!("not a ListOffsets response: {other:?}"),
    }
}

/// Values a librdkafka consumer with `isolation` reads from the beginning to
/// the partition's end (as it sees the end: the LSO for read_committed).
fn consume_all(b: &TestBroker, isolation: &str) -> Vec<String> {
    let consumer = b.consumer(&[("isolation.level", isolation), ("enable.partition.eof", "true")]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut values = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no end of partition within 30 s; read {values:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()),
            Some(Err(KafkaError::PartitionEOF(_))) => return values,
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_reads_committed_transactions_below_the_lso() {
    let mut b = TestBroker::start(&[]).await;
    b.create_topic(TOPIC, 1, &[]).await;
    let mut raw = Raw::connect(&b.bootstrap).await;
    let (t1, t2, plain) = (
        producer_id(&mut raw).await,
        producer_id(&mut raw).await,
        producer_id(&mut raw).await,
    );

    // t1 writes two records (offsets 0-1) and aborts (marker 2); t2 writes
    // one (3) and commits (marker 4); t1 opens another transaction (5) and
    // leaves it open; a plain idempotent record follows (6).
    // A transactional batch without the request's transactional id is refused.
    assert_eq!(
        produce_code(&mut raw, None, batch(t1, 0, &["no-id"], true)).await,
        kafka_protocol::error::ResponseError::InvalidRecord.code()
    );
    produce(&mut raw, Some("t1"), batch(t1, 0, &["aborted-1", "aborted-2"], true)).await;
    end_txn(&mut raw, t1, false).await;
    produce(&mut raw, Some("t2"), batch(t2, 0, &["committed-1"], true)).await;
    end_txn(&mut raw, t2, true).await;
    produce(&mut raw, Some("t1"), batch(t1, 2, &["open"], true)).await;
    produce(&mut raw, None, batch(plain, 0, &["plain"], false)).await;

    let (hw, lso, aborted, bytes) = fetch_committed(&mut raw).await;
    assert_eq!((hw, lso), (7, 5), "the open transaction at 5 holds the LSO");
    assert_eq!(aborted, vec![(t1, 0)]);
    assert!(bytes > 0);
    assert_eq!(
        latest_committed(&mut raw).await,
        5,
        "ListOffsets latest for read_committed is the LSO"
    );
    // Consumers: read_uncommitted sees everything, read_committed what is
    // committed below the LSO (the control records never reach either).
    assert_eq!(
        consume_all(&b, "read_uncommitted"),
        ["aborted-1", "aborted-2", "committed-1", "open", "plain"]
    );
    assert_eq!(consume_all(&b, "read_committed"), ["committed-1"]);

    // The open transaction commits: the LSO reaches the high watermark.
    end_txn(&mut raw, t1, true).await;
    let (hw, lso, aborted, _) = fetch_committed(&mut raw).await;
    assert_eq!((hw, lso, aborted), (8, 8, vec![(t1, 0)]));
    assert_eq!(consume_all(&b, "read_committed"), ["committed-1", "open", "plain"]);

    // A marker from an older producer epoch is a zombie's: refused.
    let stale = WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(t1))
        .with_producer_epoch(-1)
        .with_transaction_result(false)
        .with_topics(vec![WritableTxnMarkerTopic::default()
            .with_name(topic_name())
            .with_partition_indexes(vec![0])])]);
    match raw
        .request(ApiKey::WriteTxnMarkers, 1, RequestKind::WriteTxnMarkers(stale))
        .await
        .unwrap()
    {
        ResponseKind::WriteTxnMarkers(r) => assert_eq!(
            r.markers[0].topics[0].partitions[0].error_code,
            kafka_protocol::error::ResponseError::InvalidProducerEpoch.code()
        ),
        other => panic!("not a WriteTxnMarkers response: {other:?}"),
    }

    // Another open transaction, then a restart: the state comes back from
    // the log (snapshot and replay), markers included.
    produce(&mut raw, Some("t2"), batch(t2, 1, &["open-again"], true)).await;
    drop(raw);
    b.restart(&[]).await;
    // Led again, its high watermark back at the log end (a restarted
    // leader starts from its checkpoint): a consumer reads all six records.
    let deadline = Instant::now() + Duration::from_secs(30);
    while consume_all(&b, "read_uncommitted").len() != 6 {
        assert!(
            Instant::now() < deadline,
            "the six records not readable after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut raw = Raw::connect(&b.bootstrap).await;
    let (hw, lso, aborted, _) = fetch_committed(&mut raw).await;
    assert_eq!((hw, lso, aborted), (9, 8, vec![(t1, 0)]), "after a restart");
    end_txn(&mut raw, t2, false).await;
    let (hw, lso, aborted, _) = fetch_committed(&mut raw).await;
    assert_eq!((hw, lso, aborted), (10, 10, vec![(t1, 0), (t2, 8)]));
    assert_eq!(consume_all(&b, "read_committed"), ["committed-1", "open", "plain"]);
}
