//! Consumer groups: the classic group protocol's coordinator and committed
//! offsets stored as records in the compacted `__consumer_offsets` topic.

pub mod coordinator;
mod loading;
mod membership;
mod offsets;
pub mod records;
pub mod state;

pub use coordinator::{GroupConfig, GroupCoordinator, OFFSETS_TOPIC};
