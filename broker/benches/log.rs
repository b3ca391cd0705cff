//! Micro-benchmarks of the storage hot path: append (offset assignment, CRC
//! check, vectored write, index upkeep) and read (index lookup, one pread).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fjord_broker::config::LogConfig;
use fjord_broker::log::{batch, Log};
use kafka_protocol::records::Compression;

/// A batch of `n` records of `size` bytes, as a client would send it.
fn client_batch(n: usize, size: usize) -> Bytes {
    let mut records: Vec<_> = (0..n)
        .map(|i| {
            batch::plain_record(
                i as i64,
                1_700_000_000_000 + i as i64,
                None,
                Some(Bytes::from(vec![b'x'; size])),
            )
        })
        .collect();
    batch::encode_records(&mut records, Compression::None, -1, -1, -1).unwrap()
}

fn config() -> Arc<LogConfig> {
    // Retention keeps the benchmark's disk use bounded.
    Arc::new(LogConfig {
        segment_bytes: 64 << 20,
        retention_bytes: 256 << 20,
        ..LogConfig::default()
    })
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    for records in [1usize, 16, 256] {
        let b = client_batch(records, 1024);
        group.throughput(Throughput::Bytes(b.len() as u64));
        group.bench_function(format!("{records}x1KiB"), |bench| {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(dir.path(), config(), None, None).unwrap();
            let mut n = 0u64;
            bench.iter(|| {
                n += 1;
                if n.is_multiple_of(4096) {
                    log.delete_old_segments().unwrap();
                }
                log.append_as_leader(&b, 0).unwrap()
            });
        });
    }
    group.finish();
}

fn bench_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(), None, None).unwrap();
    let b = client_batch(16, 1024);
    for _ in 0..4096 {
        log.append_as_leader(&b, 0).unwrap();
    }
    let end = log.log_end_offset();
    let mut group = c.benchmark_group("log_read");
    group.throughput(Throughput::Bytes(1 << 20));
    group.bench_function("1MiB_from_random_offset", |bench| {
        let mut next = 0i64;
        bench.iter_batched(
            || {
                next = (next + 7919) % (end - 2000);
                next
            },
            |offset| log.read(offset, 1 << 20, end, true).unwrap(),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn bench_validate(c: &mut Criterion) {
    let b = client_batch(256, 1024);
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(b.len() as u64));
    group.bench_function("validate_crc32c_256KiB", |bench| {
        bench.iter(|| batch::validate_for_append(&b).unwrap().records_count())
    });
    group.finish();
}

criterion_group!(benches, bench_append, bench_read, bench_validate);
criterion_main!(benches);
