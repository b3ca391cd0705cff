//! Records are validated as Kafka's LogValidator does: per-record errors
//! (KIP-467) for keyless records on compacted topics, timestamps outside
//! `message.timestamp.before/after.max.ms`, and a batch header's max
//! timestamp that the records do not back.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::raw::{produce_request, Raw};
use common::TestBroker;
use fjord_broker::log::batch::{encode_records, plain_record, PatchedHeader, HEADER_SIZE};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use kafka_protocol::records::Compression;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn batch_of(keys: &[Option<&str>], timestamp: i64, compression: Compression) -> Bytes {
    let mut records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            plain_record(
                i as i64,
                timestamp,
                k.map(|k| Bytes::from(k.to_string())),
                Some(Bytes::from_static(b"v")),
            )
        })
        .collect();
    encode_records(&mut records, compression, -1, -1, -1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_on_a_compacted_topic_are_named_in_record_errors() {
    let b = TestBroker::start(&[]).await;
    b.create_topic("compacted", 1, &[("cleanup.policy", "compact")]).await;
    let mut raw = Raw::connect(&b.bootstrap).await;
    for compression in [Compression::None, Compression::Zstd] {
        let records = batch_of(&[Some("a"), None, Some("c"), None], now_ms(), compression);
        let response = raw
            .request(ApiKey::Produce, 9, produce_request("compacted", 0, records))
            .await
            .unwrap();
        let ResponseKind::Produce(r) = response else {
            panic!("not a produce response")
        };
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, ResponseError::InvalidRecord.code(), "{compression:?}");
        let indexes: Vec<i32> = p.record_errors.iter().map(|e| e.batch_index).collect();
        assert_eq!(indexes, vec![1, 3], "{compression:?}");
        assert!(p.record_errors.iter().all(|e| e
            .batch_index_error_message
            .as_ref()
            .is_some_and(|m| m.contains("without a key"))));
    }
    let part = b.broker().ctx.replicas.get("compacted", 0).unwrap();
    assert_eq!(part.log_end_offset(), 0, "a batch with invalid records is not appended");

    // librdkafka fails the keyless record with the broker's error and delivers the keyed one.
    let producer = b.producer(&[("linger.ms", "0")]);
    let keyless = producer
        .send(
            FutureRecord::<str, _>::to("compacted").payload("no key"),
            Duration::from_secs(10),
        )
        .await;
    match keyless {
        Err((KafkaError::MessageProduction(code), _)) => assert_eq!(code, RDKafkaErrorCode::InvalidRecord),
        other => panic!("a keyless record must fail: {other:?}"),
    }
    producer
        .send(
            FutureRecord::to("compacted").key("k").payload("keyed"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("a keyed record is delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_outside_the_window_are_refused_with_invalid_timestamp() {
    let b = TestBroker::start(&[]).await;
    b.create_topic("default-window", 1, &[]).await;
    b.create_topic("wide-window", 1, &[("message.timestamp.after.max.ms", "36000000")])
        .await;
    b.create_topic("recent-only", 1, &[("message.timestamp.before.max.ms", "60000")])
        .await;
    b.create_topic("append-time", 1, &[("message.timestamp.type", "LogAppendTime")])
        .await;
    let producer = b.producer(&[("linger.ms", "0")]);
    let two_hours_ahead = now_ms() + 2 * 3_600_000;
    let hour_ago = now_ms() - 3_600_000;
    let send = |topic: &'static str, timestamp: i64| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key("k").payload("v").timestamp(timestamp),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
        }
    };
    let invalid_timestamp = |r: Result<_, KafkaError>| {
        matches!(
            r,
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTimestamp))
        )
    };
    assert!(
        invalid_timestamp(send("default-window", two_hours_ahead).await),
        "1 hour ahead at most by default"
    );
    send("wide-window", two_hours_ahead)
        .await
        .expect("a topic may allow more");
    assert!(invalid_timestamp(send("recent-only", hour_ago).await), "before.max.ms");
    send("recent-only", now_ms()).await.expect("a recent record");
    send("append-time", two_hours_ahead)
        .await
        .expect("LogAppendTime overwrites timestamps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_max_timestamp_in_the_header_is_corrected() {
    let b = TestBroker::start(&[]).await;
    b.create_topic("t", 1, &[]).await;
    let now = now_ms();
    let mut lying = batch_of(&[Some("a"), Some("b")], now, Compression::None).to_vec();
    let ten_years = now + 10 * 365 * 86_400_000;
    lying[35..43].copy_from_slice(&ten_years.to_be_bytes());
    let mut h = PatchedHeader::from_batch(&lying);
    h.recompute_crc(&lying[HEADER_SIZE..]);
    lying[..HEADER_SIZE].copy_from_slice(&h.0);
    let mut raw = Raw::connect(&b.bootstrap).await;
    let r = raw
        .request(ApiKey::Produce, 9, produce_request("t", 0, Bytes::from(lying)))
        .await
        .unwrap();
    assert_eq!(common::raw::produce_error(&r), 0);
    let part = b.broker().ctx.replicas.get("t", 0).unwrap();
    let (_, max) = part.max_timestamp_offset().unwrap();
    assert_eq!(
        max, now,
        "the log knows the records' own max timestamp, not the header's claim"
    );
    let stored = part.read(0, 1 << 20, true).unwrap().records;
    let header = fjord_broker::log::batch::validate(&stored).expect("a valid stored batch");
    assert_eq!(
        header.max_timestamp(),
        now,
        "the stored header is corrected and its CRC holds"
    );
}
