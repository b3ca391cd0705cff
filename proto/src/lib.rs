//! gRPC definitions of Fjord's admin API (`proto/admin.proto`) and the brokers' metadata quorum (`proto/controller.proto`).

pub mod controller {
    pub mod v1 {
        tonic::include_proto!("fjord.controller.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("fjord.admin.v1");
    }
}

/// Machine-readable reasons carried in a `tonic::Status`'s details (as
/// google.rpc.ErrorInfo's `reason`), so clients branch on them, never on
/// message text.
pub mod reason {
    /// ResetGroupOffsets on a group that has active members (FAILED_PRECONDITION).
    pub const GROUP_NOT_EMPTY: &[u8] = b"GROUP_NOT_EMPTY";
}
