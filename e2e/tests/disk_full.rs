//! A full disk: appends fail with KAFKA_STORAGE_ERROR, nothing acknowledged is
//! lost, the broker keeps serving reads, and appends resume once space is freed.
//! Needs root to mount a small tmpfs; skips with the reason otherwise.

use std::process::Command;
use std::time::Duration;

use fjord_e2e::BrokerProcess;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_appends_cleanly_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .output();
    let ok = matches!(&mounted, Ok(o) if o.status.success());
    if !ok {
        fjord_e2e::skip(
            "disk_full_fails_appends_cleanly_and_recovers",
            &format!("mounting a 4 MiB tmpfs needs root and mount(8): {mounted:?}"),
        );
        return;
    }
    let _guard = Tmpfs(mnt.clone());
    // Leave about 1.5 MiB for the broker; the filler is deleted later to free space.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 2_500_000]).unwrap();
    let data = mnt.join("data");
    let b = BrokerProcess::start(
        &data,
        &[("log.index.size.max.bytes", "65536"), ("log.segment.bytes", "262144")],
    );
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", b.bootstrap())
        .set("broker.address.family", "v4")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "3000")
        .set("retries", "0");
    let p: FutureProducer = cfg.create().unwrap();
    let value = vec![b'd'; 50_000];
    let mut acked = 0usize;
    let mut storage_error = false;
    for _ in 0..200 {
        match p
            .send(
                FutureRecord::<str, _>::to("fill").payload(&value),
                Duration::from_secs(5),
            )
            .await
        {
            Ok(_) => acked += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::KafkaStorageError), _)) => {
                storage_error = true;
                break;
            }
            Err((e, _)) => panic!("unexpected error after {acked} records: {e}"),
        }
    }
    assert!(
        storage_error,
        "a full disk answers KAFKA_STORAGE_ERROR (after {acked} records)"
    );
    assert!(acked > 5);
    // Still serving: every acknowledged record reads back.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", "disk")
        .create()
        .unwrap();
    let (low, high) = consumer.fetch_watermarks("fill", 0, Duration::from_secs(10)).unwrap();
    assert_eq!((low, high), (0, acked as i64), "nothing torn is visible");
    // Free space: appends work again.
    std::fs::remove_file(&filler).unwrap();
    let d = p
        .send(
            FutureRecord::<str, _>::to("fill").payload(&value),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("appends resume once space is freed");
    assert_eq!(d.offset, acked as i64, "offsets continue without a gap");
    drop(b);
}
