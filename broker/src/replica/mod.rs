//! Partitions (leader state, high watermark) and the replica manager that
//! routes produce and fetch to them.

pub mod manager;
pub mod partition;

pub use manager::ReplicaManager;
pub use partition::Partition;
