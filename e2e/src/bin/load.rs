//! `fjord-load`: an end-to-end produce/consume load against a real broker
//! process with librdkafka, next to the machine's own limits measured in the
//! same run (buffered sequential write, page-cache read).
//!
//! Prints MB/s and records/s of payload, delivery latency p50/p99/p999 and
//! broker CPU-seconds per GB moved.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use fjord_e2e::{cpu_seconds, free_port, BrokerProcess};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(about = "End-to-end Fjord load with librdkafka")]
struct Args {
    /// Records per run.
    #[arg(long, default_value_t = 400_000)]
    records: usize,
    /// Record size in bytes.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Partition counts to run, comma separated.
    #[arg(long, default_value = "1,3")]
    partitions: String,
    /// Bytes for the disk and page-cache baselines (default: the bytes the produce run writes).
    #[arg(long)]
    baseline_bytes: Option<usize>,
    /// Records per second for the latency run (a rate the broker sustains, not saturation).
    #[arg(long, default_value_t = 20_000)]
    latency_rate: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 5)]
    latency_seconds: u64,
    /// Records for the consumer-group run (3 members, 6 partitions, auto commit); 0 skips it.
    #[arg(long, default_value_t = 300_000)]
    group_records: usize,
    /// max.bytes (and per-partition max bytes) of the raw fetch run.
    #[arg(long, default_value_t = 4 << 20)]
    raw_fetch_max_bytes: i32,
    /// Consumes with librdkafka's default settings per partition count (the median is printed).
    #[arg(long, default_value_t = 3)]
    default_consume_runs: usize,
    /// Also run three brokers as one cluster (3 partitions, one leader each).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cluster: bool,
    /// Records per transactional produce run (idempotent, commit every 1000
    /// records, commit every 100 ms); 0 skips them.
    #[arg(long, default_value_t = 200_000)]
    txn_records: usize,
    /// Also run the durable (flush.messages=1) ingest.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    durable: bool,
    /// Partition counts (RF 3, three brokers at default settings) for the
    /// failover run: SIGKILL of a partition leader, time until its
    /// partitions are led elsewhere and an acks=all record is acknowledged.
    #[arg(long, default_value = "100,3000")]
    failover_partitions: String,
}

fn client_config(broker: &BrokerProcess) -> ClientConfig {
    bootstrap_config(&broker.bootstrap())
}

fn bootstrap_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("broker.address.family", "v4");
    c
}

async fn create_topic(broker: &BrokerProcess, name: &str, partitions: i32) {
    create_topic_at(&broker.bootstrap(), name, partitions).await;
}

async fn create_topic_at(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = bootstrap_config(bootstrap).create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await;
    created.unwrap()[0].as_ref().unwrap();
}

struct LatencyContext {
    histogram: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<Mutex<u64>>,
}

impl ClientContext for LatencyContext {}

impl ProducerContext for LatencyContext {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        match result {
            Ok(_) => {
                let micros = sent.elapsed().as_micros() as u64;
                let _ = self.histogram.lock().unwrap().record(micros.max(1));
            }
            Err(_) => *self.errors.lock().unwrap() += 1,
        }
    }
}

fn mb(bytes: f64) -> f64 {
    bytes / 1_000_000.0
}

/// The machine's own limits, measured in the run they are compared with.
struct Baselines {
    /// Buffered sequential write (no fsync, like the broker's default).
    disk_write: f64,
    /// read(2) of the same file from the page cache into a reused 1 MiB buffer.
    cache_read: f64,
    /// The same file sent from the page cache with sendfile(2) over a
    /// 127.0.0.1 TCP connection into a reused 1 MiB buffer: the most any
    /// broker serving Fetch from the page cache can move to a local consumer.
    loopback_sendfile: f64,
    /// 1 MiB writes each followed by fdatasync(2): what a log that makes
    /// every MiB durable before acknowledging it can ingest at best.
    fdatasync_per_mib: f64,
}

fn baselines(dir: &Path, bytes: usize) -> Baselines {
    use std::os::fd::AsRawFd;
    let path = dir.join("baseline.bin");
    let chunk = vec![0xa5u8; 1 << 20];
    let bytes = bytes / chunk.len() * chunk.len();
    let start = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..bytes / chunk.len() {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let disk_write = mb(bytes as f64) / start.elapsed().as_secs_f64();
    let mut f = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    while f.read(&mut buf).unwrap() > 0 {}
    let cache_read = mb(bytes as f64) / start.elapsed().as_secs_f64();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let sender = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        let mut offset: libc::off_t = 0;
        while (offset as usize) < bytes {
            // SAFETY: both descriptors are open for the duration of the call.
            let n = unsafe {
                libc::sendfile(
                    socket.as_raw_fd(),
                    file.as_raw_fd(),
                    &mut offset,
                    bytes - offset as usize,
                )
            };
            assert!(n > 0, "sendfile: {}", std::io::Error::last_os_error());
        }
    });
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    let mut received = 0;
    while received < bytes {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "sender closed early");
        received += n;
    }
    let loopback_sendfile = mb(bytes as f64) / start.elapsed().as_secs_f64();
    sender.join().unwrap();
    std::fs::remove_file(&path).unwrap();
    let synced = (bytes / chunk.len()).min(512);
    let mut f = std::fs::File::create(&path).unwrap();
    let start = Instant::now();
    for _ in 0..synced {
        f.write_all(&chunk).unwrap();
        f.sync_data().unwrap();
    }
    let fdatasync_per_mib = mb((synced * chunk.len()) as f64) / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    Baselines {
        disk_write,
        cache_read,
        loopback_sendfile,
        fdatasync_per_mib,
    }
}

/// (Fetch requests served, seconds spent serving them) from the broker's metrics.
fn fetch_stats(broker: &BrokerProcess) -> (f64, f64) {
    let (_, text) = fjord_e2e::http_get(broker.metrics, "/metrics").unwrap_or_default();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("fjord_request_latency_seconds_count{api=\"Fetch\"}"),
        value("fjord_request_latency_seconds_sum{api=\"Fetch\"}"),
    )
}

/// Delivery latency at a fixed rate: p50, p99, p999 in ms. With
/// `with_consumer`, a second client tails the topic meanwhile, so its
/// long-poll fetches are served beside the produces.
fn latency_run(
    broker: &BrokerProcess,
    topic: &str,
    rate: usize,
    seconds: u64,
    size: usize,
    with_consumer: bool,
) -> (f64, f64, f64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tail = with_consumer.then(|| {
        let consumer: BaseConsumer = client_config(broker)
            .set("group.id", "fjord-load-tail")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        let partitions = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_or(1, |m| m.topics()[0].partitions().len() as i32);
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::End).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut got = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                    got += 1;
                }
            }
            got
        })
    });
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
    let errors = Arc::new(Mutex::new(0u64));
    let context = LatencyContext {
        histogram: histogram.clone(),
        errors: errors.clone(),
    };
    let producer: ThreadedProducer<LatencyContext> = client_config(broker)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("batch.size", "1048576")
        .create_with_context(context)
        .unwrap();
    let payload = vec![b'l'; size];
    let start = Instant::now();
    let total = rate * seconds as usize;
    for i in 0..total {
        // Pace sends evenly: the i-th record leaves at i / rate seconds.
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let record =
            BaseRecord::<(), [u8], Box<Instant>>::with_opaque_to(topic, Box::new(Instant::now())).payload(&payload[..]);
        producer.send(record).map_err(|(e, _)| e).expect("latency send");
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    assert_eq!(*errors.lock().unwrap(), 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = tail {
        assert!(t.join().unwrap() > 0, "the second client read what was produced");
    }
    let h = histogram.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    (ms(0.5), ms(0.99), ms(0.999))
}

/// Reads the whole topic with plain Fetch requests that never parse records:
/// the broker's own serving rate, without a client's per-record work.
///
/// Like a consumer's fetcher it reads each response into one reused buffer
/// (no zero fill, no fresh pages per response) and keeps responses to
/// `fetch_max_bytes`, so the buffer stays in cache.
async fn raw_fetch(
    broker: &BrokerProcess,
    topic: &str,
    partitions: i32,
    end: &[i64],
    fetch_max_bytes: i32,
) -> (f64, f64) {
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(broker.kafka).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut offsets = vec![0i64; partitions as usize];
    let mut recv = BytesMut::with_capacity(fetch_max_bytes as usize + (1 << 20));
    let (mut bytes, mut id) = (0usize, 0);
    let pid = broker.pid().unwrap();
    let cpu0 = cpu_seconds(pid).unwrap();
    let start = Instant::now();
    let version = 12;
    while offsets.iter().zip(end).any(|(o, e)| o < e) {
        id += 1;
        let parts = (0..partitions)
            .map(|p| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(offsets[p as usize])
                    .with_partition_max_bytes(fetch_max_bytes)
            })
            .collect();
        let request = FetchRequest::default()
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(fetch_max_bytes)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(parts)]);
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .encode(&mut buf, ApiKey::Fetch.request_header_version(version))
            .unwrap();
        request.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        stream.write_all(&buf).await.unwrap();
        let size = stream.read_i32().await.unwrap() as usize;
        // `reserve` takes the previous response's allocation back once its Bytes are dropped.
        recv.clear();
        recv.reserve(size);
        while recv.len() < size {
            let n = (&mut stream)
                .take((size - recv.len()) as u64)
                .read_buf(&mut recv)
                .await
                .unwrap();
            assert!(n > 0, "broker closed the connection");
        }
        let mut frame = recv.split().freeze();
        ResponseHeader::decode(&mut frame, ApiKey::Fetch.response_header_version(version)).unwrap();
        let response = FetchResponse::decode(&mut frame, version).unwrap();
        for p in &response.responses[0].partitions {
            let records = p.records.as_ref().unwrap();
            bytes += records.len();
            // Next offset: walk batch headers (base offset + last offset delta).
            let mut at = 0;
            while at + 61 <= records.len() {
                let base = i64::from_be_bytes(records[at..at + 8].try_into().unwrap());
                let size = i32::from_be_bytes(records[at + 8..at + 12].try_into().unwrap()) as usize + 12;
                let delta = i32::from_be_bytes(records[at + 23..at + 27].try_into().unwrap()) as i64;
                if at + size > records.len() {
                    break;
                }
                offsets[p.partition_index as usize] = base + delta + 1;
                at += size;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap() - cpu0;
    (mb(bytes as f64) / elapsed, cpu / (bytes as f64 / 1e9))
}

/// Three members of one group consume a 6-partition topic with auto commit;
/// then one leaves. Returns (records/s, ms from the leave to Stable again).
fn group_run(broker: &BrokerProcess, records: usize, size: usize) -> (f64, f64) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let topic = "group-load";
    let base = client_config(broker);
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = base
        .clone()
        .set("linger.ms", "5")
        .set("batch.size", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .unwrap();
    let payload = vec![b'g'; size];
    for i in 0..records {
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .payload(&payload[..])
            .partition((i % 6) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();

    let consumed = Arc::new(AtomicUsize::new(0));
    let stops: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let start = Instant::now();
    let members: Vec<_> = stops
        .iter()
        .map(|stop| {
            let (stop, consumed) = (stop.clone(), consumed.clone());
            let consumer: BaseConsumer = base
                .clone()
                .set("group.id", "fjord-load-group")
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "true")
                .set("heartbeat.interval.ms", "500")
                .create()
                .unwrap();
            std::thread::spawn(move || {
                consumer.subscribe(&[topic]).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Ok(_)) = consumer.poll(Duration::from_millis(50)) {
                        consumed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while consumed.load(Ordering::Relaxed) < records && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = consumed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();

    // One member leaves; how long until the group is Stable with the other two?
    let watcher: BaseConsumer = base.clone().create().unwrap();
    let leave_started = Instant::now();
    stops[0].store(true, Ordering::Relaxed);
    let mut members = members.into_iter();
    members.next().unwrap().join().unwrap();
    let mut stable_ms = f64::NAN;
    while leave_started.elapsed() < Duration::from_secs(60) {
        if let Ok(list) = watcher.fetch_group_list(Some("fjord-load-group"), Duration::from_secs(5)) {
            if let Some(g) = list.groups().first() {
                if g.state() == "Stable" && g.members().len() == 2 {
                    stable_ms = leave_started.elapsed().as_secs_f64() * 1000.0;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for s in &stops {
        s.store(true, Ordering::Relaxed);
    }
    for m in members {
        m.join().unwrap();
    }
    (rate, stable_ms)
}

struct Run {
    partitions: i32,
    produce_mbs: f64,
    produce_rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    produce_cpu_per_gb: f64,
    /// librdkafka's own CPU (this process) per GB: on two shared cores,
    /// 2 / (client + broker CPU-s/GB) bounds the GB/s any broker could reach.
    produce_client_cpu_per_gb: f64,
    consume_client_cpu_per_gb: f64,
    /// Fetch requests the broker served during the librdkafka consume, their
    /// mean size and the broker's handling time (the transfer is not in it).
    fetches: f64,
    fetch_mb: f64,
    fetch_broker_ms: f64,
    consume_mbs: f64,
    consume_rps: f64,
    consume_cpu_per_gb: f64,
    raw_fetch_mbs: f64,
    raw_fetch_cpu_per_gb: f64,
}

/// MB/s of payload one consumer reads from the start of every partition,
/// with librdkafka's defaults plus `extra`.
fn consume_mbs(broker: &BrokerProcess, topic: &str, partitions: i32, records: usize, extra: &[(&str, &str)]) -> f64 {
    let mut config = client_config(broker);
    config
        .set("group.id", "fjord-load-defaults")
        .set("enable.auto.commit", "false");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    fjord_e2e::assign_from_beginning(&consumer, topic, partitions);
    let start = Instant::now();
    let (mut got, mut bytes) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(300);
    while got < records && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            bytes += m.unwrap().payload().map_or(0, <[u8]>::len);
            got += 1;
        }
    }
    assert_eq!(got, records, "consumed every record");
    mb(bytes as f64) / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn run(broker: &BrokerProcess, partitions: i32, records: usize, size: usize, fetch_max_bytes: i32) -> Run {
    let topic = format!("load-{partitions}");
    let base = client_config(broker);
    create_topic(broker, &topic, partitions).await;

    let pid = broker.pid().unwrap();
    let produced = tokio::task::block_in_place(|| produce_load(&base, &topic, partitions, records, size, &[pid], "1"));
    let fetches0 = fetch_stats(broker);
    let consumed = tokio::task::block_in_place(|| consume_load(&base, &topic, partitions, records, &[pid]));
    let fetches1 = fetch_stats(broker);
    let (fetches, fetch_secs) = (fetches1.0 - fetches0.0, fetches1.1 - fetches0.1);
    let consumer: BaseConsumer = base.clone().set("group.id", "fjord-load").create().unwrap();
    let h = produced.histogram;
    let bytes = (records * size) as f64;
    let got_bytes = consumed.bytes as f64;
    let end: Vec<i64> = (0..partitions)
        .map(|p| consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap().1)
        .collect();
    let (raw_fetch_mbs, raw_fetch_cpu_per_gb) = raw_fetch(broker, &topic, partitions, &end, fetch_max_bytes).await;
    Run {
        partitions,
        produce_mbs: mb(bytes) / produced.elapsed,
        produce_rps: records as f64 / produced.elapsed,
        p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        p999_ms: h.value_at_quantile(0.999) as f64 / 1000.0,
        produce_cpu_per_gb: produced.broker_cpu / (bytes / 1e9),
        produce_client_cpu_per_gb: produced.client_cpu / (bytes / 1e9),
        consume_client_cpu_per_gb: consumed.client_cpu / (got_bytes / 1e9),
        fetches,
        fetch_mb: mb(got_bytes) / fetches.max(1.0),
        fetch_broker_ms: 1000.0 * fetch_secs / fetches.max(1.0),
        consume_mbs: mb(got_bytes) / consumed.elapsed,
        consume_rps: records as f64 / consumed.elapsed,
        consume_cpu_per_gb: consumed.broker_cpu / (got_bytes / 1e9),
        raw_fetch_mbs,
        raw_fetch_cpu_per_gb,
    }
}

/// A produce of `records` spread over the partitions, as fast as librdkafka
/// goes with acks=1: elapsed seconds, delivery latencies, CPU-seconds of the
/// brokers (`pids`) and of this client.
struct Produced {
    elapsed: f64,
    histogram: Histogram<u64>,
    broker_cpu: f64,
    client_cpu: f64,
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p).unwrap_or(0.0)).sum()
}

fn produce_load(
    base: &ClientConfig,
    topic: &str,
    partitions: i32,
    records: usize,
    size: usize,
    pids: &[u32],
    acks: &str,
) -> Produced {
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
    let errors = Arc::new(Mutex::new(0u64));
    let context = LatencyContext {
        histogram: histogram.clone(),
        errors: errors.clone(),
    };
    let producer: ThreadedProducer<LatencyContext> = base
        .clone()
        .set("acks", acks)
        .set("linger.ms", "5")
        .set("batch.size", "1048576")
        .set("queue.buffering.max.kbytes", "262144")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(context)
        .unwrap();
    let payload = vec![b'p'; size];
    let me = std::process::id();
    let cpu0 = cpu_of(pids);
    let client_cpu0 = cpu_of(&[me]);
    let start = Instant::now();
    for i in 0..records {
        let mut record = BaseRecord::<(), [u8], Box<Instant>>::with_opaque_to(topic, Box::new(Instant::now()))
            .payload(&payload[..])
            .partition((i % partitions as usize) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => panic!("send failed: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(*errors.lock().unwrap(), 0, "delivery errors");
    let histogram = histogram.lock().unwrap().clone();
    Produced {
        elapsed,
        histogram,
        broker_cpu: cpu_of(pids) - cpu0,
        client_cpu: cpu_of(&[me]) - client_cpu0,
    }
}

/// One consumer reading every partition from the start, with large fetches.
struct Consumed {
    elapsed: f64,
    bytes: usize,
    broker_cpu: f64,
    client_cpu: f64,
}

fn consume_load(base: &ClientConfig, topic: &str, partitions: i32, records: usize, pids: &[u32]) -> Consumed {
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", "fjord-load")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()
        .unwrap();
    fjord_e2e::assign_from_beginning(&consumer, topic, partitions);
    let me = std::process::id();
    let cpu0 = cpu_of(pids);
    let client_cpu0 = cpu_of(&[me]);
    let start = Instant::now();
    let (mut got, mut bytes) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(300);
    while got < records && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            got += 1;
            bytes += m.payload().map_or(0, <[u8]>::len);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(got, records, "consumed every record");
    Consumed {
        elapsed,
        bytes,
        broker_cpu: cpu_of(pids) - cpu0,
        client_cpu: cpu_of(&[me]) - client_cpu0,
    }
}

/// Three brokers in combined mode at default settings, data under
/// `dir/<name>-<id>`, all ready: the brokers and their bootstrap list.
fn launch_three(dir: &Path, name: &str) -> (Vec<BrokerProcess>, String) {
    let ports: Vec<[u16; 3]> = (0..3).map(|_| [free_port(), free_port(), free_port()]).collect();
    let voters = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p[1]))
        .collect::<Vec<_>>()
        .join(",");
    let mut brokers: Vec<BrokerProcess> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = (i + 1).to_string();
            BrokerProcess::launch(
                &dir.join(format!("{name}-{id}")),
                *p,
                &[("node.id", id.as_str()), ("controller.quorum.voters", voters.as_str())],
            )
        })
        .collect();
    for b in &mut brokers {
        b.wait_ready(Duration::from_secs(60)).unwrap();
    }
    let bootstrap = brokers
        .iter()
        .map(BrokerProcess::bootstrap)
        .collect::<Vec<_>>()
        .join(",");
    (brokers, bootstrap)
}

/// Three brokers in combined mode on this machine, one topic of three RF 1
/// partitions with one leader on each: produce and consume as the
/// single-broker runs do. On two shared cores this shows what the cluster
/// machinery costs, not scale-out. Also answers the idle cluster's CPU-s/s.
async fn cluster_run(dir: &Path, records: usize, size: usize) -> (Produced, Consumed, f64, Produced) {
    let (brokers, bootstrap) = launch_three(dir, "cluster");
    create_topic_at(&bootstrap, "load-cluster", 3).await;
    let base = bootstrap_config(&bootstrap);
    // Every broker leads one partition before the clock starts.
    let probe: BaseConsumer = base.clone().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = probe
            .fetch_metadata(Some("load-cluster"), Duration::from_secs(5))
            .unwrap();
        let mut leaders: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.leader()).collect();
        leaders.sort_unstable();
        if leaders == [1, 2, 3] {
            break;
        }
        assert!(Instant::now() < deadline, "leaders {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pids: Vec<u32> = brokers.iter().filter_map(BrokerProcess::pid).collect();
    let produced = tokio::task::block_in_place(|| produce_load(&base, "load-cluster", 3, records, size, &pids, "1"));
    let idle0 = cpu_of(&pids);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = (cpu_of(&pids) - idle0) / 2.0;
    let consumed = tokio::task::block_in_place(|| consume_load(&base, "load-cluster", 3, records, &pids));
    // Replicated: RF 3, acks=all, six partitions (two led by each broker).
    let admin: AdminClient<DefaultClientContext> = base.create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new("load-rf3", 6, TopicReplication::Fixed(3)).set("min.insync.replicas", "2")],
            &AdminOptions::new(),
        )
        .await;
    created.unwrap()[0].as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = probe.fetch_metadata(Some("load-rf3"), Duration::from_secs(5)).unwrap();
        if md.topics()[0].partitions().len() == 6 && md.topics()[0].partitions().iter().all(|p| p.isr().len() == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "load-rf3 not in sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replicated = tokio::task::block_in_place(|| produce_load(&base, "load-rf3", 6, records, size, &pids, "all"));
    (produced, consumed, idle, replicated)
}

/// What one failover run measured.
struct Failover {
    victim: i32,
    controller: i32,
    led: usize,
    leaders_moved: Duration,
    first_ack: Duration,
}

/// Three brokers at default settings, `partitions` partitions RF 3
/// (min.insync.replicas 2): SIGKILL of a broker that leads partitions but is
/// not the active controller (a dead controller adds a Raft election).
async fn failover_run(dir: &Path, partitions: i32) -> Failover {
    use fjord_proto::admin::v1 as pb;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let (mut brokers, bootstrap) = launch_three(dir, &format!("failover-{partitions}"));
    let admin: AdminClient<DefaultClientContext> = bootstrap_config(&bootstrap).create().unwrap();
    let topic = || NewTopic::new("failover", partitions, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(120)));
    // A large topic's creation can outlast a controller's term: retried as
    // Kafka's tools do on a retriable error.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match admin.create_topics(&[topic()], &opts).await.unwrap()[0].clone() {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => break,
            Err((_, code)) if Instant::now() < deadline => {
                eprintln!("creating the failover topic: {code:?}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err((_, code)) => panic!("creating the failover topic: {code:?}"),
        }
    }
    let probe: BaseConsumer = bootstrap_config(&bootstrap).create().unwrap();
    let leaders = |probe: &BaseConsumer| -> Vec<(i32, i32, usize)> {
        probe
            .fetch_metadata(Some("failover"), Duration::from_secs(10))
            .map(|md| {
                md.topics()[0]
                    .partitions()
                    .iter()
                    .map(|p| (p.id(), p.leader(), p.isr().len()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let state = loop {
        let state = leaders(&probe);
        if state.len() == partitions as usize && state.iter().all(|(_, l, isr)| *l > 0 && *isr == 3) {
            break state;
        }
        assert!(Instant::now() < deadline, "failover topic not in sync");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut grpc = pb::admin_client::AdminClient::connect(format!("http://{}", brokers[0].admin))
        .await
        .unwrap();
    let controller = grpc
        .describe_cluster(pb::DescribeClusterRequest {})
        .await
        .unwrap()
        .into_inner()
        .controller_id;
    let (first, victim, _) = *state.iter().find(|(_, l, _)| *l != controller).unwrap();
    let led = state.iter().filter(|(_, l, _)| *l == victim).count();
    let survivor = brokers[(victim % 3) as usize].bootstrap();
    let producer: FutureProducer = bootstrap_config(&bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    // Connected and with metadata before the clock starts.
    producer
        .send(
            FutureRecord::<(), _>::to("failover").partition(first).payload("warm"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let watcher: BaseConsumer = bootstrap_config(&survivor).create().unwrap();
    let killed_at = Instant::now();
    brokers[(victim - 1) as usize].kill9();
    let acked = tokio::spawn(async move {
        producer
            .send(
                FutureRecord::<(), _>::to("failover").partition(first).payload("after"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        killed_at.elapsed()
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let leaders_moved = loop {
        let state = tokio::task::block_in_place(|| leaders(&watcher));
        if state.len() == partitions as usize && state.iter().all(|(_, l, _)| *l > 0 && *l != victim) {
            break killed_at.elapsed();
        }
        assert!(Instant::now() < deadline, "leaders never moved off broker {victim}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let first_ack = acked.await.unwrap();
    Failover {
        victim,
        controller,
        led,
        leaders_moved,
        first_ack,
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if std::env::var("FJORD_BROKER_BIN").is_err() {
        let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/fjord-broker");
        if release.exists() {
            // SAFETY: set before any other thread reads the environment.
            unsafe { std::env::set_var("FJORD_BROKER_BIN", release) };
        }
    }
    let tmp = tempfile::tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")).unwrap();
    let baseline_bytes = args
        .baseline_bytes
        .unwrap_or((args.records * args.record_size).max(256 << 20));
    let machine = baselines(tmp.path(), baseline_bytes);
    println!(
        "machine: buffered sequential write {:.0} MB/s, page-cache read {:.0} MB/s, \
         page cache -> loopback TCP with sendfile {:.0} MB/s, 1 MiB write + fdatasync {:.0} MB/s",
        machine.disk_write, machine.cache_read, machine.loopback_sendfile, machine.fdatasync_per_mib
    );
    println!(
        "{:>4} | {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} | {:>10} {:>10} {:>9}",
        "parts", "prod MB/s", "rec/s", "p50 ms", "p99 ms", "p999 ms", "CPU-s/GB", "cons MB/s", "rec/s", "CPU-s/GB"
    );
    let mut single_three = None;
    let mut single_one: Option<f64> = None;
    for partitions in args
        .partitions
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<i32>().expect("partition count"))
    {
        let broker = BrokerProcess::start(&tmp.path().join(format!("data-{partitions}")), &[]);
        let r = run(
            &broker,
            partitions,
            args.records,
            args.record_size,
            args.raw_fetch_max_bytes,
        )
        .await;
        if partitions == 3 {
            single_three = Some((r.produce_mbs, r.consume_mbs));
        }
        if partitions == 1 {
            single_one = Some(r.produce_mbs);
        }
        println!(
            "{:>5} | {:>10.1} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.2} | {:>10.1} {:>10.0} {:>9.2}",
            r.partitions,
            r.produce_mbs,
            r.produce_rps,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.produce_cpu_per_gb,
            r.consume_mbs,
            r.consume_rps,
            r.consume_cpu_per_gb
        );
        println!(
            "      produce at {:.0}% of buffered disk write; consume at {:.0}% of page-cache read with librdkafka, \
             {:.0}% ({:.0} MB/s, {:.2} CPU-s/GB) with raw fetches that skip client record parsing, \
             which is {:.0}% of page cache -> loopback sendfile",
            100.0 * r.produce_mbs / machine.disk_write,
            100.0 * r.consume_mbs / machine.cache_read,
            100.0 * r.raw_fetch_mbs / machine.cache_read,
            r.raw_fetch_mbs,
            r.raw_fetch_cpu_per_gb,
            100.0 * r.raw_fetch_mbs / machine.loopback_sendfile
        );
        // librdkafka keeps one Fetch in flight per broker: its consume rate is the fetch
        // size over round trip + transfer + record parsing, and the broker's part is small.
        println!(
            "      librdkafka consume: {:.0} Fetch requests of {:.2} MB, {:.2} ms broker handling each",
            r.fetches, r.fetch_mb, r.fetch_broker_ms
        );
        // Two cores shared by client and broker: GB/s <= 2 / (client + broker CPU-s per GB).
        let bound = |client: f64, broker: f64| 2.0 * 1000.0 / (client + broker);
        println!(
            "      librdkafka's own CPU: produce {:.2} CPU-s/GB, consume {:.2} CPU-s/GB; two cores bound \
             produce to {:.0} MB/s and consume to {:.0} MB/s with this client and this broker",
            r.produce_client_cpu_per_gb,
            r.consume_client_cpu_per_gb,
            bound(r.produce_client_cpu_per_gb, r.produce_cpu_per_gb),
            bound(r.consume_client_cpu_per_gb, r.consume_cpu_per_gb)
        );
        if args.default_consume_runs > 0 {
            let topic = format!("load-{partitions}");
            let runs = |extra: &[(&str, &str)]| -> Vec<f64> {
                (0..args.default_consume_runs)
                    .map(|_| consume_mbs(&broker, &topic, partitions, args.records, extra))
                    .collect()
            };
            let defaults = tokio::task::block_in_place(|| runs(&[]));
            let short_backoff = tokio::task::block_in_place(|| runs(&[("fetch.queue.backoff.ms", "10")]));
            let show = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
            println!(
                "      librdkafka consumer with default settings: median {:.0} MB/s ({}); \
                 with fetch.queue.backoff.ms=10: median {:.0} MB/s ({})",
                median(defaults.clone()),
                show(&defaults),
                median(short_backoff.clone()),
                show(&short_backoff)
            );
        }
        for tailing in [false, true] {
            let (p50, p99, p999) = latency_run(
                &broker,
                &format!("load-{partitions}"),
                args.latency_rate,
                args.latency_seconds,
                args.record_size,
                tailing,
            );
            let what = if tailing {
                "      the same while a second client tails the topic:".to_string()
            } else {
                format!("      delivery latency at {} rec/s:", args.latency_rate)
            };
            let note = if tailing {
                ""
            } else {
                " (the table's latencies are at saturation)"
            };
            println!("{what} p50 {p50:.2} ms, p99 {p99:.2} ms, p999 {p999:.2} ms{note}");
        }
        drop(broker);
    }
    if args.durable {
        // Durable ingest: flush.messages=1, every produce answered once on disk.
        let broker = BrokerProcess::start(&tmp.path().join("data-durable"), &[]);
        let admin: AdminClient<DefaultClientContext> = client_config(&broker).create().unwrap();
        let topic = NewTopic::new("durable", 1, TopicReplication::Fixed(1)).set("flush.messages", "1");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        admin.create_topics(&[topic], &opts).await.unwrap()[0].clone().unwrap();
        let pids: Vec<u32> = broker.pid().into_iter().collect();
        let records = (args.records / 2).max(1);
        let produced = tokio::task::block_in_place(|| {
            produce_load(
                &client_config(&broker),
                "durable",
                1,
                records,
                args.record_size,
                &pids,
                "1",
            )
        });
        let bytes = (records * args.record_size) as f64;
        let mbs = mb(bytes) / produced.elapsed;
        let h = &produced.histogram;
        println!(
            "durable (flush.messages=1, group commit), 1 partition: produce {mbs:.1} MB/s, p50 {:.2} ms, p99 {:.2} ms \
             at saturation, {:.2} broker CPU-s/GB; {:.0}% of the machine's 1 MiB write + fdatasync loop ({:.0} MB/s)",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            produced.broker_cpu / (bytes / 1e9),
            100.0 * mbs / machine.fdatasync_per_mib,
            machine.fdatasync_per_mib
        );
        drop(broker);
    }
    if args.cluster {
        let (produced, consumed, idle, replicated) = cluster_run(tmp.path(), args.records, args.record_size).await;
        let bytes = (args.records * args.record_size) as f64;
        let produce = mb(bytes) / produced.elapsed;
        let consume = mb(consumed.bytes as f64) / consumed.elapsed;
        let single = single_three.unwrap_or((f64::NAN, f64::NAN));
        println!(
            "3 brokers (combined mode, 3 partitions RF 1, one leader each, same 2 cores): produce {produce:.1} MB/s \
             ({:.0}% of one broker's 3-partition run, {:.0} MB/s), consume {consume:.1} MB/s ({:.0}% of {:.0} MB/s); \
             brokers' CPU-s/GB produce {:.2}, consume {:.2}; idle cluster {:.3} CPU-s/s",
            100.0 * produce / single.0,
            single.0,
            100.0 * consume / single.1,
            single.1,
            produced.broker_cpu / (bytes / 1e9),
            consumed.broker_cpu / (consumed.bytes as f64 / 1e9),
            idle
        );
        let rf3 = mb(bytes) / replicated.elapsed;
        let h = &replicated.histogram;
        println!(
            "3 brokers, RF 3, acks=all, 6 partitions: produce {rf3:.1} MB/s ({:.0}% of one broker's 1-partition acks=1 run, \
             {:.0} MB/s; {:.0}% of the RF 1 three-broker run), p50 {:.2} ms, p99 {:.2} ms at saturation; \
             brokers' CPU-s/GB ingested {:.2} in all, {:.2} per copy; librdkafka {:.2} CPU-s/GB; two cores bound \
             this client and these brokers to {:.0} MB/s",
            100.0 * rf3 / single_one.unwrap_or(f64::NAN),
            single_one.unwrap_or(f64::NAN),
            100.0 * rf3 / produce,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            replicated.broker_cpu / (bytes / 1e9),
            replicated.broker_cpu / (bytes / 1e9) / 3.0,
            replicated.client_cpu / (bytes / 1e9),
            2.0 * 1000.0 / ((replicated.broker_cpu + replicated.client_cpu) / (bytes / 1e9))
        );
    }
    for partitions in args
        .failover_partitions
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<i32>().expect("partition count"))
    {
        let f = failover_run(tmp.path(), partitions).await;
        println!(
            "failover at default settings, {partitions} partitions RF 3 on 3 brokers: broker {} SIGKILLed \
             (leader of {} partitions; the active controller is {}): its leaders moved after {} ms, \
             the first acks=all record to one of its partitions acknowledged after {} ms \
             (broker.session.timeout.ms is 9000)",
            f.victim,
            f.led,
            f.controller,
            f.leaders_moved.as_millis(),
            f.first_ack.as_millis()
        );
    }
    if args.txn_records > 0 {
        use fjord_e2e::txn_bench::{run as txn_run, Commits};
        let broker = BrokerProcess::start(&tmp.path().join("data-txn"), &[]);
        println!(
            "transactions: one broker, 1 partition, {} records of {} B, acks=all, linger.ms 5",
            args.txn_records, args.record_size
        );
        for (name, commits) in [
            ("idempotent", Commits::None),
            ("commit every 1000 records", Commits::EveryRecords(1000)),
            ("commit every 100 ms", Commits::Every(Duration::from_millis(100))),
        ] {
            let topic = format!("txn-{}", name.replace(' ', "-"));
            create_topic(&broker, &topic, 1).await;
            let r = tokio::task::block_in_place(|| {
                txn_run(&broker, &topic, args.txn_records, args.record_size, commits, &topic)
            });
            println!(
                "      {name:<26} {:>7.1} MB/s {:>9.0} rec/s {:>6.2} broker CPU-s/GB; {} transactions, commit p50 {:.2} ms p99 {:.2} ms",
                r.mbs, r.records_per_s, r.broker_cpu_per_gb, r.transactions, r.commit_p50_ms, r.commit_p99_ms
            );
        }
    }
    if args.group_records > 0 {
        let broker = BrokerProcess::start(
            &tmp.path().join("data-group"),
            &[("group.initial.rebalance.delay.ms", "0")],
        );
        create_topic(&broker, "group-load", 6).await;
        let (rate, stable_ms) =
            tokio::task::block_in_place(|| group_run(&broker, args.group_records, args.record_size));
        println!(
            "consumer group: 3 members, 6 partitions, auto commit: {rate:.0} records/s; member leave -> Stable in {stable_ms:.0} ms"
        );
    }
}
