//! The leader-epoch cache (Kafka's LeaderEpochFileCache): the offset where
//! each leader epoch begins in this log, kept in the partition directory's
//! `leader-epoch-checkpoint` so a restarted replica answers divergence and
//! OffsetsForLeaderEpoch questions (KIP-101/279/320) without scanning batches.
//!
//! The file is Kafka's: a version line (0), a count line, then one
//! `epoch start_offset` line per epoch.

use std::io;
use std::path::{Path, PathBuf};

use super::manager::write_atomically;

pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

const VERSION: i32 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

pub struct LeaderEpochCache {
    path: PathBuf,
    /// Epochs and start offsets both strictly increasing.
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// The checkpoint in `dir`; `None` when it is absent or unreadable, and
    /// the log must rebuild it from its batches.
    pub fn load(dir: &Path) -> Option<LeaderEpochCache> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT);
        let text = std::fs::read_to_string(&path).ok()?;
        match parse(&text) {
            Some(entries) => Some(LeaderEpochCache { path, entries }),
            None => {
                tracing::warn!(path = %path.display(), "unreadable leader epoch checkpoint; rebuilding it from the log");
                None
            }
        }
    }

    /// A cache of `entries` (as read from the log's batches), written out.
    pub fn rebuilt(dir: &Path, entries: Vec<EpochEntry>) -> io::Result<LeaderEpochCache> {
        let cache = LeaderEpochCache {
            path: dir.join(LEADER_EPOCH_CHECKPOINT),
            entries,
        };
        cache.persist()?;
        Ok(cache)
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Whether a batch of `epoch` would start a new entry.
    pub fn is_new(&self, epoch: i32) -> bool {
        epoch >= 0 && self.latest_epoch().is_none_or(|latest| epoch > latest)
    }

    /// A batch of `epoch` lands at `start_offset`: a newer epoch starts
    /// there. Older or negative epochs (batches from before leader epochs)
    /// change nothing, as in Kafka.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> io::Result<()> {
        if !self.is_new(epoch) {
            return Ok(());
        }
        self.entries.retain(|e| e.start_offset < start_offset);
        self.entries.push(EpochEntry { epoch, start_offset });
        self.persist()
    }

    /// Back to `entries` (as they were before an append that failed).
    pub fn restore(&mut self, entries: Vec<EpochEntry>) -> io::Result<()> {
        if entries != self.entries {
            self.entries = entries;
            self.persist()?;
        }
        Ok(())
    }

    /// The log was cut at `end_offset`: epochs starting there or later are gone.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// The log now starts at `start_offset`: epochs wholly below it are gone
    /// and the one it falls in starts there.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> io::Result<()> {
        let below = self.entries.partition_point(|e| e.start_offset <= start_offset);
        if below == 0 || (below == 1 && self.entries[0].start_offset == start_offset) {
            return Ok(());
        }
        self.entries.drain(..below - 1);
        self.entries[0].start_offset = start_offset;
        self.persist()
    }

    /// Kafka's endOffsetFor: the largest epoch at or below `epoch` and the
    /// offset where the epoch after it starts (`log_end_offset` for the
    /// latest). An epoch older than every one here answers itself and the
    /// first start offset; an unknown newer one, or an empty cache, (-1, -1).
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> (i32, i64) {
        const UNDEFINED: (i32, i64) = (-1, -1);
        if epoch < 0 {
            return UNDEFINED;
        }
        if self.latest_epoch() == Some(epoch) {
            return (epoch, log_end_offset);
        }
        let higher = self.entries.partition_point(|e| e.epoch <= epoch);
        match (higher.checked_sub(1), self.entries.get(higher)) {
            (_, None) => UNDEFINED,
            (None, Some(next)) => (epoch, next.start_offset),
            (Some(floor), Some(next)) => (self.entries[floor].epoch, next.start_offset),
        }
    }

    fn persist(&self) -> io::Result<()> {
        write_atomically(&self.path, format(&self.entries).as_bytes())
    }
}

fn format(entries: &[EpochEntry]) -> String {
    let mut out = format!("{VERSION}\n{}\n", entries.len());
    for e in entries {
        out.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
    }
    out
}

/// `None` for a wrong version, a count that does not match, or entries out of order.
fn parse(text: &str) -> Option<Vec<EpochEntry>> {
    let mut lines = text.lines();
    if lines.next()?.trim().parse::<i32>().ok()? != VERSION {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let mut entries: Vec<EpochEntry> = Vec::with_capacity(count.min(1 << 16));
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let entry = EpochEntry {
            epoch: fields.next()?.parse().ok()?,
            start_offset: fields.next()?.parse().ok()?,
        };
        if fields.next().is_some()
            || entries
                .last()
                .is_some_and(|last| entry.epoch <= last.epoch || entry.start_offset <= last.start_offset)
        {
            return None;
        }
        entries.push(entry);
    }
    (entries.len() == count).then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: i32, start_offset: i64) -> EpochEntry {
        EpochEntry { epoch, start_offset }
    }

    fn cache(entries: &[(i32, i64)]) -> (tempfile::TempDir, LeaderEpochCache) {
        let dir = tempfile::tempdir().unwrap();
        let entries = entries.iter().map(|&(e, o)| entry(e, o)).collect();
        let c = LeaderEpochCache::rebuilt(dir.path(), entries).unwrap();
        (dir, c)
    }

    #[test]
    fn end_offsets_as_kafka_answers_them() {
        let (_dir, c) = cache(&[(2, 0), (5, 30), (6, 60)]);
        assert_eq!(c.end_offset_for(-1, 90), (-1, -1));
        assert_eq!(c.end_offset_for(1, 90), (1, 0), "older than every epoch");
        assert_eq!(c.end_offset_for(2, 90), (2, 30));
        assert_eq!(c.end_offset_for(3, 90), (2, 30), "an epoch this log never had");
        assert_eq!(c.end_offset_for(5, 90), (5, 60));
        assert_eq!(c.end_offset_for(6, 90), (6, 90), "the latest ends at the log end");
        assert_eq!(c.end_offset_for(9, 90), (-1, -1), "newer than any here");
        let (_dir, empty) = cache(&[]);
        assert_eq!(empty.end_offset_for(0, 0), (-1, -1));
    }

    #[test]
    fn assign_truncate_and_reload() {
        let (dir, mut c) = cache(&[]);
        c.assign(-1, 0).unwrap();
        assert!(c.entries().is_empty(), "batches from before leader epochs");
        c.assign(1, 0).unwrap();
        c.assign(1, 10).unwrap();
        c.assign(0, 12).unwrap();
        c.assign(3, 20).unwrap();
        c.assign(4, 40).unwrap();
        assert_eq!(c.entries(), &[entry(1, 0), entry(3, 20), entry(4, 40)]);
        assert_eq!(LeaderEpochCache::load(dir.path()).unwrap().entries(), c.entries());

        c.truncate_from_end(40).unwrap();
        assert_eq!(c.latest_epoch(), Some(3));
        c.truncate_from_start(25).unwrap();
        assert_eq!(c.entries(), &[entry(3, 25)]);
        c.truncate_from_start(10).unwrap();
        assert_eq!(c.entries(), &[entry(3, 25)], "the start never moves back");
        assert_eq!(LeaderEpochCache::load(dir.path()).unwrap().entries(), &[entry(3, 25)]);
        // A divergent follower's new epoch starting below the last start replaces it.
        c.assign(7, 25).unwrap();
        assert_eq!(c.entries(), &[entry(7, 25)]);
    }

    #[test]
    fn the_file_is_kafkas_and_bad_files_are_refused() {
        let entries = vec![entry(0, 0), entry(4, 100)];
        let text = format(&entries);
        assert_eq!(text, "0\n2\n0 0\n4 100\n");
        assert_eq!(parse(&text), Some(entries));
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n0 0\n",
            "0\n2\n4 0\n3 10\n",
            "0\n1\nx 0\n",
            "0\n1\n0 0 0\n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
