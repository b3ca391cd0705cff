//! Producer ids, idempotent producer state, transactions as a partition sees
//! them (open transactions, markers, aborted transactions), and the
//! transaction coordinator's per-transactional-id state machine.

pub mod marker;
pub mod metadata;
pub mod producer_state;
