//! Fjord broker: a Kafka-compatible, partitioned, append-only log.

pub mod admin;
pub mod api;
pub mod blocking;
pub mod broker;
pub mod broker_client;
pub mod config;
pub mod context;
pub mod controller;
pub mod error;
pub mod group;
pub mod log;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod replica;
pub mod shutdown;
pub mod txn;

pub use broker::Broker;
pub use config::BrokerConfig;
