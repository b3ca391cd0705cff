//! Compatibility with a real client: librdkafka through the `rdkafka` crate.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{consume, TestBroker};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_keys_values_headers_timestamps_and_order() {
    let b = TestBroker::start(&[]).await;
    b.create_topic("orders", 3, &[]).await;
    let producer = b.producer(&[]);
    let base_ts = 1_700_000_000_000i64;
    let mut sent = Vec::new();
    for i in 0..300i64 {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let partition = (i % 3) as i32;
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "seq",
                value: Some(&i.to_be_bytes()),
            })
            .insert(Header {
                key: "src",
                value: Some("test"),
            });
        let record = FutureRecord::to("orders")
            .key(&key)
            .payload(&value)
            .partition(partition)
            .timestamp(base_ts + i)
            .headers(headers);
        let delivery = producer.send(record, WAIT).await.map_err(|(e, _)| e).unwrap();
        assert_eq!(delivery.partition, partition);
        let offset = delivery.offset;
        sent.push((partition, offset, key, value, base_ts + i, i));
    }
    let consumer = b.consumer(&[]);
    let got = consume(&consumer, "orders", 3, Offset::Beginning, 300, WAIT);
    assert_eq!(got.len(), 300);
    let mut by_partition: BTreeMap<i32, Vec<_>> = BTreeMap::new();
    for r in got {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for (partition, recs) in by_partition {
        let expected: Vec<_> = sent.iter().filter(|s| s.0 == partition).collect();
        assert_eq!(recs.len(), expected.len());
        for (r, e) in recs.iter().zip(expected) {
            assert_eq!(r.offset, e.1, "offsets as acknowledged");
            assert_eq!(r.key.as_deref(), Some(e.2.as_bytes()));
            assert_eq!(r.value.as_deref(), Some(e.3.as_bytes()));
            assert_eq!(r.timestamp, Some(e.4));
            assert_eq!(
                r.headers,
                vec![
                    ("seq".to_string(), e.5.to_be_bytes().to_vec()),
                    ("src".to_string(), b"test".to_vec())
                ]
            );
        }
        let offsets: Vec<i64> = recs.iter().map(|r| r.offset).collect();
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "per-partition order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_round_trips() {
    let b = TestBroker::start(&[]).await;
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        b.create_topic(&topic, 1, &[]).await;
        let producer = b.producer(&[("compression.codec", codec), ("linger.ms", "50")]);
        let payloads: Vec<String> = (0..200)
            .map(|i| format!("{codec} record {i} {}", "abc".repeat(20)))
            .collect();
        // Enqueue everything first so librdkafka batches (and compresses) them.
        let futures: Vec<_> = payloads
            .iter()
            .map(|p| {
                producer
                    .send_result(FutureRecord::<str, _>::to(&topic).payload(p))
                    .map_err(|(e, _)| e)
                    .unwrap()
            })
            .collect();
        for f in futures {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        let consumer = b.consumer(&[]);
        let got = consume(&consumer, &topic, 1, Offset::Beginning, 200, WAIT);
        assert_eq!(got.len(), 200, "{codec}");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(
                r.value.as_deref().unwrap(),
                format!("{codec} record {i} {}", "abc".repeat(20)).as_bytes()
            );
        }
        // Stored as sent: the log holds compressed batches, fewer than the records.
        let part = b.broker().ctx.replicas.get(&topic, 0).unwrap();
        let read = part.read(0, 1 << 20, true).unwrap();
        let codecs: Vec<_> = fjord_broker::log::batch::complete_batches(&read.records)
            .map(|(_, h)| h.compression())
            .collect();
        let id = ["none", "gzip", "snappy", "lz4", "zstd"]
            .iter()
            .position(|c| *c == codec)
            .unwrap() as i16;
        // librdkafka sends a batch uncompressed when compressing would not shrink it.
        assert!(
            codecs.contains(&id),
            "{codec}: batches are stored compressed as sent: {codecs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_timestamp_finds_first_offset_at_or_after() {
    let b = TestBroker::start(&[]).await;
    b.create_topic("times", 1, &[]).await;
    let producer = b.producer(&[("linger.ms", "20")]);
    let base = 1_600_000_000_000i64;
    let futures: Vec<_> = (0..100i64)
        .map(|i| {
            let record = FutureRecord::<str, str>::to("times")
                .payload("x")
                .timestamp(base + i * 10);
            producer.send_result(record).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    for f in futures {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let consumer = b.consumer(&[]);
    for (ts, expected) in [
        (base, 0),
        (base + 5, 1),
        (base + 10, 1),
        (base + 555, 56),
        (base + 990, 99),
    ] {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("times", 0, Offset::Offset(ts)).unwrap();
        let res = consumer.offsets_for_times(tpl, WAIT).unwrap();
        let found = res.find_partition("times", 0).unwrap().offset();
        assert_eq!(found, Offset::Offset(expected), "timestamp {ts}");
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("times", 0, Offset::Offset(base + 10_000))
        .unwrap();
    let res = consumer.offsets_for_times(tpl, WAIT).unwrap();
    assert_eq!(
        res.find_partition("times", 0).unwrap().offset(),
        Offset::End,
        "past the last record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_record() {
    let mut b = TestBroker::start(&[]).await;
    b.create_topic("durable", 2, &[]).await;
    let producer = b.producer(&[("acks", "all")]);
    for i in 0..100 {
        let v = format!("v{i}");
        producer
            .send(FutureRecord::<str, _>::to("durable").payload(&v).partition(i % 2), WAIT)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    drop(producer);
    b.restart(&[]).await;
    let consumer = b.consumer(&[]);
    let got = consume(&consumer, "durable", 2, Offset::Beginning, 100, WAIT);
    assert_eq!(got.len(), 100);
    let mut values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    values.sort_by_key(|v| v[1..].parse::<u32>().unwrap());
    assert_eq!(values, (0..100).map(|i| format!("v{i}")).collect::<Vec<_>>());
    // New appends continue the offsets.
    let producer = b.producer(&[]);
    let delivery = producer
        .send(
            FutureRecord::<str, str>::to("durable").payload("after").partition(0),
            WAIT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(delivery.offset, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_roll_and_retention_move_earliest_offset() {
    let b = TestBroker::start(&[("log.retention.check.interval.ms", "100")]).await;
    b.create_topic("retained", 1, &[("segment.bytes", "4096"), ("retention.bytes", "8192")])
        .await;
    let producer = b.producer(&[("batch.size", "1000"), ("linger.ms", "0")]);
    for i in 0..200 {
        let v = format!("{i:04}{}", "r".repeat(200));
        producer
            .send(FutureRecord::<str, _>::to("retained").payload(&v), WAIT)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let consumer = b.consumer(&[]);
    let part = b.broker().ctx.replicas.get("retained", 0).unwrap();
    assert!(part.segment_count() >= 2, "segments rolled at segment.bytes");
    let low = common::eventually(WAIT, || {
        let (low, high) = consumer.fetch_watermarks("retained", 0, Duration::from_secs(5)).ok()?;
        (low > 0 && high == 200 && part.size_bytes() <= 8192 + 4096).then_some(low)
    })
    .await
    .expect("retention advances the earliest offset and bounds the log size");
    // Reading below the log start offset is out of range; auto.offset.reset=earliest lands on it.
    let consumer = b.consumer(&[("auto.offset.reset", "earliest")]);
    let got = consume(&consumer, "retained", 1, Offset::Offset(0), 1, WAIT);
    // Retention may still be deleting down to its bound meanwhile: the
    // consumer lands on the log start of some moment after `low`.
    assert!(
        (low..=part.log_start_offset()).contains(&got[0].offset),
        "{} not in {low}..={}",
        got[0].offset,
        part.log_start_offset()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_retries_through_cut_connections_without_duplicates() {
    let mut proxy = common::proxy::Proxy::bind().await;
    let advertised = format!("PLAINTEXT://{}", proxy.addr);
    let mut b = TestBroker::start(&[("advertised.listeners", &advertised)]).await;
    proxy.start(b.broker().kafka_addr);
    b.bootstrap = proxy.addr.to_string();
    b.create_topic("exactly-once", 1, &[]).await;
    let producer = b.producer(&[
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("max.in.flight.requests.per.connection", "5"),
        ("linger.ms", "2"),
        ("batch.num.messages", "50"),
        ("retry.backoff.ms", "10"),
        ("reconnect.backoff.ms", "10"),
        ("reconnect.backoff.max.ms", "100"),
    ]);
    const N: usize = 5000;
    let payloads: Vec<String> = (0..N).map(|i| format!("{i:06}")).collect();
    use rdkafka::producer::Producer;
    let mut futures = Vec::with_capacity(N);
    let mut cuts = 0;
    // Enqueue in chunks; once part of a chunk is acknowledged (so the
    // connection is up and the rest is in flight), cut every connection.
    for chunk in payloads.chunks(250) {
        let before = producer.in_flight_count();
        for p in chunk {
            let f = producer.send_result(FutureRecord::<str, _>::to("exactly-once").payload(p));
            futures.push(f.map_err(|(e, _)| e).expect("enqueue"));
        }
        let queued = before + chunk.len() as i32;
        common::eventually(WAIT, || (producer.in_flight_count() < queued).then_some(()))
            .await
            .expect("progress");
        cuts += proxy.cut();
    }
    for f in futures {
        f.await
            .unwrap()
            .map_err(|(e, _)| e)
            .expect("every record is acknowledged");
    }
    assert!(cuts > 0, "connections were cut mid-stream");
    let consumer = b.consumer(&[]);
    let got = consume(
        &consumer,
        "exactly-once",
        1,
        Offset::Beginning,
        N + 1,
        Duration::from_secs(10),
    );
    let values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(values.len(), N, "no duplicates, nothing lost");
    assert_eq!(values, payloads, "order kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_fetch_limits_is_still_delivered() {
    let b = TestBroker::start(&[]).await;
    b.create_topic("large", 1, &[("max.message.bytes", "5242880")]).await;
    let producer = b.producer(&[("message.max.bytes", "5242880"), ("linger.ms", "0")]);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    producer
        .send(FutureRecord::<str, _>::to("large").payload(&b"small"[..]), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .send(FutureRecord::<str, _>::to("large").payload(&big), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .send(FutureRecord::<str, _>::to("large").payload(&b"after"[..]), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let consumer = b.consumer(&[("fetch.max.bytes", "1048576"), ("max.partition.fetch.bytes", "65536")]);
    let got = consume(&consumer, "large", 1, Offset::Beginning, 3, WAIT);
    assert_eq!(got.len(), 3, "the large record is not stuck");
    assert_eq!(got[0].value.as_deref(), Some(&b"small"[..]));
    assert_eq!(
        got[1].value.as_deref(),
        Some(&big[..]),
        "delivered intact through sendfile"
    );
    assert_eq!(got[2].value.as_deref(), Some(&b"after"[..]));
}

/// Idempotent producer state is forgotten after `producer.id.expiration.ms`
/// without a batch, so it does not grow with every producer ever seen; the
/// producer itself goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_producer_ids_expire() {
    let b = TestBroker::start(&[
        ("producer.id.expiration.ms", "500"),
        ("producer.id.expiration.check.interval.ms", "50"),
    ])
    .await;
    b.create_topic("idem", 1, &[]).await;
    let producer = b.producer(&[("enable.idempotence", "true")]);
    let send = |v: &'static str| {
        let producer = producer.clone();
        async move {
            producer
                .send(FutureRecord::<str, _>::to("idem").payload(v), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap()
        }
    };
    send("one").await;
    let log = b.broker().ctx.replicas.get("idem", 0).unwrap();
    assert_eq!(log.producer_count(), 1);
    common::eventually(Duration::from_secs(10), || (log.producer_count() == 0).then_some(()))
        .await
        .expect("the idle producer id expires");
    send("two").await;
    assert_eq!(log.log_end_offset(), 2, "the expired producer still writes");
}
