//! Fjord broker: a Kafka-compatible, partitioned, append-only log.

pub mod config;
pub mod error;
pub mod log;
pub mod txn;
