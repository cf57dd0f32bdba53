//! DescribeCluster: the one-broker cluster, as admin clients see it.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse};

use super::{authorized_operations, str_bytes, Broker};

pub fn handle(broker: &Broker, request: DescribeClusterRequest) -> DescribeClusterResponse {
    let config = &broker.config;
    let mut node = DescribeClusterBroker::default();
    node.broker_id = config.node_id.into();
    node.host = str_bytes(config.advertised_host.clone());
    node.port = config.advertised_port;
    let mut response = DescribeClusterResponse::default();
    response.cluster_id = str_bytes(broker.log.cluster_id());
    response.controller_id = config.node_id.into();
    response.brokers = vec![node];
    if request.include_cluster_authorized_operations {
        response.cluster_authorized_operations = authorized_operations::CLUSTER;
    }
    response
}
