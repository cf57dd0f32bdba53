//! ElectLeaders (`kafka-leader-election`, admin clients' `elect_leaders`): this one broker
//! leads every partition and is each one's only replica, so no election is ever needed.
//! Each partition asked for gets ELECTION_NOT_NEEDED, or UNKNOWN_TOPIC_OR_PARTITION; asked
//! for all partitions (null), the answer lists none, as Kafka leaves out those that needed
//! no election.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};

use super::{str_bytes, Broker};

/// Kafka's election types: preferred replica, and unclean.
const ELECTION_TYPES: [i8; 2] = [0, 1];

pub fn handle(broker: &Broker, request: ElectLeadersRequest) -> ElectLeadersResponse {
    let mut response = ElectLeadersResponse::default();
    if !ELECTION_TYPES.contains(&request.election_type) {
        response.error_code = ResponseError::InvalidRequest.code();
        return response;
    }
    response.replica_election_results = request
        .topic_partitions
        .unwrap_or_default()
        .into_iter()
        .map(|asked| {
            let topic = broker.log.topic(asked.topic.as_str());
            let mut result = ReplicaElectionResult::default();
            result.partition_result = asked
                .partitions
                .iter()
                .map(|&partition| {
                    let exists = topic
                        .as_ref()
                        .is_some_and(|t| t.partitions.iter().any(|p| p.index == partition));
                    let (error, message) = if exists {
                        (
                            ResponseError::ElectionNotNeeded,
                            "Leader election not needed for topic partition",
                        )
                    } else {
                        (
                            ResponseError::UnknownTopicOrPartition,
                            "This server does not host this topic-partition",
                        )
                    };
                    let mut outcome = PartitionResult::default();
                    outcome.partition_id = partition;
                    outcome.error_code = error.code();
                    outcome.error_message = Some(str_bytes(message));
                    outcome
                })
                .collect();
            result.topic = asked.topic;
            result
        })
        .collect();
    response
}
