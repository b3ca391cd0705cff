//! Consumer groups against the real broker process: committed offsets
//! survive kill -9, a kcat member killed with SIGKILL is expired, and a
//! kafka-python group works.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fjord_e2e::BrokerProcess;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);
const FAST_GROUPS: &[(&str, &str)] = &[
    ("group.initial.rebalance.delay.ms", "0"),
    ("group.min.session.timeout.ms", "500"),
];

fn client(b: &BrokerProcess) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", b.bootstrap())
        .set("broker.address.family", "v4");
    c
}

async fn setup(b: &BrokerProcess, topic: &str, partitions: i32, records: usize) {
    let admin: AdminClient<DefaultClientContext> = client(b).create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let p: FutureProducer = client(b).set("linger.ms", "5").create().unwrap();
    for i in 0..records {
        let v = format!("r{i}");
        let partition = (i % partitions as usize) as i32;
        p.send(FutureRecord::<str, _>::to(topic).payload(&v).partition(partition), WAIT)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

fn committed(b: &BrokerProcess, group: &str, topic: &str, partition: i32) -> (Offset, String) {
    let c: BaseConsumer = client(b).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = c.committed_offsets(tpl, WAIT).unwrap();
    let e = got.find_partition(topic, partition).unwrap();
    let out = (e.offset(), e.metadata().to_string());
    drop(got);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = BrokerProcess::start(&tmp.path().join("data"), FAST_GROUPS);
    setup(&b, "durable-offsets", 1, 10).await;
    {
        let c: BaseConsumer = client(&b).set("group.id", "crash-app").create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("durable-offsets", 0, Offset::Offset(7))
            .unwrap();
        tpl.find_partition("durable-offsets", 0)
            .unwrap()
            .set_metadata("before-crash");
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
    b.kill9();
    b.restart();
    let deadline = Instant::now() + WAIT;
    // Until the coordinator has loaded __consumer_offsets it answers COORDINATOR_LOAD_IN_PROGRESS; librdkafka retries.
    let got = loop {
        let got = committed(&b, "crash-app", "durable-offsets", 0);
        if got.0 != Offset::Invalid || Instant::now() > deadline {
            break got;
        }
    };
    assert_eq!(got, (Offset::Offset(7), "before-crash".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kcat_member_killed_with_sigkill_is_expired() {
    if Command::new("kcat")
        .arg("-V")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        fjord_e2e::skip(
            "a_kcat_member_killed_with_sigkill_is_expired",
            "kcat is not on PATH (apt-get install kcat)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&tmp.path().join("data"), FAST_GROUPS);
    setup(&b, "killed", 2, 0).await;
    let mut kcat = Command::new("kcat")
        .args([
            "-b",
            &b.bootstrap(),
            "-G",
            "kill-app",
            "killed",
            "-X",
            "session.timeout.ms=1500",
            "-X",
            "heartbeat.interval.ms=100",
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A librdkafka member in the same group; it gets partitions only once kcat's are freed.
    let member: BaseConsumer = client(&b)
        .set("group.id", "kill-app")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "100")
        .create()
        .unwrap();
    member.subscribe(&["killed"]).unwrap();
    let assigned = |m: &BaseConsumer| m.assignment().map(|a| a.count()).unwrap_or(0);
    let deadline = Instant::now() + WAIT;
    while assigned(&member) != 1 {
        assert!(Instant::now() < deadline, "two members never shared the partitions");
        let _ = member.poll(Duration::from_millis(50));
    }
    kcat.kill().unwrap(); // SIGKILL: no LeaveGroup
    kcat.wait().unwrap();
    let deadline = Instant::now() + WAIT;
    while assigned(&member) != 2 {
        assert!(Instant::now() < deadline, "the killed member's partition never moved");
        let _ = member.poll(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_python_group_consumes_every_record_once() {
    let has_kafka_python = Command::new("python3")
        .args(["-c", "import kafka"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_kafka_python {
        fjord_e2e::skip(
            "a_kafka_python_group_consumes_every_record_once",
            "python3 with kafka-python is needed (pip install kafka-python)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&tmp.path().join("data"), FAST_GROUPS);
    setup(&b, "py", 4, 200).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/group_consumer.py");
    let out = Command::new("python3")
        .arg(script)
        .args([&b.bootstrap(), "py", "py-app", "200"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8(out.stdout).unwrap();
    let line = report.lines().last().unwrap_or_default();
    assert!(line.contains("\"records\": 200"), "{line}");
    assert!(line.contains("\"distinct\": 200"), "{line}");
    for p in 0..4 {
        assert!(
            line.contains(&format!("\"{p}\": 50")),
            "partition {p} committed to its end: {line}"
        );
    }
}
