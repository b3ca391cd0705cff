//! State shared by the Kafka APIs, the admin API and the metrics endpoint:
//! built once by [`crate::broker::Broker::start`], read everywhere else.

use std::sync::Arc;

use crate::config::{BrokerConfig, Endpoint};
use crate::controller::image::BrokerRegistration;
use crate::controller::Controller;
use crate::group::GroupCoordinator;
use crate::metrics::Metrics;
use crate::replica::ReplicaManager;
use crate::txn::TransactionCoordinator;

pub struct BrokerContext {
    pub config: BrokerConfig,
    pub controller: Arc<Controller>,
    pub replicas: Arc<ReplicaManager>,
    pub metrics: Arc<Metrics>,
    pub groups: Arc<GroupCoordinator>,
    pub txns: Arc<TransactionCoordinator>,
    /// The Kafka endpoint clients are told to use (the bound port when configured as 0).
    pub advertised: Endpoint,
    /// This broker as it registers with the controller (a new incarnation per start).
    pub registration: BrokerRegistration,
}

impl BrokerContext {
    /// The live brokers clients are told about (this one at least).
    pub fn live_brokers(&self) -> Vec<BrokerRegistration> {
        self.controller.live_brokers(&self.registration)
    }
}
