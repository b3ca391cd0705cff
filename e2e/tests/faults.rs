//! Crash and fault tests against the real broker process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fjord_e2e::BrokerProcess;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const WAIT: Duration = Duration::from_secs(30);

fn client(b: &BrokerProcess) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", b.bootstrap())
        .set("broker.address.family", "v4");
    c
}

async fn create_topic(b: &BrokerProcess, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = client(b).create().unwrap();
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    admin.create_topics(&[t], &AdminOptions::new()).await.unwrap()[0]
        .as_ref()
        .unwrap();
}

fn producer(b: &BrokerProcess, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = client(b);
    c.set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

/// Produces `values` to one partition, one at a time, returning their offsets.
async fn produce_each(p: &FutureProducer, topic: &str, partition: i32, values: &[String]) -> Vec<i64> {
    let mut offsets = Vec::new();
    for v in values {
        let d = p
            .send(FutureRecord::<str, _>::to(topic).payload(v).partition(partition), WAIT)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        offsets.push(d.offset);
    }
    offsets
}

fn read_all(b: &BrokerProcess, topic: &str, partitions: i32, expect: usize) -> Vec<(i32, i64, String)> {
    let consumer: BaseConsumer = client(b)
        .set("group.id", "e2e")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    fjord_e2e::assign_from_beginning(&consumer, topic, partitions);
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < expect && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
    }
    // A short extra poll would reveal duplicates beyond `expect`.
    let extra_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < extra_until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            out.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
    }
    out
}

fn active_segment(data: &Path, dir: &str) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(data.join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut b = BrokerProcess::start(&data, &[]);
    create_topic(&b, "acked", 2, &[]).await;
    let p = producer(&b, &[("enable.idempotence", "true")]);
    let values: Vec<String> = (0..2000).map(|i| format!("rec-{i:05}")).collect();
    let futures: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            p.send_result(FutureRecord::<str, _>::to("acked").payload(v).partition((i % 2) as i32))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for f in futures {
        f.await.unwrap().map_err(|(e, _)| e).expect("acknowledged");
    }
    drop(p);
    b.kill9();
    assert!(
        !data.join(".kafka_cleanshutdown").exists(),
        "no clean shutdown marker after kill -9"
    );
    b.restart();
    let got = read_all(&b, "acked", 2, 2000);
    assert_eq!(got.len(), 2000, "every acknowledged record survives, once");
    for part in 0..2 {
        let vals: Vec<&String> = got.iter().filter(|r| r.0 == part).map(|r| &r.2).collect();
        let expected: Vec<&String> = values
            .iter()
            .enumerate()
            .filter(|(i, _)| (*i % 2) as i32 == part)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(vals, expected, "partition {part} keeps order");
    }
    // The log continues where it was.
    let p = producer(&b, &[]);
    assert_eq!(produce_each(&p, "acked", 0, &["after".to_string()]).await, vec![1000]);
    b.stop();
    assert!(
        data.join(".kafka_cleanshutdown").exists(),
        "clean shutdown writes the marker"
    );
}

/// Writes `n` single-record batches, kills the broker and returns the data dir.
async fn write_then_crash(b: &mut BrokerProcess, topic: &str, n: usize) -> Vec<String> {
    create_topic(b, topic, 1, &[]).await;
    let p = producer(b, &[("linger.ms", "0")]);
    let values: Vec<String> = (0..n).map(|i| format!("{topic}-{i:04}-{}", "x".repeat(100))).collect();
    let offsets = produce_each(&p, topic, 0, &values).await;
    assert_eq!(offsets, (0..n as i64).collect::<Vec<_>>());
    drop(p);
    b.kill9();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_and_earlier_batches_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut b = BrokerProcess::start(&data, &[]);
    let values = write_then_crash(&mut b, "torn", 50).await;
    let seg = active_segment(&data, "torn-0");
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 9)
        .unwrap();
    b.restart();
    assert!(
        b.log_text().contains("truncating invalid tail"),
        "recovery reports the cut"
    );
    let got = read_all(&b, "torn", 1, 49);
    let vals: Vec<String> = got.iter().map(|r| r.2.clone()).collect();
    assert_eq!(vals, values[..49].to_vec(), "only the torn batch is gone");
    let p = producer(&b, &[]);
    assert_eq!(produce_each(&p, "torn", 0, &["next".to_string()]).await, vec![49]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_last_batch_drops_only_that_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut b = BrokerProcess::start(&data, &[]);
    let values = write_then_crash(&mut b, "flipped", 50).await;
    let seg = active_segment(&data, "flipped-0");
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    b.restart();
    let got = read_all(&b, "flipped", 1, 49);
    let vals: Vec<String> = got.iter().map(|r| r.2.clone()).collect();
    assert_eq!(vals, values[..49].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_broker_delays_but_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&tmp.path().join("data"), &[]);
    create_topic(&b, "paused", 1, &[]).await;
    let p = producer(&b, &[("enable.idempotence", "true")]);
    let values: Vec<String> = (0..300).map(|i| format!("p{i:04}")).collect();
    b.pause();
    let futures: Vec<_> = values
        .iter()
        .map(|v| {
            p.send_result(FutureRecord::<str, _>::to("paused").payload(v))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    // The fault: the broker stays stopped for half a second with every record queued.
    use rdkafka::producer::Producer;
    assert_eq!(p.in_flight_count(), 300, "nothing can be acknowledged while stopped");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.in_flight_count(), 300);
    b.resume();
    for f in futures {
        f.await
            .unwrap()
            .map_err(|(e, _)| e)
            .expect("acknowledged after SIGCONT");
    }
    let vals: Vec<String> = read_all(&b, "paused", 1, 300).into_iter().map(|r| r.2).collect();
    assert_eq!(vals, values);
}

/// Kafka flushes a segment when it rolls and moves the recovery point past
/// it: after several rolls and a kill -9, recovery scans only the active
/// segment, not everything written since the start, and keeps every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_kill_9_scans_only_what_was_not_flushed_at_a_roll() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut b = BrokerProcess::start(
        &data,
        &[
            ("log.flush.scheduler.interval.ms", "50"),
            ("log.flush.offset.checkpoint.interval.ms", "50"),
        ],
    );
    create_topic(&b, "rolled", 1, &[("segment.bytes", "20000")]).await;
    let p = producer(&b, &[("linger.ms", "0")]);
    let values: Vec<String> = (0..300).map(|i| format!("rolled-{i:04}-{}", "x".repeat(300))).collect();
    produce_each(&p, "rolled", 0, &values).await;
    drop(p);
    let segments = std::fs::read_dir(data.join("rolled-0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count();
    assert!(segments >= 4, "the topic rolled several times ({segments} segments)");
    // Wait for the flush after the last roll and a checkpoint of the recovery point at the active segment.
    let active_base: i64 = active_segment(&data, "rolled-0")
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a numeric segment name");
    let checkpointed = || {
        std::fs::read_to_string(data.join("recovery-point-offset-checkpoint"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("rolled 0 ").and_then(|o| o.trim().parse::<i64>().ok()))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while checkpointed() < Some(active_base) {
        assert!(
            Instant::now() < deadline,
            "recovery point never reached {active_base}: {:?}",
            checkpointed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.kill9();
    b.restart();
    let log = b.log_text();
    let line = log
        .lines()
        .rfind(|l| l.contains("recovering the segments past the recovery point") && l.contains("rolled-0"))
        .unwrap_or_else(|| panic!("no recovery line for rolled-0 in:\n{log}"));
    assert!(
        line.contains("segments_scanned=1 "),
        "only the active segment is scanned: {line}"
    );
    let got = read_all(&b, "rolled", 1, values.len());
    assert_eq!(
        got.into_iter().map(|r| r.2).collect::<Vec<_>>(),
        values,
        "every record kept"
    );
}
