//! DescribeGroups: state, protocol and members (with assignments) of groups. An unknown
//! group is described as `Dead`, as Kafka does.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::{authorized_operations, str_bytes, Broker};

pub async fn handle(broker: &Broker, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    for group_id in request.groups {
        let description = broker.groups.describe(&group_id).await;
        let mut group = DescribedGroup::default();
        group.group_id = group_id;
        group.group_state = str_bytes(description.state);
        group.protocol_type = str_bytes(description.protocol_type);
        group.protocol_data = str_bytes(description.protocol);
        if request.include_authorized_operations {
            group.authorized_operations = authorized_operations::GROUP;
        }
        group.members = description
            .members
            .into_iter()
            .map(|m| {
                let mut member = DescribedGroupMember::default();
                member.member_id = str_bytes(m.member_id);
                member.group_instance_id = m.instance_id.map(str_bytes);
                member.client_id = str_bytes(m.client_id);
                member.client_host = str_bytes(m.client_host);
                member.member_metadata = m.metadata;
                member.member_assignment = m.assignment;
                member
            })
            .collect();
        response.groups.push(group);
    }
    response
}
