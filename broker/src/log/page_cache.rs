//! Whether a file region is in the page cache, and bringing it in.
//!
//! A fetch of recent data is served from the page cache: the small reads
//! and sendfile(2) of its response copy memory and never wait on the disk.
//! A fetch far behind (a consumer replaying, a new replica catching up) may
//! find its region evicted; reading it on an async worker would stall every
//! connection that worker serves. The fetch path asks `is_resident` and runs
//! `load` for the regions that are not on the blocking pool first.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once cachestat(2) (Linux 6.5) turns out to be missing or forbidden
/// (seccomp): regions then count as resident, as a Kafka broker's network
/// threads assume.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Whether every page of `len` bytes at `position` is in the page cache.
pub fn is_resident(file: &File, position: u64, len: usize) -> bool {
    if len == 0 || UNSUPPORTED.load(Ordering::Relaxed) {
        return true;
    }
    match cached_pages(file, position, len) {
        Some((cached, pages)) => cached >= pages,
        None => {
            UNSUPPORTED.store(true, Ordering::Relaxed);
            true
        }
    }
}

/// Whether residency can be told at all on this kernel.
pub fn is_supported() -> bool {
    !UNSUPPORTED.load(Ordering::Relaxed)
}

/// Reads the region once (into a small scratch buffer) so that its pages are
/// cached: blocking, for the blocking pool.
pub fn load(file: &File, position: u64, len: usize) -> std::io::Result<()> {
    let mut scratch = vec![0u8; len.min(256 * 1024)];
    let mut done = 0;
    while done < len {
        let want = (len - done).min(scratch.len());
        let n = file.read_at(&mut scratch[..want], position + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(())
}

/// `(cached pages, pages spanned)`, or None when cachestat is unavailable here.
#[cfg(target_os = "linux")]
fn cached_pages(file: &File, position: u64, len: usize) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;

    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    /// The same number on every Linux architecture (the unified syscall table).
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range {
        off: position,
        len: len as u64,
    };
    let mut stat = CacheStat::default();
    // SAFETY: both pointers are to live, properly laid out structs for the
    // duration of the call; the kernel only writes `stat`.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut CacheStat,
            0,
        )
    };
    if rc != 0 {
        let error = std::io::Error::last_os_error().raw_os_error();
        // Missing (before Linux 6.5) or forbidden (seccomp): never ask again.
        // Anything else is about this call only: treat the region as resident.
        return match error {
            Some(libc::ENOSYS | libc::EPERM) => None,
            _ => Some((1, 1)),
        };
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let pages = (position + len as u64 - 1) / page - position / page + 1;
    Some((stat.nr_cache, pages))
}

#[cfg(not(target_os = "linux"))]
fn cached_pages(_file: &File, _position: u64, _len: usize) -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn an_evicted_region_is_not_resident_until_loaded() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.as_file().sync_all().unwrap();
        let file = f.reopen().unwrap();
        assert!(is_resident(&file, 4096, 100_000), "just written");
        // Clean pages can be dropped: now the region is on disk only.
        // SAFETY: a plain advice call on an open descriptor.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        if !is_supported() || !cfg!(target_os = "linux") {
            // Without cachestat every region counts as resident.
            assert!(is_resident(&file, 4096, 100_000));
            return;
        }
        assert!(!is_resident(&file, 4096, 100_000), "evicted");
        load(&file, 4096, 100_000).unwrap();
        assert!(is_resident(&file, 4096, 100_000), "loaded");
        // A load running past the end of the file stops there.
        load(&file, (1 << 20) - 10, 100).unwrap();
    }
}
