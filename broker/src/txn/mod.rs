//! Producer ids and idempotent producer state (transactions come later).

pub mod producer_state;
