//! Blocking file work (appends, writes, fsyncs) run from async code without
//! stalling the worker it is called on: `block_in_place` hands that worker's
//! other tasks to the rest of the pool while the call runs in place, cheaper
//! than a hop to `spawn_blocking` for short disk work. On a current-thread
//! runtime (some tests) it simply runs.

pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
