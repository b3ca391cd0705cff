//! A segment's aborted-transaction index (`<base>.txnindex`, Kafka's
//! TransactionIndex): one 34-byte entry per abort marker in the segment,
//! version 0, producer id, first offset, last offset (the marker) and the
//! last stable offset after it. read_committed fetches name these
//! transactions. The entries live and die with their segment (retention,
//! truncation, cleaning), so producer snapshots carry none of them.

use std::io::{self, Write};
use std::path::Path;

use super::producer_state::AbortedTxn;

pub const TXN_INDEX_SUFFIX: &str = ".txnindex";
const ENTRY_SIZE: usize = 34;
const VERSION: i16 = 0;

fn encode(a: &AbortedTxn, last_stable_offset: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&a.producer_id.to_be_bytes());
    out.extend_from_slice(&a.first_offset.to_be_bytes());
    out.extend_from_slice(&a.last_offset.to_be_bytes());
    out.extend_from_slice(&last_stable_offset.to_be_bytes());
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(v)
}

/// Appends entries (with the last stable offset after each) and syncs: a
/// producer snapshot past them relies on the index to name them.
pub fn append(path: &Path, entries: &[(AbortedTxn, i64)]) -> io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(entries.len() * ENTRY_SIZE);
    for (a, lso) in entries {
        encode(a, *lso, &mut buf);
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(&buf)?;
    file.sync_data()
}

/// The entries of an index; none when it does not exist. A torn last entry
/// (a crash mid-append) and entries of an unknown version are skipped.
pub fn read(path: &Path) -> io::Result<Vec<(AbortedTxn, i64)>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(data
        .chunks_exact(ENTRY_SIZE)
        .filter(|e| i16::from_be_bytes([e[0], e[1]]) == VERSION)
        .map(|e| {
            let a = AbortedTxn {
                producer_id: i64_at(e, 2),
                first_offset: i64_at(e, 10),
                last_offset: i64_at(e, 18),
            };
            (a, i64_at(e, 26))
        })
        .collect())
}

/// Keeps the entries `keep` chooses (rewriting the file only when some go)
/// and answers them.
pub fn retain(path: &Path, keep: impl Fn(&AbortedTxn) -> bool) -> io::Result<Vec<AbortedTxn>> {
    let entries = read(path)?;
    let stored = std::fs::metadata(path).map_or(0, |m| m.len() as usize);
    let (kept, gone): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(a, _)| keep(a));
    if !gone.is_empty() || stored != kept.len() * ENTRY_SIZE {
        let mut buf = Vec::with_capacity(kept.len() * ENTRY_SIZE);
        for (a, lso) in &kept {
            encode(a, *lso, &mut buf);
        }
        super::manager::write_atomically(path, &buf)?;
    }
    Ok(kept.into_iter().map(|(a, _)| a).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset,
            last_offset,
        }
    }

    #[test]
    fn entries_round_trip_in_kafkas_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{:020}{TXN_INDEX_SUFFIX}", 0));
        assert!(read(&path).unwrap().is_empty(), "no file, no entries");
        append(&path, &[(txn(7, 0, 4), 5), (txn(8, 2, 9), 3)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 2 * ENTRY_SIZE);
        assert_eq!(&bytes[..2], &[0, 0], "version 0");
        assert_eq!(i64_at(&bytes, 2), 7);
        assert_eq!(i64_at(&bytes, 26), 5, "the last stable offset closes the entry");
        assert_eq!(read(&path).unwrap(), vec![(txn(7, 0, 4), 5), (txn(8, 2, 9), 3)]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_retain_drops_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.txnindex");
        append(&path, &[(txn(7, 0, 4), 5), (txn(8, 2, 9), 10)]).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 1, 2, 3]).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2, "the torn entry is skipped");
        assert_eq!(retain(&path, |a| a.last_offset < 9).unwrap(), vec![txn(7, 0, 4)]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            ENTRY_SIZE as u64,
            "rewritten without the tail"
        );
    }
}
