//! Transactions as a partition sees them, through the wire: transactional
//! batches open a producer's transaction, WriteTxnMarkers (what a
//! transaction coordinator sends) ends it, the last stable offset holds
//! read_committed consumers below the earliest open transaction, and their
//! fetches name the aborted transactions so librdkafka drops those records.
//! The first test drives the partition side with raw requests; the others
//! run librdkafka's transactional producer against the transaction
//! coordinator.

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
    // Timestamped now, as a client does: records from 1970 would be past
    // retention.ms, and the retention check at a restart would delete them.
    let now = fjord_broker::log::segment::now_ms();
    let mut records: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut r = plain_record(i as i64, now + i as i64, None, Some(Bytes::from(v.to_string())));
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

/// The error code of a commit or abort marker for `producer_id` from
/// producer epoch `epoch` and coordinator epoch `coordinator_epoch`.
async fn marker_code(raw: &mut Raw, producer_id: i64, epoch: i16, coordinator_epoch: i32, commit: bool) -> i16 {
    let request = WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_transaction_result(commit)
        .with_coordinator_epoch(coordinator_epoch)
        .with_topics(vec![WritableTxnMarkerTopic::default()
            .with_name(topic_name())
            .with_partition_indexes(vec![0])])]);
    match raw
        .request(ApiKey::WriteTxnMarkers, 1, RequestKind::WriteTxnMarkers(request))
        .await
        .unwrap()
    {
        ResponseKind::WriteTxnMarkers(r) => r.markers[0].topics[0].partitions[0].error_code,
        other => panic!("not a WriteTxnMarkers response: {other:?}"),
    }
}

/// Ends `producer_id`'s transaction (producer epoch 0, coordinator epoch 0).
async fn end_txn(raw: &mut Raw, producer_id: i64, commit: bool) {
    assert_eq!(marker_code(raw, producer_id, 0, 0, commit).await, 0);
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
    // Raw transactional batches without a coordinator: KIP-890 verification off.
    let mut b = TestBroker::start(&[("transaction.partition.verification.enable", "false")]).await;
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

    // A marker from an older producer epoch is a zombie's: refused; so is
    // one from an older coordinator epoch than the producer's last marker's
    // (a coordinator that lost the transaction's state partition).
    assert_eq!(
        marker_code(&mut raw, t1, -1, 0, false).await,
        kafka_protocol::error::ResponseError::InvalidProducerEpoch.code()
    );
    assert_eq!(
        marker_code(&mut raw, t1, 0, -1, false).await,
        kafka_protocol::error::ResponseError::TransactionCoordinatorFenced.code()
    );

    // Another open transaction, then a restart: the state comes back from
    // the log (snapshot and replay), markers included.
    produce(&mut raw, Some("t2"), batch(t2, 1, &["open-again"], true)).await;
    drop(raw);
    b.restart(&[]).await;
    // Led again, its high watermark back at the log end (a restarted
    // leader starts from its checkpoint): a consumer reads all six records.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = consume_all(&b, "read_uncommitted");
        if read.len() == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the six records not readable after the restart: read {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut raw = Raw::connect(&b.bootstrap).await;
    let (hw, lso, aborted, _) = fetch_committed(&mut raw).await;
    assert_eq!((hw, lso, aborted), (9, 8, vec![(t1, 0)]), "after a restart");
    assert_eq!(
        marker_code(&mut raw, t1, 0, -1, false).await,
        kafka_protocol::error::ResponseError::TransactionCoordinatorFenced.code(),
        "the coordinator epoch of the last marker survives a restart"
    );
    end_txn(&mut raw, t2, false).await;
    let (hw, lso, aborted, _) = fetch_committed(&mut raw).await;
    assert_eq!((hw, lso, aborted), (10, 10, vec![(t1, 0), (t2, 8)]));
    assert_eq!(consume_all(&b, "read_committed"), ["committed-1", "open", "plain"]);
}

/// Values a read_committed or read_uncommitted consumer reads from the
/// beginning of `partitions` partitions of `topic` up to each partition's
/// end as it sees it (the LSO for read_committed).
fn read_to_end(bootstrap: &str, topic: &str, partitions: i32, isolation: &str) -> Vec<String> {
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "eos-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut values, mut ended) = (Vec::new(), std::collections::BTreeSet::new());
    while ended.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "no end of {topic} within 30 s; read {values:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    values.sort();
    values
}

/// `read_to_end` again until it reads `expected` (markers are written after
/// EndTxn is answered, so a commit becomes readable a moment later), at most 30 s.
fn read_until(bootstrap: &str, topic: &str, partitions: i32, isolation: &str, expected: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = read_to_end(bootstrap, topic, partitions, isolation);
        if read == expected || Instant::now() >= deadline {
            return read;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn txn_producer(bootstrap: &str, transactional_id: &str, extra: &[(&str, &str)]) -> rdkafka::producer::BaseProducer {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("transactional.id", transactional_id)
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

fn send(p: &rdkafka::producer::BaseProducer, topic: &str, partition: i32, value: &str) {
    use rdkafka::producer::{BaseRecord, Producer};
    p.send(BaseRecord::<(), str>::to(topic).partition(partition).payload(value))
        .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
}

fn sorted(values: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = values.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A librdkafka transactional producer against the transaction coordinator:
/// commits and aborts over several partitions, an empty transaction, an
/// open transaction invisible to read_committed only, zombie fencing, an
/// abandoned transaction aborted by its timeout, a timeout above
/// transaction.max.timeout.ms, and offsets sent to a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_transactions_commit_abort_fence_and_time_out() {
    let b = TestBroker::start(&[("transaction.abort.timed.out.transaction.cleanup.interval.ms", "200")]).await;
    b.create_topic("eos", 3, &[]).await;
    let bootstrap = b.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        let t = Duration::from_secs(30);
        let p = txn_producer(&bootstrap, "tx-a", &[]);
        p.init_transactions(t).unwrap();
        p.begin_transaction().unwrap();
        for part in 0..3 {
            send(&p, "eos", part, &format!("c1-{part}"));
        }
        p.commit_transaction(t).unwrap();
        p.begin_transaction().unwrap();
        for part in 0..3 {
            send(&p, "eos", part, &format!("a1-{part}"));
        }
        p.abort_transaction(t).unwrap();
        p.begin_transaction().unwrap();
        p.commit_transaction(t).unwrap(); // empty
        p.begin_transaction().unwrap();
        send(&p, "eos", 0, "c2-0");
        send(&p, "eos", 1, "c2-1");
        p.commit_transaction(t).unwrap();
        p.begin_transaction().unwrap();
        send(&p, "eos", 2, "open");

        let committed = sorted(&["c1-0", "c1-1", "c1-2", "c2-0", "c2-1"]);
        assert_eq!(read_to_end(&bootstrap, "eos", 3, "read_committed"), committed);
        let mut everything = committed.clone();
        everything.extend(sorted(&["a1-0", "a1-1", "a1-2", "open"]));
        everything.sort();
        assert_eq!(read_to_end(&bootstrap, "eos", 3, "read_uncommitted"), everything);

        // A second incarnation fences the first and aborts its open transaction.
        let q = txn_producer(&bootstrap, "tx-a", &[]);
        q.init_transactions(t).unwrap();
        let fenced = p.commit_transaction(t);
        assert!(fenced.is_err(), "the zombie's commit went through: {fenced:?}");
        q.begin_transaction().unwrap();
        send(&q, "eos", 2, "after");
        q.commit_transaction(t).unwrap();
        let mut with_after = committed.clone();
        with_after.push("after".into());
        with_after.sort();
        assert_eq!(
            read_until(&bootstrap, "eos", 3, "read_committed", &with_after),
            with_after,
            "the zombie's open transaction was aborted; the new one committed"
        );

        // An abandoned transaction is aborted by the coordinator after its timeout.
        let r = txn_producer(
            &bootstrap,
            "tx-timeout",
            &[("transaction.timeout.ms", "1000"), ("message.timeout.ms", "1000")],
        );
        r.init_transactions(t).unwrap();
        r.begin_transaction().unwrap();
        send(&r, "eos", 0, "hanging");
        q.begin_transaction().unwrap();
        send(&q, "eos", 0, "behind-the-hanging-one");
        q.commit_transaction(t).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let read = read_to_end(&bootstrap, "eos", 3, "read_committed");
            if read.contains(&"behind-the-hanging-one".to_string()) {
                assert!(
                    !read.contains(&"hanging".to_string()),
                    "the abandoned transaction was committed"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the abandoned transaction still holds the LSO"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(r.commit_transaction(t).is_err(), "the timed-out producer committed");

        // A timeout above transaction.max.timeout.ms is refused.
        let greedy = txn_producer(
            &bootstrap,
            "tx-greedy",
            &[("transaction.timeout.ms", "1000000"), ("message.timeout.ms", "1000")],
        );
        match greedy.init_transactions(t) {
            Err(KafkaError::Transaction(e)) => {
                assert_eq!(e.code(), rdkafka::types::RDKafkaErrorCode::InvalidTransactionTimeout)
            }
            other => panic!("a timeout above the maximum was accepted: {other:?}"),
        }

        // Offsets sent to a transaction: committed with it, dropped with an abort.
        let group: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("broker.address.family", "v4")
            .set("group.id", "eos-group")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let cgm = group.group_metadata().unwrap();
        let offsets = |o: i64| {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset("eos", 0, Offset::Offset(o)).unwrap();
            tpl
        };
        q.begin_transaction().unwrap();
        send(&q, "eos", 1, "with-offsets");
        q.send_offsets_to_transaction(&offsets(5), &cgm, t).unwrap();
        q.commit_transaction(t).unwrap();
        let committed_offset = || {
            let c = group.committed_offsets(offsets(0), t).unwrap();
            c.find_partition("eos", 0).unwrap().offset()
        };
        assert_eq!(committed_offset(), Offset::Offset(5));
        q.begin_transaction().unwrap();
        send(&q, "eos", 1, "aborted-with-offsets");
        q.send_offsets_to_transaction(&offsets(7), &cgm, t).unwrap();
        q.abort_transaction(t).unwrap();
        assert_eq!(
            committed_offset(),
            Offset::Offset(5),
            "an aborted transaction's offsets"
        );
    })
    .await
    .unwrap();

    // The admin view: the coordinator lists and describes its transactions.
    let mut raw = Raw::connect(&b.bootstrap).await;
    match raw
        .request(
            ApiKey::ListTransactions,
            0,
            RequestKind::ListTransactions(ListTransactionsRequest::default()),
        )
        .await
        .unwrap()
    {
        ResponseKind::ListTransactions(r) => {
            let ids: Vec<(&str, &str)> = r
                .transaction_states
                .iter()
                .map(|s| (s.transactional_id.as_str(), s.transaction_state.as_str()))
                .collect();
            assert!(ids.contains(&("tx-a", "CompleteAbort")), "{ids:?}");
            assert!(ids.contains(&("tx-timeout", "CompleteAbort")), "{ids:?}");
        }
        other => panic!("not a ListTransactions response: {other:?}"),
    }
    match raw
        .request(
            ApiKey::DescribeTransactions,
            0,
            RequestKind::DescribeTransactions(DescribeTransactionsRequest::default().with_transactional_ids(vec![
                TransactionalId(StrBytes::from_static_str("tx-a")),
                TransactionalId(StrBytes::from_static_str("no-such-id")),
            ])),
        )
        .await
        .unwrap()
    {
        ResponseKind::DescribeTransactions(r) => {
            assert_eq!(r.transaction_states[0].error_code, 0);
            assert!(
                r.transaction_states[0].producer_epoch >= 1,
                "bumped by the second incarnation"
            );
            assert_eq!(
                r.transaction_states[1].error_code,
                kafka_protocol::error::ResponseError::TransactionalIdNotFound.code()
            );
        }
        other => panic!("not a DescribeTransactions response: {other:?}"),
    }
}

/// The admin gRPC API's view of transactions, as `kafka-transactions.sh`
/// uses it: the coordinator lists an open transaction; DescribeProducers
/// shows the partition's open transactions, among them one no coordinator
/// knows (a hanging transaction, written here with raw requests); aborting
/// that one in its partition releases the last stable offset, so a later
/// committed transaction becomes readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_admin_lists_describes_and_aborts_a_hanging_transaction() {
    use fjord_proto::admin::v1 as pb;
    use rdkafka::producer::Producer;

    // The hanging transaction is written as a broker before KIP-890 took it.
    let b = TestBroker::start(&[("transaction.partition.verification.enable", "false")]).await;
    b.create_topic(TOPIC, 1, &[]).await;
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", b.broker().admin_addr))
        .await
        .unwrap();
    let t = Duration::from_secs(30);

    // A hanging transaction: a transactional batch whose producer never
    // went through a coordinator.
    let mut raw = Raw::connect(&b.bootstrap).await;
    let hanging = producer_id(&mut raw).await;
    produce(&mut raw, Some("hanging-id"), batch(hanging, 0, &["hanging"], true)).await;

    // A well-behaved transaction, open.
    let bootstrap = b.bootstrap.clone();
    let open = tokio::task::spawn_blocking(move || {
        let p = txn_producer(&bootstrap, "tx-open", &[]);
        p.init_transactions(t).unwrap();
        p.begin_transaction().unwrap();
        send(&p, TOPIC, 0, "committed-later");
        p
    })
    .await
    .unwrap();

    let listed = admin
        .list_transactions(pb::ListTransactionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .transactions;
    let tx = listed
        .iter()
        .find(|d| d.transactional_id == "tx-open")
        .unwrap_or_else(|| panic!("tx-open not listed: {listed:?}"));
    assert_eq!(tx.state, "Ongoing");
    assert_eq!(tx.coordinator, b.broker().ctx.config.node_id);
    assert!(tx.start_time_ms > 0);
    assert_eq!(tx.partitions.len(), 1);
    assert_eq!(
        (tx.partitions[0].topic.as_str(), &tx.partitions[0].partitions[..]),
        (TOPIC, &[0][..])
    );

    let describe = pb::DescribeProducersRequest {
        partitions: vec![pb::TopicPartitions {
            topic: TOPIC.into(),
            partitions: vec![0],
        }],
    };
    let producers = admin
        .describe_producers(describe.clone())
        .await
        .unwrap()
        .into_inner()
        .producers;
    let open_in_partition: Vec<i64> = producers
        .iter()
        .filter(|p| p.current_txn_start_offset >= 0)
        .map(|p| p.producer_id)
        .collect();
    assert_eq!(open_in_partition.len(), 2, "{producers:?}");
    assert!(open_in_partition.contains(&hanging) && open_in_partition.contains(&tx.producer_id));
    let hung = producers.iter().find(|p| p.producer_id == hanging).unwrap();
    assert_eq!(
        hung.current_txn_start_offset, 0,
        "the hanging batch is the partition's first"
    );
    assert!(
        listed.iter().all(|d| d.producer_id != hanging),
        "no coordinator knows the hanging producer"
    );

    // An abort for a partition that does not exist is refused.
    let missing = admin
        .abort_transaction(pb::AbortTransactionRequest {
            topic: "no-such-topic".into(),
            partition: 0,
            producer_id: hanging,
            producer_epoch: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let aborted = admin
        .abort_transaction(pb::AbortTransactionRequest {
            topic: TOPIC.into(),
            partition: 0,
            producer_id: hanging,
            producer_epoch: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(aborted.marker_offset >= 1, "the marker follows the hanging batch");
    let producers = admin.describe_producers(describe).await.unwrap().into_inner().producers;
    let hung = producers.iter().find(|p| p.producer_id == hanging).unwrap();
    assert_eq!(
        hung.current_txn_start_offset, -1,
        "the hanging transaction ended: {producers:?}"
    );

    // The open transaction commits; read_committed reads it, and not the aborted record.
    let bootstrap = b.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        open.commit_transaction(t).unwrap();
        let expected = vec!["committed-later".to_string()];
        assert_eq!(read_until(&bootstrap, TOPIC, 1, "read_committed", &expected), expected);
    })
    .await
    .unwrap();
}

/// transactional.id.expiration.ms: an id idle with no transaction open is
/// forgotten (a tombstone in `__transaction_state`), one with a transaction
/// open is kept; the forgotten id starts afresh with a new producer id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactional_ids_expire() {
    use fjord_proto::admin::v1 as pb;
    use rdkafka::producer::Producer;

    let b = TestBroker::start(&[
        ("transactional.id.expiration.ms", "1500"),
        ("transaction.remove.expired.transaction.cleanup.interval.ms", "100"),
    ])
    .await;
    b.create_topic(TOPIC, 1, &[]).await;
    let admin = pb::admin_client::AdminClient::connect(format!("http://{}", b.broker().admin_addr))
        .await
        .unwrap();
    let t = Duration::from_secs(30);

    // tx-idle commits one transaction and goes quiet; tx-busy keeps one open.
    let bootstrap = b.bootstrap.clone();
    let busy = tokio::task::spawn_blocking(move || {
        let idle = txn_producer(&bootstrap, "tx-idle", &[]);
        idle.init_transactions(t).unwrap();
        idle.begin_transaction().unwrap();
        send(&idle, TOPIC, 0, "idle-1");
        idle.commit_transaction(t).unwrap();
        let busy = txn_producer(&bootstrap, "tx-busy", &[]);
        busy.init_transactions(t).unwrap();
        busy.begin_transaction().unwrap();
        send(&busy, TOPIC, 0, "busy-1");
        busy
    })
    .await
    .unwrap();
    let listed = || {
        let mut admin = admin.clone();
        async move {
            admin
                .list_transactions(pb::ListTransactionsRequest {})
                .await
                .unwrap()
                .into_inner()
                .transactions
        }
    };
    let before = listed().await;
    let idle_pid = before
        .iter()
        .find(|d| d.transactional_id == "tx-idle")
        .unwrap_or_else(|| panic!("tx-idle not listed: {before:?}"))
        .producer_id;

    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = listed().await;
        if now.iter().all(|d| d.transactional_id != "tx-idle") {
            break now;
        }
        assert!(Instant::now() < deadline, "tx-idle never expired: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kept = after.iter().find(|d| d.transactional_id == "tx-busy");
    assert_eq!(
        kept.map(|d| d.state.as_str()),
        Some("Ongoing"),
        "an open transaction's id is kept: {after:?}"
    );

    // The forgotten id starts afresh; the open transaction still commits.
    let bootstrap = b.bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let again = txn_producer(&bootstrap, "tx-idle", &[]);
        again.init_transactions(t).unwrap();
        again.begin_transaction().unwrap();
        send(&again, TOPIC, 0, "idle-2");
        again.commit_transaction(t).unwrap();
        busy.commit_transaction(t).unwrap();
        let expected = sorted(&["idle-1", "busy-1", "idle-2"]);
        assert_eq!(read_until(&bootstrap, TOPIC, 1, "read_committed", &expected), expected);
    })
    .await
    .unwrap();
    let renewed = listed().await;
    let idle = renewed.iter().find(|d| d.transactional_id == "tx-idle").unwrap();
    assert_ne!(idle.producer_id, idle_pid, "a forgotten id gets a new producer id");
}
