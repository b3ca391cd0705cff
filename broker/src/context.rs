//! State shared by the Kafka APIs, the admin API and the metrics endpoint:
//! built once by [`crate::broker::Broker::start`], read everywhere else.

use std::sync::Arc;

use crate::config::{BrokerConfig, Endpoint};
use crate::controller::Controller;
use crate::group::GroupCoordinator;
use crate::metrics::Metrics;
use crate::replica::ReplicaManager;

pub struct BrokerContext {
    pub config: BrokerConfig,
    pub controller: Arc<Controller>,
    pub replicas: Arc<ReplicaManager>,
    pub metrics: Arc<Metrics>,
    pub groups: Arc<GroupCoordinator>,
    /// The Kafka endpoint clients are told to use (the bound port when configured as 0).
    pub advertised: Endpoint,
}
