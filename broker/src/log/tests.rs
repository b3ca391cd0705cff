use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::records::Compression;

use super::batch::tests::{encode_batch, encode_batch_with};
use super::*;
use crate::error::Error;

fn config(segment_bytes: i32) -> Arc<LogConfig> {
    Arc::new(LogConfig {
        segment_bytes,
        index_interval_bytes: 100,
        segment_index_bytes: 4096,
        ..LogConfig::default()
    })
}

fn values(n: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{tag}-{i}-{}", "x".repeat(50)).into_bytes())
        .collect()
}

fn append(log: &Log, vals: &[Vec<u8>], ts: i64) -> AppendInfo {
    let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
    log.append_as_leader(&encode_batch(0, &refs, ts), 0).unwrap()
}

fn read_offsets(log: &Log, from: i64) -> Vec<i64> {
    let mut out = vec![];
    let mut next = from;
    loop {
        let info = log.read(next, 1 << 20, i64::MAX, true).unwrap();
        if info.records.is_empty() {
            return out;
        }
        for (_, h) in batch::complete_batches(&info.records) {
            for o in h.base_offset()..=h.last_offset() {
                out.push(o);
            }
            next = h.next_offset();
        }
    }
}

#[test]
fn append_assigns_offsets_and_reads_back_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(2000), None, None).unwrap();
    for i in 0..50 {
        let info = append(&log, &values(3, &format!("b{i}")), 1000 + i);
        assert_eq!(info.first_offset, i * 3);
        assert_eq!(info.last_offset, i * 3 + 2);
    }
    assert!(log.segment_count() > 5, "small segments roll");
    assert_eq!(log.log_end_offset(), 150);
    assert_eq!(read_offsets(&log, 0), (0..150).collect::<Vec<_>>());
    // A read from the middle of a batch returns that whole batch.
    let info = log.read(31, 1 << 20, i64::MAX, true).unwrap();
    let first = batch::BatchHeader::parse(&info.records).unwrap();
    assert_eq!(first.base_offset(), 30);
    assert!(matches!(
        log.read(151, 100, i64::MAX, true),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert!(log.read(150, 100, i64::MAX, true).unwrap().records.is_empty());
}

#[test]
fn reads_honour_max_bytes_but_return_at_least_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(1 << 20), None, None).unwrap();
    let big = vec![vec![7u8; 5000]];
    append(&log, &big, 1);
    append(&log, &big, 2);
    let info = log.read(0, 100, i64::MAX, true).unwrap();
    assert_eq!(batch::complete_batches(&info.records).count(), 1);
    assert!(log.read(0, 100, i64::MAX, false).unwrap().records.is_empty());
    let info = log.read(0, 1 << 20, i64::MAX, true).unwrap();
    assert_eq!(batch::complete_batches(&info.records).count(), 2);
    // Never past the high watermark.
    let info = log.read(0, 1 << 20, 1, true).unwrap();
    assert_eq!(batch::complete_batches(&info.records).count(), 1);
}

#[test]
fn timestamps_find_first_offset_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(1500), None, None).unwrap();
    for i in 0..40 {
        append(&log, &values(2, "t"), 10_000 + i * 10); // records at ts, ts+1
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 10_000)));
    assert_eq!(log.offset_for_timestamp(10_001).unwrap(), Some((1, 10_001)));
    assert_eq!(log.offset_for_timestamp(10_002).unwrap(), Some((2, 10_010)));
    assert_eq!(log.offset_for_timestamp(10_205).unwrap(), Some((42, 10_210)));
    assert_eq!(log.offset_for_timestamp(99_999).unwrap(), None);
    assert_eq!(log.max_timestamp_offset().unwrap(), (79, 10_391));
}

#[test]
fn clean_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(3000), None, None).unwrap();
        for i in 0..30 {
            append(&log, &values(2, "r"), i);
        }
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), config(3000), None, None).unwrap();
    assert_eq!(log.log_end_offset(), 60);
    assert_eq!(read_offsets(&log, 0), (0..60).collect::<Vec<_>>());
    assert_eq!(append(&log, &values(1, "after"), 99).first_offset, 60);
}

#[test]
fn recovery_truncates_torn_tail_only() {
    let dir = tempfile::tempdir().unwrap();
    let active;
    {
        let log = Log::open(dir.path(), config(1 << 20), None, None).unwrap();
        for i in 0..10 {
            append(&log, &values(2, "r"), i);
        }
        active = segment::file_path(dir.path(), 0, segment::LOG_SUFFIX);
        // No close: a crash.
    }
    let len = std::fs::metadata(&active).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let log = Log::open(dir.path(), config(1 << 20), Some(0), None).unwrap();
    assert_eq!(log.log_end_offset(), 18, "only the torn last batch is dropped");
    assert_eq!(read_offsets(&log, 0), (0..18).collect::<Vec<_>>());
}

#[test]
fn recovery_drops_a_batch_with_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment::file_path(dir.path(), 0, segment::LOG_SUFFIX);
    {
        let log = Log::open(dir.path(), config(1 << 20), None, None).unwrap();
        for i in 0..10 {
            append(&log, &values(2, "r"), i);
        }
    }
    let mut data = std::fs::read(&path).unwrap();
    let n = data.len();
    data[n - 5] ^= 0x5a;
    std::fs::write(&path, &data).unwrap();
    let log = Log::open(dir.path(), config(1 << 20), Some(0), None).unwrap();
    assert_eq!(log.log_end_offset(), 18);
    assert_eq!(append(&log, &values(1, "new"), 1).first_offset, 18);
}

#[test]
fn retention_by_bytes_and_delete_records_move_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = (*config(1000)).clone();
    cfg.retention_bytes = 2500;
    let log = Log::open(dir.path(), Arc::new(cfg), None, None).unwrap();
    for i in 0..40 {
        append(&log, &values(2, "d"), i);
    }
    let before = log.segment_count();
    assert!(log.delete_old_segments().unwrap() > 0);
    assert!(log.segment_count() < before);
    assert!(log.size_bytes() <= 2500 + 1000);
    let start = log.log_start_offset();
    assert!(start > 0);
    assert!(matches!(
        log.read(0, 100, i64::MAX, true),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        log.delete_records_before(start + 5, log.log_end_offset()).unwrap(),
        start + 5
    );
    assert!(log.delete_records_before(1000, log.log_end_offset()).is_err());
}

#[test]
fn retention_by_time_deletes_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = (*config(800)).clone();
    cfg.retention_ms = 60_000;
    let log = Log::open(dir.path(), Arc::new(cfg), None, None).unwrap();
    let now = segment::now_ms();
    for _ in 0..10 {
        append(&log, &values(2, "old"), now - 3_600_000);
    }
    for _ in 0..10 {
        append(&log, &values(2, "new"), now);
    }
    log.delete_old_segments().unwrap();
    let start = log.log_start_offset();
    assert!(start > 0 && start <= 20, "old segments went, new stayed: {start}");
}

#[test]
fn idempotent_retries_are_deduplicated_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b0 = encode_batch_with(0, &[b"a", b"b"], 1, 42, 0, 0, Compression::None);
    let b1 = encode_batch_with(0, &[b"c"], 1, 42, 0, 2, Compression::None);
    {
        let log = Log::open(dir.path(), config(1 << 20), None, None).unwrap();
        assert_eq!(log.append_as_leader(&b0, 0).unwrap().first_offset, 0);
        let dup = log.append_as_leader(&b0, 0).unwrap();
        assert!(dup.duplicate);
        assert_eq!((dup.first_offset, dup.last_offset), (0, 1));
        // Crash without a snapshot: state comes back from the log.
    }
    let log = Log::open(dir.path(), config(1 << 20), Some(0), None).unwrap();
    assert!(log.append_as_leader(&b0, 0).unwrap().duplicate);
    let gap = encode_batch_with(0, &[b"z"], 1, 42, 0, 5, Compression::None);
    assert!(matches!(log.append_as_leader(&gap, 0), Err(Error::Sequence(_))));
    assert_eq!(log.append_as_leader(&b1, 0).unwrap().first_offset, 2);
    assert_eq!(log.log_end_offset(), 3);
}

#[test]
fn bad_batches_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = (*config(1 << 20)).clone();
    cfg.max_message_bytes = 500;
    let log = Log::open(dir.path(), Arc::new(cfg), None, None).unwrap();
    let good = encode_batch(0, &[b"ok"], 1);
    let mut corrupt = good.to_vec();
    let n = corrupt.len();
    corrupt[n - 1] ^= 1;
    assert!(matches!(
        log.append_as_leader(&Bytes::from(corrupt), 0),
        Err(Error::CorruptMessage(_))
    ));
    let big = encode_batch(0, &[&[0u8; 1000]], 1);
    assert!(matches!(
        log.append_as_leader(&big, 0),
        Err(Error::MessageTooLarge { .. })
    ));
    assert!(matches!(
        log.append_as_leader(&good.slice(..20), 0),
        Err(Error::CorruptMessage(_))
    ));
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn compression_type_recompresses_and_log_append_time_restamps() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = (*config(1 << 20)).clone();
    cfg.compression_type = "gzip".into();
    cfg.message_timestamp_type = "LogAppendTime".into();
    let log = Log::open(dir.path(), Arc::new(cfg), None, None).unwrap();
    let info = log.append_as_leader(&encode_batch(0, &[b"a", b"b"], 5), 0).unwrap();
    assert!(info.log_append_time > 5);
    let read = log.read(0, 1 << 20, i64::MAX, true).unwrap();
    let h = batch::validate(&read.records).unwrap();
    assert_eq!(h.compression(), Compression::Gzip as i16);
    assert!(h.is_log_append_time());
    assert_eq!(h.max_timestamp(), info.log_append_time);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever the batch sizes and segment size, a read from any offset
        /// starts with the batch holding that offset, in whichever segment it is.
        #[test]
        fn reads_select_the_segment_and_batch_holding_the_offset(
            batches in proptest::collection::vec(1usize..6, 1..60),
            segment_bytes in 300i32..3000,
            probe in any::<proptest::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(dir.path(), config(segment_bytes), None, None).unwrap();
            let mut ranges = vec![];
            for (i, n) in batches.iter().enumerate() {
                let info = append(&log, &values(*n, &format!("p{i}")), i as i64);
                ranges.push((info.first_offset, info.last_offset));
            }
            let end = log.log_end_offset();
            let offset = probe.index(end as usize) as i64;
            let read = log.read(offset, 1 << 20, i64::MAX, true).unwrap();
            let first = batch::BatchHeader::parse(&read.records).unwrap();
            let expected = ranges.iter().find(|(f, l)| *f <= offset && offset <= *l).unwrap();
            prop_assert_eq!((first.base_offset(), first.last_offset()), *expected);
        }
    }
}

#[test]
fn segment_ms_counts_from_the_first_batch_timestamp_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let hour = 3_600_000;
    let config = Arc::new(LogConfig {
        segment_ms: hour,
        ..(*config(1 << 20)).clone()
    });
    let log = Log::open(dir.path(), config.clone(), None, None).unwrap();
    append(&log, &values(2, "old"), now_ms() - 2 * hour);
    log.close().unwrap();
    drop(log);
    // Restarted: the segment's age comes from its first batch, not from this process.
    let log = Log::open(dir.path(), config, None, None).unwrap();
    log.roll_if_expired().unwrap();
    assert_eq!(
        log.segment_count(),
        2,
        "a segment whose first batch is 2 h old rolls at segment.ms = 1 h"
    );
    append(&log, &values(1, "new"), now_ms());
    log.roll_if_expired().unwrap();
    assert_eq!(log.segment_count(), 2, "a fresh segment does not");
}

#[test]
fn max_timestamp_names_the_record_holding_it_at_or_past_the_log_start() {
    use super::batch::{encode_records, plain_record};
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(1 << 20), None, None).unwrap();
    let batch = |timestamps: &[i64]| {
        let mut records: Vec<_> = timestamps
            .iter()
            .enumerate()
            .map(|(i, ts)| plain_record(i as i64, *ts, Some(Bytes::from("k")), Some(Bytes::from("v"))))
            .collect();
        encode_records(&mut records, Compression::None, -1, -1, -1).unwrap()
    };
    // librdkafka's admin ListOffsets test: the max sits in the middle of the batch.
    log.append_as_leader(&batch(&[100, 300, 200]), 0).unwrap();
    assert_eq!(log.max_timestamp_offset().unwrap(), (1, 300));
    log.append_as_leader(&batch(&[150, 250]), 0).unwrap();
    assert_eq!(log.max_timestamp_offset().unwrap(), (1, 300));
    // DeleteRecords past it: the max is taken from what is left.
    log.delete_records_before(3, log.log_end_offset()).unwrap();
    assert_eq!(log.max_timestamp_offset().unwrap(), (4, 250));
}

/// A follower stores the leader's batches byte for byte: same offsets, same
/// leader epochs; an overlapping fetch is skipped, a gap refused.
#[test]
fn a_follower_appends_the_leaders_batches_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Log::open(&dir.path().join("leader"), config(2000), None, None).unwrap();
    for i in 0..20 {
        let refs: Vec<Vec<u8>> = values(3, &format!("b{i}"));
        let refs: Vec<&[u8]> = refs.iter().map(|v| v.as_slice()).collect();
        leader.append_as_leader(&encode_batch(0, &refs, 1000 + i), 7).unwrap();
    }
    let follower = Log::open(&dir.path().join("follower"), config(2000), None, None).unwrap();
    // As a fetcher does: chunk after chunk (a read stops at a segment's end).
    let mut chunks = Vec::new();
    while follower.log_end_offset() < leader.log_end_offset() {
        let chunk = leader
            .read(follower.log_end_offset(), 1 << 20, i64::MAX, true)
            .unwrap()
            .records;
        let info = follower.append_as_follower(&chunk).unwrap();
        assert!(!info.duplicate);
        chunks.push(chunk);
    }
    assert_eq!(follower.log_end_offset(), 60);
    let mut at = 0;
    for chunk in &chunks {
        let copied = follower.read(at, chunk.len(), i64::MAX, true).unwrap().records;
        assert_eq!(&copied, chunk, "byte for byte");
        assert!(batch::complete_batches(&copied).all(|(_, h)| h.partition_leader_epoch() == 7));
        at = batch::complete_batches(chunk).last().unwrap().1.next_offset();
    }
    // The same fetch again changes nothing.
    assert!(follower.append_as_follower(&chunks[0]).unwrap().duplicate);
    assert_eq!(follower.log_end_offset(), 60);
    // A gap is refused.
    let later = leader.read(30, 1 << 20, i64::MAX, true).unwrap().records;
    let gap = Log::open(&dir.path().join("gap"), config(2000), None, None).unwrap();
    assert!(matches!(gap.append_as_follower(&later), Err(Error::CorruptMessage(_))));
    assert_eq!(gap.log_end_offset(), 0);
}

/// Truncation drops a divergent tail across segments; appends and producer
/// state carry on from the cut, and it survives a reopen.
#[test]
fn truncate_to_drops_the_tail_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(2000), None, None).unwrap();
    for i in 0..50 {
        append(&log, &values(3, &format!("b{i}")), 1000 + i);
    }
    let segments = log.segment_count();
    assert!(segments > 5);
    log.truncate_to(60).unwrap();
    assert_eq!(log.log_end_offset(), 60);
    assert!(log.segment_count() < segments);
    assert_eq!(read_offsets(&log, 0), (0..60).collect::<Vec<_>>());
    let info = append(&log, &values(2, "after"), 5000);
    assert_eq!((info.first_offset, info.last_offset), (60, 61));
    // Truncating past the end, or to it, is nothing.
    log.truncate_to(1000).unwrap();
    assert_eq!(log.log_end_offset(), 62);
    log.close().unwrap();
    let reopened = Log::open(dir.path(), config(2000), None, None).unwrap();
    assert_eq!(read_offsets(&reopened, 0), (0..62).collect::<Vec<_>>());
    // To zero: empty, and appends start over at 0.
    reopened.truncate_to(0).unwrap();
    assert_eq!((reopened.log_start_offset(), reopened.log_end_offset()), (0, 0));
    assert_eq!(append(&reopened, &values(1, "z"), 6000).first_offset, 0);
}

/// Leader epochs along a log: the last one, and where each ends (KIP-101).
#[test]
fn end_offsets_for_epochs_follow_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(2000), None, None).unwrap();
    assert_eq!(log.last_epoch(), -1);
    assert_eq!(log.end_offset_for_epoch(0), (-1, -1));
    // Epoch 2 for offsets 0..30, epoch 5 for 30..60, epoch 6 for 60..90; small segments.
    for (epoch, from) in [(2, 0), (5, 10), (6, 20)] {
        for i in from..from + 10 {
            let vals = values(3, &format!("b{i}"));
            let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
            log.append_as_leader(&encode_batch(0, &refs, 1000 + i), epoch).unwrap();
        }
    }
    assert!(log.segment_count() > 3);
    assert_eq!(log.last_epoch(), 6);
    let answers = |log: &Log| [1, 2, 3, 5, 6, 9].map(|e| log.end_offset_for_epoch(e));
    let expected = [(1, 0), (2, 30), (2, 30), (5, 60), (6, 90), (-1, -1)];
    assert_eq!(answers(&log), expected);
    log.truncate_to(45).unwrap();
    assert_eq!(log.last_epoch(), 5);
    assert_eq!(log.end_offset_for_epoch(5), (5, 45));

    // The checkpoint survives a restart; without it the log rebuilds the
    // same epochs from its batches; a torn tail cuts what it names.
    drop(log);
    let reopened = Log::open(dir.path(), config(2000), Some(0), None).unwrap();
    let epochs = reopened.epoch_entries();
    assert_eq!(
        epochs.iter().map(|e| (e.epoch, e.start_offset)).collect::<Vec<_>>(),
        [(2, 0), (5, 30)]
    );
    for i in 0..5 {
        let vals = values(3, &format!("c{i}"));
        let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
        reopened.append_as_leader(&encode_batch(0, &refs, 3000 + i), 8).unwrap();
    }
    let before = reopened.epoch_entries();
    reopened.close().unwrap();
    drop(reopened);
    std::fs::remove_file(dir.path().join(epoch::LEADER_EPOCH_CHECKPOINT)).unwrap();
    let rebuilt = Log::open(dir.path(), config(2000), None, None).unwrap();
    assert_eq!(rebuilt.epoch_entries(), before);
    assert_eq!(rebuilt.end_offset_for_epoch(5), (5, 45));
    assert_eq!(rebuilt.end_offset_for_epoch(8), (8, 60));
    // Retention moves the first epoch's start with the log start.
    rebuilt.delete_records_before(33, 60).unwrap();
    assert_eq!(rebuilt.epoch_entries()[0].start_offset, rebuilt.log_start_offset());
}

/// A follower behind its leader's log start drops its log and starts over
/// empty there; what it then replicates survives a restart.
#[test]
fn truncate_fully_starts_the_log_over_at_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(2000), None, None).unwrap();
    for i in 0..30 {
        log.append_as_leader(&encode_batch(0, &[b"old"], 1000 + i), 1).unwrap();
    }
    log.truncate_fully_and_start_at(500).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
    assert_eq!((log.last_epoch(), log.producer_count()), (-1, 0));
    assert!(log.read(0, 1 << 20, 1000, true).is_err(), "nothing below the new start");
    log.append_as_follower(&encode_batch(500, &[b"new", b"new"], 5000))
        .unwrap();
    assert_eq!(log.log_end_offset(), 502);
    // A fetch cut inside its last batch: the whole ones are taken, the rest comes again.
    let mut cut = encode_batch(502, &[b"a"], 5001).to_vec();
    let next = encode_batch(503, &[b"b"], 5002);
    cut.extend_from_slice(&next[..next.len() - 3]);
    assert_eq!(log.append_as_follower(&Bytes::from(cut)).unwrap().records, 1);
    assert_eq!(log.log_end_offset(), 503);
    log.close().unwrap();
    drop(log);
    let reopened = Log::open(dir.path(), config(2000), None, None).unwrap();
    assert_eq!(read_offsets(&reopened, 500), vec![500, 501, 502]);
}

/// flush.messages as a group commit: the append says a flush is due rather
/// than fsyncing under the log's lock; one flush then covers every append
/// before it, across a roll, and moves the recovery point to the log end.
#[test]
fn flush_messages_asks_for_a_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let durable = Arc::new(LogConfig {
        flush_messages: 1,
        ..(*config(2000)).clone()
    });
    let log = Log::open(dir.path(), durable, None, None).unwrap();
    let mut due = 0;
    for i in 0..40 {
        due += usize::from(append(&log, &values(3, &format!("d{i}")), 1000 + i).flush_due);
    }
    assert_eq!(due, 40);
    assert!(log.segment_count() > 1);
    assert_eq!(log.recovery_point(), 0, "nothing fsynced inline");
    assert_eq!(log.flush_through_end().unwrap(), 120);
    assert_eq!(log.recovery_point(), 120);
    assert_eq!(log.flush_through_end().unwrap(), 120, "nothing new: no fsync");
    let lazy = Log::open(&dir.path().join("lazy"), config(2000), None, None).unwrap();
    assert!(
        !append(&lazy, &values(3, "l"), 1000).flush_due,
        "the default never flushes"
    );
}

/// A new leader's epoch starts at its log end before it appends (Kafka's
/// makeLeader), so a diverging follower learns where its older epoch ends
/// here; as a follower again, the unused epoch is dropped on the next
/// truncation, even one that cuts nothing.
#[test]
fn a_leader_epoch_starts_at_the_log_end_and_an_unused_one_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(2000), None, None).unwrap();
    for i in 0..4 {
        log.append_as_leader(&encode_batch(0, &[b"a", b"b"], 1000 + i), 5)
            .unwrap();
    }
    log.assign_leader_epoch(7).unwrap();
    assert_eq!(log.end_offset_for_epoch(6), (5, 8), "epoch 5 ends where 7 starts");
    assert_eq!(log.last_epoch(), 7);
    log.truncate_to(8).unwrap();
    assert_eq!(log.last_epoch(), 5, "epoch 7 never had a batch here");
}

/// A transactional batch of one value from producer 7 at `sequence`.
fn txn_batch(sequence: i32) -> Bytes {
    let mut records = vec![batch::plain_record(0, 1_000, None, Some(Bytes::from_static(b"t")))];
    records[0].transactional = true;
    records[0].sequence = sequence;
    batch::encode_records(&mut records, Compression::None, 7, 0, sequence).unwrap()
}

#[test]
fn transactions_replicate_and_survive_a_reopen_and_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Log::open(&dir.path().join("leader"), config(1 << 20), None, None).unwrap();
    leader.append_as_leader(&txn_batch(0), 0).unwrap(); // 0
    leader.append_marker(7, 0, 0, Marker::Abort, 0).unwrap(); // 1
    leader.append_as_leader(&txn_batch(1), 0).unwrap(); // 2, open
    assert_eq!(leader.first_unstable_offset(), Some(2));
    let aborted = vec![AbortedTxn {
        producer_id: 7,
        first_offset: 0,
        last_offset: 1,
    }];
    assert_eq!(leader.aborted_transactions(0, 3), aborted);

    // A follower replaying the leader's batches, markers included, agrees.
    let follower = Log::open(&dir.path().join("follower"), config(1 << 20), None, None).unwrap();
    // (The marker's timestamp is now, the records' 1970: it rolled a segment.)
    let mut next = 0;
    while next < leader.log_end_offset() {
        let chunk = leader.read(next, 1 << 20, i64::MAX, true).unwrap().records;
        next = follower.append_as_follower(&chunk).unwrap().last_offset + 1;
    }
    assert_eq!(follower.first_unstable_offset(), Some(2));
    assert_eq!(follower.aborted_transactions(0, 3), aborted);

    // Reopened (recovery replays past the snapshot): the same.
    drop(follower);
    let follower = Log::open(&dir.path().join("follower"), config(1 << 20), Some(0), None).unwrap();
    assert_eq!(follower.first_unstable_offset(), Some(2));
    assert_eq!(follower.aborted_transactions(0, 3), aborted);

    // Cut below the abort marker: that transaction is open again, not aborted.
    follower.truncate_to(1).unwrap();
    assert_eq!(follower.first_unstable_offset(), Some(0));
    assert!(follower.aborted_transactions(0, 3).is_empty());
}

/// The `.txnindex` files of a log directory and their entries.
fn txn_indexes(dir: &std::path::Path) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(txn_index::TXN_INDEX_SUFFIX))
        .map(|p| {
            let n = txn_index::read(&p).unwrap().len();
            (p.file_name().unwrap().to_string_lossy().into_owned(), n)
        })
        .collect();
    out.sort();
    out
}

/// An aborted transaction is kept in the `.txnindex` of the segment holding
/// its marker (Kafka's layout), not in the producer snapshots: a clean
/// reopen (nothing replayed) still names it, and it goes with its segment.
#[test]
fn aborted_transactions_live_in_the_txn_index_of_their_markers_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(1 << 20), None, None).unwrap();
    log.append_as_leader(&txn_batch(0), 0).unwrap(); // 0
                                                     // (The marker's timestamp is now, the record's 1970: it rolls a segment at 1.)
    log.append_marker(7, 0, 0, Marker::Abort, 0).unwrap(); // 1
    log.append_as_leader(&txn_batch(1), 0).unwrap(); // 2
    log.append_marker(7, 0, 0, Marker::Commit, 0).unwrap(); // 3
    let aborted = vec![AbortedTxn {
        producer_id: 7,
        first_offset: 0,
        last_offset: 1,
    }];
    assert_eq!(
        txn_indexes(dir.path()),
        vec![(format!("{:020}.txnindex", 1), 1)],
        "one entry, in the marker's segment"
    );

    log.close().unwrap();
    drop(log);
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(producer_state::SNAPSHOT_SUFFIX) {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                !text.contains("aborted"),
                "a snapshot carries no aborted transactions: {text}"
            );
        }
    }
    let log = Log::open(dir.path(), config(1 << 20), None, None).unwrap();
    assert_eq!(log.aborted_transactions(0, 4), aborted, "read back from the index");

    // Cut below the marker: the marker's segment and its index go.
    log.truncate_to(1).unwrap();
    assert!(log.aborted_transactions(0, 4).is_empty());
    assert!(
        txn_indexes(dir.path()).iter().all(|(_, n)| *n == 0),
        "{:?}",
        txn_indexes(dir.path())
    );
}
