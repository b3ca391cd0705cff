//! Partitions (leader state, high watermark), the replica manager that
//! routes produce and fetch to them, the followers' fetchers and the
//! leader's ISR upkeep, and the throttle on replicas a reassignment adds.

pub mod fetcher;
pub mod isr;
pub mod manager;
pub mod partition;
pub mod throttle;

pub use manager::ReplicaManager;
pub use partition::Partition;
