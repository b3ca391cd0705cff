//! Transactions at their coordinator: each transactional id's state machine
//! ([`metadata`]), its records in `__transaction_state` ([`records`]), the
//! coordinator serving them ([`coordinator`]), loading as leadership moves
//! ([`loading`]) and the markers that end a transaction in its partitions
//! ([`markers`]). What a partition keeps of transactions (open ones, the
//! last stable offset, aborted ones) is the log's: `log::producer_state`.

pub mod coordinator;
mod loading;
pub mod markers;
pub mod metadata;
pub mod records;

pub use coordinator::{TransactionCoordinator, TxnConfig, TRANSACTION_STATE_TOPIC};
