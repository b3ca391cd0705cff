//! `fjord-verifiable`: Kafka's VerifiableProducer and VerifiableConsumer in one
//! process, for runs where a fault or an operator action (a roll, a scale, a
//! replication-factor change) happens under load. Shipped in the image, so the
//! real-node suite runs it as a pod.
//!
//! `run` produces numbered records (idempotent, acks=all, librdkafka retrying
//! for as long as it takes) at a steady rate and consumes them in a consumer
//! group that commits as it goes, until the stop file appears (`stop` creates
//! it). Then it verifies, and exits 1 on any violation:
//! - every acknowledged record is in the log exactly once, at the partition
//!   and offset its acknowledgement named, and each partition holds its
//!   records in the order they were sent;
//! - the group's committed offsets, sampled every second throughout, never
//!   went backwards, and the group ends committed at every partition's end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const DEFAULT_STOP_FILE: &str = "/tmp/fjord-verifiable.stop";
/// Records carry their sequence number in this many leading digits.
const SEQ_DIGITS: usize = 12;

#[derive(Parser)]
#[command(about = "Verifiable producer and consumer group under faults")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce and consume until the stop file appears, then verify.
    Run(RunArgs),
    /// Tell a `run` in this container to stop (creates its stop file).
    Stop {
        #[arg(long, default_value = DEFAULT_STOP_FILE)]
        stop_file: PathBuf,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    /// Records per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Records sent as fast as they are acknowledged before the paced load
    /// starts (the data an operation then has to move or keep).
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Bytes per record value (at least the sequence number's digits).
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    #[arg(long, default_value = DEFAULT_STOP_FILE)]
    stop_file: PathBuf,
    /// Stops by itself after this long (a bound, not the plan).
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
    /// Bound on the final flush, catch-up and verification read.
    #[arg(long, default_value_t = 300)]
    drain_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Stop { stop_file } => {
            std::fs::write(&stop_file, b"stop").with_context(|| format!("writing {}", stop_file.display()))
        }
        Command::Run(args) => run(args),
    }
}

fn log(start: Instant, line: impl AsRef<str>) {
    println!("[verifiable +{:.1}s] {}", start.elapsed().as_secs_f64(), line.as_ref());
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Where each acknowledged record went, by sequence number.
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<u64, (i32, i64)>,
    failed: BTreeMap<u64, String>,
}

struct Delivery {
    ledger: Arc<Mutex<Ledger>>,
    client_errors: Arc<AtomicU64>,
}

impl ClientContext for Delivery {
    fn error(&self, error: KafkaError, reason: &str) {
        // Transient while brokers restart (ALL_BROKERS_DOWN, transport
        // failures); librdkafka keeps retrying. Counted, not fatal.
        self.client_errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("producer client error: {error}: {reason}");
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        let mut ledger = self.ledger.lock().expect("ledger");
        match result {
            Ok(m) => {
                ledger.acked.insert(*seq, (m.partition(), m.offset()));
            }
            Err((e, _)) => {
                ledger.failed.insert(*seq, e.to_string());
            }
        }
    }
}

struct GroupContext {
    rebalances: AtomicU64,
    client_errors: AtomicU64,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.client_errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("consumer client error: {error}: {reason}");
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            self.rebalances.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the group member saw; `backwards` lists every committed offset that
/// went below one sampled before.
#[derive(Default)]
struct GroupReport {
    consumed: u64,
    commits: u64,
    commit_errors: u64,
    samples: u64,
    sample_errors: u64,
    backwards: Vec<String>,
    final_committed: BTreeMap<i32, i64>,
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let _ = std::fs::remove_file(&args.stop_file);
    let partitions = partition_count(&args)?;
    // What the topic held before this run is not this run's to verify.
    let from = end_offsets(&args, partitions)?;
    log(
        start,
        format!("{} has {partitions} partitions, ending at {from:?}", args.topic),
    );

    let stop_producing = Arc::new(AtomicBool::new(false));
    let group_targets: Arc<Mutex<Option<BTreeMap<i32, i64>>>> = Arc::default();
    let group = {
        let (args, targets) = (args.clone(), group_targets.clone());
        std::thread::spawn(move || consume_in_group(&args, partitions, start, &targets))
    };
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producer_errors = Arc::new(AtomicU64::new(0));
    let producer = {
        let (args, ledger, stop, errors) = (
            args.clone(),
            ledger.clone(),
            stop_producing.clone(),
            producer_errors.clone(),
        );
        std::thread::spawn(move || produce(&args, partitions, start, ledger, errors, &stop))
    };

    let deadline = start + Duration::from_secs(args.max_seconds);
    while !args.stop_file.exists() && Instant::now() < deadline && !producer.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_producing.store(true, Ordering::Relaxed);
    let sent = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    let (acked, failed) = {
        let l = ledger.lock().expect("ledger");
        (l.acked.len(), l.failed.len())
    };
    log(
        start,
        format!(
            "stopped producing: sent {sent}, acknowledged {acked}, failed {failed}, client errors {}",
            producer_errors.load(Ordering::Relaxed)
        ),
    );

    let read = read_back(&args, &from, start)?;
    let ends: BTreeMap<i32, i64> = read.iter().map(|(p, r)| (*p, r.end)).collect();
    *group_targets.lock().expect("targets") = Some(ends.clone());
    let report = group.join().map_err(|_| anyhow::anyhow!("group thread panicked"))??;

    let mut violations = check_log(&ledger.lock().expect("ledger"), sent, &read);
    violations.extend(report.backwards.iter().cloned());
    for (p, end) in &ends {
        let committed = report.final_committed.get(p).copied().unwrap_or(-1);
        if committed != *end {
            violations.push(format!(
                "group {} ends committed at {committed} in partition {p}, not its end {end}",
                args.group
            ));
        }
    }
    log(
        start,
        format!(
            "group {}: consumed {} (redeliveries included), {} commits ({} failed), \
             committed offsets sampled {} times ({} samples failed), never backwards: {}",
            args.group,
            report.consumed,
            report.commits,
            report.commit_errors,
            report.samples,
            report.sample_errors,
            report.backwards.is_empty(),
        ),
    );
    if failed > 0 {
        let l = ledger.lock().expect("ledger");
        let first: Vec<String> = l.failed.iter().take(5).map(|(s, e)| format!("{s}: {e}")).collect();
        log(
            start,
            format!("failed deliveries (not acknowledged, may or may not be in the log): {first:?}"),
        );
    }
    if violations.is_empty() {
        log(
            start,
            format!(
                "OK: {acked} acknowledged records each read back once at its offset, in order per partition; \
                 committed offsets never went backwards"
            ),
        );
        Ok(())
    } else {
        for v in violations.iter().take(50) {
            log(start, format!("VIOLATION: {v}"));
        }
        bail!("{} violations", violations.len())
    }
}

fn partition_count(args: &RunArgs) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = config(&args.bootstrap).create()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10)) {
            Ok(md) => {
                if let Some(t) = md
                    .topics()
                    .first()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                {
                    return Ok(t.partitions().len() as i32);
                }
            }
            Err(e) if Instant::now() >= deadline => bail!("metadata of {}: {e}", args.topic),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            bail!("{} has no partitions in the metadata", args.topic);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Each partition's high watermark now.
fn end_offsets(args: &RunArgs, partitions: i32) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = config(&args.bootstrap).create()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = loop {
            match consumer.fetch_watermarks(&args.topic, p, Duration::from_secs(10)) {
                Ok(w) => break w,
                Err(e) if Instant::now() >= deadline => bail!("watermarks of {}-{p}: {e}", args.topic),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        ends.insert(p, high);
    }
    Ok(ends)
}

fn value(seq: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{seq:0width$}", width = SEQ_DIGITS).into_bytes();
    v.resize(size.max(SEQ_DIGITS), b'.');
    v
}

fn seq_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..SEQ_DIGITS)?).ok()?.parse().ok()
}

/// Sends the preload, then `rate` records a second, record `seq` to partition
/// `seq % partitions` (so each partition's records are sent in increasing
/// order), until `stop`; then waits for every delivery report. Returns how
/// many it sent.
fn produce(
    args: &RunArgs,
    partitions: i32,
    start: Instant,
    ledger: Arc<Mutex<Ledger>>,
    client_errors: Arc<AtomicU64>,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let producer: ThreadedProducer<Delivery> = config(&args.bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // 0: no delivery timeout; a record is retried until it is acknowledged.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .create_with_context(Delivery { ledger, client_errors })?;
    let mut seq = 0u64;
    let send_until = |seq: &mut u64, due: u64| -> anyhow::Result<()> {
        while *seq < due && !stop.load(Ordering::Relaxed) {
            let payload = value(*seq, args.record_size);
            let record = BaseRecord::with_opaque_to(&args.topic, Box::new(*seq))
                .partition((*seq % partitions as u64) as i32)
                .payload(&payload);
            match producer.send::<(), _>(record) {
                Ok(()) => *seq += 1,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err((e, _)) => bail!("send of record {seq}: {e}"),
            }
        }
        Ok(())
    };
    let all_acknowledged = || -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
        while producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                bail!(
                    "{} records still unacknowledged after {}s",
                    producer.in_flight_count(),
                    args.drain_seconds
                );
            }
            let _ = producer.flush(Duration::from_secs(1));
        }
        Ok(())
    };
    if args.preload > 0 {
        send_until(&mut seq, args.preload)?;
        all_acknowledged()?;
        log(start, format!("preloaded {seq} records"));
    }
    log(start, format!("producing {} records/s", args.rate));
    let (paced_from, started) = (seq, Instant::now());
    while !stop.load(Ordering::Relaxed) {
        send_until(
            &mut seq,
            paced_from + (started.elapsed().as_secs_f64() * args.rate as f64) as u64,
        )?;
        std::thread::sleep(Duration::from_millis(10));
    }
    all_acknowledged()?;
    Ok(seq)
}

/// One partition as a fresh reader found it: (offset, sequence number) of
/// every record from `first` (its end when the run began), and its end (high
/// watermark) when read.
struct Partition {
    records: Vec<(i64, u64)>,
    first: i64,
    end: i64,
}

/// Reads every partition from where this run began (`from`) to its end.
fn read_back(args: &RunArgs, from: &BTreeMap<i32, i64>, start: Instant) -> anyhow::Result<BTreeMap<i32, Partition>> {
    let consumer: BaseConsumer = config(&args.bootstrap)
        .set("group.id", format!("{}-verifier", args.group))
        .set("enable.auto.commit", "false")
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    let mut read = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for (&p, &first) in from {
        let (low, high) = loop {
            match consumer.fetch_watermarks(&args.topic, p, Duration::from_secs(10)) {
                Ok(w) => break w,
                Err(e) if Instant::now() >= deadline => bail!("watermarks of {}-{p}: {e}", args.topic),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        if low > first {
            bail!(
                "{}-{p} starts at offset {low}, past {first}: records were deleted",
                args.topic
            );
        }
        read.insert(
            p,
            Partition {
                records: Vec::new(),
                first,
                end: high,
            },
        );
        assignment.add_partition_offset(&args.topic, p, Offset::Offset(first))?;
    }
    consumer.assign(&assignment)?;
    let mut remaining: Vec<i32> = read.iter().filter(|(_, r)| r.end > r.first).map(|(p, _)| *p).collect();
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            bail!("the verification read did not reach the end of partitions {remaining:?}");
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = message.with_context(|| "verification read")?;
        let part = read.get_mut(&m.partition()).context("a partition not assigned")?;
        let seq = m.payload().and_then(seq_of).with_context(|| {
            format!(
                "{}-{} offset {}: not a record of this run",
                args.topic,
                m.partition(),
                m.offset()
            )
        })?;
        part.records.push((m.offset(), seq));
        if m.offset() + 1 >= part.end {
            remaining.retain(|p| *p != m.partition());
        }
    }
    let total: usize = read.values().map(|r| r.records.len()).sum();
    log(
        start,
        format!("read back {total} records from {} partitions", from.len()),
    );
    Ok(read)
}

/// Checks the log as read against the acknowledgements.
fn check_log(ledger: &Ledger, sent: u64, read: &BTreeMap<i32, Partition>) -> Vec<String> {
    let mut violations = Vec::new();
    let mut found: BTreeMap<u64, (i32, i64)> = BTreeMap::new();
    for (p, part) in read {
        let mut previous: Option<u64> = None;
        for &(offset, seq) in &part.records {
            if seq >= sent {
                violations.push(format!("partition {p} offset {offset}: record {seq} was never sent"));
            }
            if let Some((q, o)) = found.insert(seq, (*p, offset)) {
                violations.push(format!(
                    "record {seq} twice: partition {q} offset {o} and partition {p} offset {offset}"
                ));
            }
            if previous.is_some_and(|prev| seq <= prev) {
                violations.push(format!(
                    "partition {p} offset {offset}: record {seq} after record {}",
                    previous.unwrap_or_default()
                ));
            }
            previous = Some(seq);
        }
    }
    for (seq, at) in &ledger.acked {
        match found.get(seq) {
            None => violations.push(format!(
                "acknowledged record {seq} (partition {} offset {}) is not in the log",
                at.0, at.1
            )),
            Some(got) if got != at => violations.push(format!(
                "acknowledged record {seq} at partition {} offset {}, found at partition {} offset {}",
                at.0, at.1, got.0, got.1
            )),
            Some(_) => {}
        }
    }
    violations
}

/// A group member that commits every 500 ms and samples the group's committed
/// offsets every second, until the producer stopped and it has consumed and
/// committed every partition to the end the verification read found.
fn consume_in_group(
    args: &RunArgs,
    partitions: i32,
    start: Instant,
    targets: &Mutex<Option<BTreeMap<i32, i64>>>,
) -> anyhow::Result<GroupReport> {
    let consumer: BaseConsumer<GroupContext> = config(&args.bootstrap)
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(GroupContext {
            rebalances: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
        })?;
    consumer.subscribe(&[&args.topic])?;
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(&args.topic, p);
    }
    let mut report = GroupReport::default();
    let mut highest: BTreeMap<i32, i64> = BTreeMap::new();
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut last_commit, mut last_sample) = (Instant::now(), Instant::now());
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            match message {
                Ok(m) => {
                    report.consumed += 1;
                    positions.insert(m.partition(), m.offset() + 1);
                }
                Err(e) => eprintln!("group consumer: {e}"),
            }
        }
        let target = targets.lock().expect("targets").clone();
        let done = target.as_ref().is_some_and(|t| {
            t.iter()
                .all(|(p, end)| positions.get(p).copied().unwrap_or(0) >= *end || *end == 0)
        });
        if last_commit.elapsed() >= Duration::from_millis(500) || done {
            last_commit = Instant::now();
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => report.commits += 1,
                // Nothing consumed since the last commit, or the coordinator moving.
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    report.commit_errors += 1;
                    eprintln!("group commit: {e}");
                }
            }
        }
        if last_sample.elapsed() >= Duration::from_secs(1) || done {
            last_sample = Instant::now();
            match consumer.committed_offsets(all.clone(), Duration::from_secs(5)) {
                Ok(committed) => {
                    report.samples += 1;
                    for e in committed.elements() {
                        let Offset::Offset(o) = e.offset() else { continue };
                        let before = highest.entry(e.partition()).or_insert(o);
                        if o < *before {
                            report.backwards.push(format!(
                                "group {}: committed offset of partition {} went back from {} to {o}",
                                args.group,
                                e.partition(),
                                *before
                            ));
                        }
                        *before = (*before).max(o);
                        report.final_committed.insert(e.partition(), o);
                    }
                }
                Err(e) => {
                    report.sample_errors += 1;
                    eprintln!("committed offsets: {e}");
                }
            }
        }
        if let Some(t) = &target {
            let deadline = *drain_deadline.get_or_insert(Instant::now() + Duration::from_secs(args.drain_seconds));
            let committed_all = t
                .iter()
                .all(|(p, end)| report.final_committed.get(p).copied().unwrap_or(0) >= *end || *end == 0);
            if done && committed_all {
                break;
            }
            if Instant::now() >= deadline {
                log(
                    start,
                    format!("group {} did not consume and commit to the end in time", args.group),
                );
                break;
            }
        }
    }
    // Partitions with no records commit nothing; count them at 0 like their end.
    if let Some(t) = targets.lock().expect("targets").as_ref() {
        for (p, end) in t {
            if *end == 0 {
                report.final_committed.entry(*p).or_insert(0);
            }
        }
    }
    log(
        start,
        format!(
            "group {}: {} assignments, {} client errors",
            args.group,
            consumer.context().rebalances.load(Ordering::Relaxed),
            consumer.context().client_errors.load(Ordering::Relaxed)
        ),
    );
    Ok(report)
}
