//! kafka-python's transactional producer against the real broker process
//! (librdkafka's is in `broker/tests/transactions.rs`).

use std::process::Command;

use fjord_e2e::BrokerProcess;

#[test]
fn kafka_python_commits_aborts_and_sends_offsets_in_transactions() {
    let has_kafka_python = Command::new("python3")
        .args(["-c", "from kafka import KafkaProducer; KafkaProducer.init_transactions"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_kafka_python {
        fjord_e2e::skip(
            "kafka_python_commits_aborts_and_sends_offsets_in_transactions",
            "python3 with a kafka-python that has transactions (2.1+) is needed (pip install kafka-python)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The topic is created on first use (auto.create.topics.enable, one partition).
    let b = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/transactions.py");
    let out = Command::new("timeout")
        .args(["120", "python3"])
        .arg(script)
        .args([&b.bootstrap(), "py-tx-topic", "py-tx-group"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8(out.stdout).unwrap();
    let line = report.lines().last().unwrap_or_default();
    let committed =
        r#""read_committed": ["committed-0", "committed-1", "committed-2", "with-offsets-0", "with-offsets-1"]"#;
    assert!(
        line.contains(committed),
        "read_committed reads the committed records only: {line}"
    );
    assert!(
        line.contains(r#""aborted-0", "aborted-1""#),
        "read_uncommitted reads the aborted records too: {line}"
    );
    assert!(
        line.contains(r#""group_offset": 42"#),
        "the offsets sent in the transaction are committed with it: {line}"
    );
}
