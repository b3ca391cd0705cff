//! Partitions (leader state, high watermark), the replica manager that
//! routes produce and fetch to them (`produce`: a leader's append and its
//! delayed answer; `fetch`: what a fetch reads), the purgatory every delayed
//! operation waits in, the followers' fetchers and the leader's ISR upkeep,
//! and the throttle on replicas a reassignment adds.

pub mod fetch;
pub mod fetcher;
pub mod isr;
pub mod manager;
pub mod partition;
pub mod produce;
pub mod purgatory;
pub mod throttle;

pub use manager::ReplicaManager;
pub use partition::Partition;
