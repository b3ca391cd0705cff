//! Partitions (leader state, high watermark), the replica manager that
//! routes produce and fetch to them, the followers' fetchers and the
//! leader's ISR upkeep.

pub mod fetcher;
pub mod isr;
pub mod manager;
pub mod partition;

pub use manager::ReplicaManager;
pub use partition::Partition;
