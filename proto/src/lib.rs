//! gRPC definitions of Fjord's admin API (`proto/admin.proto`).

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("fjord.admin.v1");
    }
}
