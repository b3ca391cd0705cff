//! The operator's client of the brokers' admin gRPC API.

use std::time::Duration;

use fjord_crds::Cluster;
use fjord_proto::admin::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

use crate::{desired, Context, Error};

pub type Admin = AdminClient<Channel>;

/// Connects to a cluster's admin API (or the configured override).
pub async fn connect(ctx: &Context, cluster: &Cluster) -> Result<Admin, Error> {
    let endpoint = ctx
        .config
        .admin_endpoint_override
        .clone()
        .unwrap_or_else(|| desired::admin_endpoint(cluster));
    let unreachable = |reason: String| Error::Unreachable {
        endpoint: endpoint.clone(),
        reason,
    };
    let channel = Endpoint::from_shared(endpoint.clone())
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(AdminClient::new(channel))
}
