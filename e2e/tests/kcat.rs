//! kcat (librdkafka 2.0 from Debian) against the real broker: metadata,
//! produce with keys and headers, consume, offsets by time, every codec.
//! Skips with the reason when kcat is not installed (`.ci/run` installs it).

use std::io::Write;
use std::process::{Command, Stdio};

use fjord_e2e::BrokerProcess;

fn kcat_available() -> bool {
    Command::new("kcat")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn kcat(b: &BrokerProcess, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("kcat")
        .arg("-b")
        .arg(b.bootstrap())
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat runs");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    // kcat exits by itself: -e at end of partition, -P at end of input; bound it anyway.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kcat {args:?} did not finish");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kcat_produces_and_consumes() {
    if !kcat_available() {
        fjord_e2e::skip(
            "kcat_produces_and_consumes",
            "kcat is not on PATH (apt-get install kcat)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b = BrokerProcess::start(&tmp.path().join("data"), &[("num.partitions", "1")]);

    let input: String = (0..100).map(|i| format!("key{i}:value {i}\n")).collect();
    kcat(&b, &["-P", "-t", "smoke", "-K", ":", "-H", "origin=kcat"], Some(&input));
    let out = kcat(&b, &["-C", "-t", "smoke", "-e", "-f", "%k|%s|%o|%h\n"], None);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 100);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("key{i}|value {i}|{i}|origin=kcat"));
    }

    let meta = kcat(&b, &["-L", "-t", "smoke"], None);
    assert!(meta.contains("topic \"smoke\" with 1 partitions"), "{meta}");

    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("smoke-{codec}");
        let input: String = (0..50)
            .map(|i| format!("{codec} message {i} {}\n", "z".repeat(64)))
            .collect();
        kcat(&b, &["-P", "-t", &topic, "-z", codec], Some(&input));
        let out = kcat(&b, &["-C", "-t", &topic, "-e", "-f", "%s\n"], None);
        assert_eq!(out, input, "{codec}");
        // Stored as kcat compressed it: the codec bits of the first batch's attributes.
        let dir = tmp.path().join("data").join(format!("{topic}-0"));
        let segment = std::fs::read(dir.join(format!("{:020}.log", 0))).unwrap();
        let attributes = i16::from_be_bytes([segment[21], segment[22]]);
        let id = ["none", "gzip", "snappy", "lz4", "zstd"]
            .iter()
            .position(|c| *c == codec)
            .unwrap() as i16;
        assert_eq!(attributes & 7, id, "{codec} batch stored compressed");
    }

    // Offsets by timestamp: everything was written after t0.
    let offsets = kcat(&b, &["-Q", "-t", "smoke:0:1000"], None);
    assert!(offsets.contains("smoke [0] offset 0"), "{offsets}");
}
