//! Transactions at their coordinator: each transactional id's state machine
//! ([`metadata`]), its records in `__transaction_state` ([`records`]), the
//! coordinator serving them ([`coordinator`]), loading as leadership moves
//! ([`loading`]), the markers that end a transaction in its partitions
//! ([`markers`]) and the partitions' check that a transactional batch
//! belongs to an ongoing transaction ([`verification`], KIP-890). What a
//! partition keeps of transactions (open ones, the last stable offset,
//! aborted ones) is the log's: `log::producer_state`.

pub mod coordinator;
mod loading;
pub mod markers;
pub mod metadata;
pub mod records;
pub mod verification;

pub use coordinator::{TransactionCoordinator, TxnConfig, TRANSACTION_STATE_TOPIC};
