//! Blocking file work run from async code without stalling the worker it is
//! called on. The rule the broker follows:
//!
//! - **Short disk work on a request's path** (an append, a small read, a
//!   DeleteRecords' segment deletion, a group record): [`blocking`], that is
//!   `block_in_place`. The worker hands its other tasks to the rest of the
//!   pool while the call runs in place, cheaper than a hop to another thread,
//!   and the request keeps its order on its connection.
//! - **Long or unbounded work off a request's path** (fsync, truncation,
//!   recovery, retention, the cleaner, checkpoints, loading a partition's
//!   groups, deleting stray directories): `tokio::task::spawn_blocking`, so
//!   no worker is held for its length.
//! - **Never** plain file I/O on an async worker, and never a
//!   `parking_lot` lock held across an `.await` (a turn that must wait, such
//!   as the one group commit of a partition, is a `tokio::sync::Mutex`).
//!
//! - **Acting on metadata** (logs opened, recovered and deleted as the image
//!   changes): on the metadata publisher's own thread
//!   (`controller/publisher.rs`), neither on openraft's apply task nor on an
//!   async worker.
//!
//! On a current-thread runtime (some tests) [`blocking`] simply runs.

pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
