//! The transactional produce benchmark of `fjord-load`: idempotent acks=all
//! produce next to transactional produce committing every N records and
//! every T ms, on one broker: MB/s, commit latency and broker CPU per GB.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{cpu_seconds, BrokerProcess};

/// How a run commits.
#[derive(Debug, Clone, Copy)]
pub enum Commits {
    /// Idempotent, no transactions.
    None,
    /// A transaction per this many records.
    EveryRecords(usize),
    /// A transaction per this much time.
    Every(Duration),
}

pub struct TxnRun {
    pub mbs: f64,
    pub records_per_s: f64,
    pub broker_cpu_per_gb: f64,
    pub transactions: usize,
    /// Commit latency percentiles in ms (0 without transactions).
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Commits the open transaction; answers the milliseconds it took. The
/// delivery reports are served here first: rust-rdkafka's `flush` (which
/// `commit_transaction` calls) polls in 100 ms steps once the last report is
/// served, which would add up to 100 ms per commit that no broker causes.
fn commit(producer: &BaseProducer, t: Duration) -> f64 {
    let at = Instant::now();
    while producer.in_flight_count() > 0 && at.elapsed() < t {
        producer.poll(Duration::from_millis(1));
    }
    producer.commit_transaction(t).expect("commit_transaction");
    at.elapsed().as_secs_f64() * 1000.0
}

/// Produces `records` of `size` bytes to partition 0 of `topic` (created
/// by the caller) as `commits` says.
pub fn run(broker: &BrokerProcess, topic: &str, records: usize, size: usize, commits: Commits, id: &str) -> TxnRun {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap())
        .set("broker.address.family", "v4")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    if !matches!(commits, Commits::None) {
        c.set("transactional.id", id);
    }
    let producer: BaseProducer = c.create().expect("a producer");
    let t = Duration::from_secs(60);
    if !matches!(commits, Commits::None) {
        producer.init_transactions(t).expect("init_transactions");
    }
    let payload = vec![b'x'; size];
    let pid = broker.pid().expect("a running broker");
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let mut commit_ms = Vec::new();
    let (mut in_txn, mut txn_started) = (0usize, Instant::now());
    let begin = |p: &BaseProducer| {
        if !matches!(commits, Commits::None) {
            p.begin_transaction().expect("begin_transaction");
        }
    };
    begin(&producer);
    for _ in 0..records {
        loop {
            match producer.send(BaseRecord::<(), [u8]>::to(topic).partition(0).payload(&payload)) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
        in_txn += 1;
        let due = match commits {
            Commits::None => false,
            Commits::EveryRecords(n) => in_txn >= n,
            Commits::Every(d) => txn_started.elapsed() >= d,
        };
        if due {
            commit_ms.push(commit(&producer, t));
            in_txn = 0;
            txn_started = Instant::now();
            begin(&producer);
        }
    }
    match commits {
        Commits::None => producer.flush(t).expect("flush"),
        _ => {
            commit_ms.push(commit(&producer, t));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(cpu_before) - cpu_before;
    let bytes = (records * size) as f64;
    commit_ms.sort_by(f64::total_cmp);
    TxnRun {
        mbs: bytes / secs / 1e6,
        records_per_s: records as f64 / secs,
        broker_cpu_per_gb: cpu / (bytes / 1e9),
        transactions: commit_ms.len(),
        commit_p50_ms: percentile(&commit_ms, 0.5),
        commit_p99_ms: percentile(&commit_ms, 0.99),
    }
}
