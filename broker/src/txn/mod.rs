//! Producer ids, idempotent producer state, and transactions as a partition
//! sees them (open transactions, markers, aborted transactions).

pub mod marker;
pub mod producer_state;
