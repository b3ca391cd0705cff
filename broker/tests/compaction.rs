//! A compacted topic with a real client: keyless records are refused, many
//! updates per key shrink to the newest, offsets stay, tombstones go after
//! `delete.retention.ms`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);

async fn put(p: &FutureProducer, key: &str, value: Option<&str>) -> i64 {
    let mut r = FutureRecord::<str, str>::to("compacted").key(key).partition(0);
    if let Some(v) = value {
        r = r.payload(v);
    }
    p.send(r, WAIT).await.map_err(|(e, _)| e).unwrap().offset
}

/// Every record from the start: (offset, key, value).
fn read_all(b: &TestBroker) -> Vec<(i64, String, Option<String>)> {
    let consumer: BaseConsumer = b.consumer(&[]);
    let (_, high) = consumer.fetch_watermarks("compacted", 0, WAIT).unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("compacted", 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out
        .last()
        .is_none_or(|(o, _, _): &(i64, String, Option<String>)| *o < high - 1)
        && Instant::now() < deadline
    {
        if let Some(m) = consumer.poll(Duration::from_millis(50)) {
            let m = m.unwrap();
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            out.push((
                m.offset(),
                key,
                m.payload().map(|v| String::from_utf8(v.to_vec()).unwrap()),
            ));
        }
    }
    drop(tpl);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_newest_value_per_key_and_drops_old_tombstones() {
    let b = TestBroker::start(&[("log.cleaner.backoff.ms", "100")]).await;
    b.create_topic(
        "compacted",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "2048"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "1000"),
        ],
    )
    .await;
    let p = b.producer(&[("linger.ms", "0")]);

    let keyless = p
        .send(FutureRecord::<str, str>::to("compacted").payload("no key"), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap_err();
    assert_eq!(keyless, KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord));

    let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for round in 0..30 {
        for k in 0..10 {
            let (key, value) = (format!("key{k}"), format!("key{k}-v{round}"));
            let offset = put(&p, &key, Some(&value)).await;
            newest.insert(key, (offset, value));
        }
    }
    let part = b.broker().ctx.replicas.get("compacted", 0).unwrap();
    // Everything ever appended (the cleaner may already be at work while we produce).
    let written = b.broker().ctx.metrics.bytes_in.with_label_values(&["compacted"]).get();
    common::eventually(WAIT, || (part.size_bytes() < written / 3).then_some(()))
        .await
        .expect("the cleaner shrinks the log");

    let records = read_all(&b);
    assert!(
        records.len() < 100,
        "updates were compacted away: {} records left",
        records.len()
    );
    assert!(
        records.windows(2).all(|w| w[0].0 < w[1].0),
        "offsets increase (with gaps)"
    );
    let mut last: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for (offset, key, value) in &records {
        last.insert(key.clone(), (*offset, value.clone().unwrap()));
    }
    assert_eq!(last, newest, "each key's newest value at the offset it was written at");

    // Tombstones for half the keys: gone, with their values, after delete.retention.ms.
    for k in 0..5 {
        put(&p, &format!("key{k}"), None).await;
    }
    let deadline = Instant::now() + WAIT;
    let mut filler = 0;
    loop {
        assert!(Instant::now() < deadline, "tombstones were not removed");
        // New dirty data keeps the cleaner going and rolls the tombstones out of the active segment.
        for _ in 0..10 {
            put(&p, &format!("filler{}", filler % 3), Some(&"f".repeat(100))).await;
            filler += 1;
        }
        let records = read_all(&b);
        let deleted = |k: &str| (0..5).any(|i| k == format!("key{i}"));
        if !records.iter().any(|(_, k, _)| deleted(k)) {
            let kept: Vec<&String> = records.iter().map(|r| &r.1).filter(|k| k.starts_with("key")).collect();
            assert_eq!(kept, vec!["key5", "key6", "key7", "key8", "key9"]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
