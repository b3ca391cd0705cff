//! Consumer group APIs: JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{authorized, str, Apis};
use crate::group::coordinator::{CommitRequest, Committed};
use crate::group::state::{JoinRequest, SyncRequest};

fn opt(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|x| x.as_str().to_string())
}

/// Groups are sorted into topic -> partitions as the responses want them.
fn by_topic<T>(items: Vec<(String, i32, T)>) -> Vec<(String, Vec<(i32, T)>)> {
    let mut out: Vec<(String, Vec<(i32, T)>)> = Vec::new();
    for (t, p, v) in items {
        match out.iter_mut().find(|(name, _)| *name == t) {
            Some((_, ps)) => ps.push((p, v)),
            None => out.push((t, vec![(p, v)])),
        }
    }
    out
}

pub async fn join(
    apis: &Apis,
    r: JoinGroupRequest,
    version: i16,
    client_host: &str,
    client_id: &str,
) -> JoinGroupResponse {
    super::coordinator::ensure_offsets_topic(apis).await;
    let req = JoinRequest {
        member_id: r.member_id.as_str().to_string(),
        instance_id: opt(&r.group_instance_id),
        client_id: client_id.to_string(),
        client_host: client_host.to_string(),
        session_timeout_ms: r.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            r.rebalance_timeout_ms
        } else {
            r.session_timeout_ms
        },
        protocol_type: r.protocol_type.as_str().to_string(),
        protocols: r
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let result = apis.groups.join(r.group_id.as_str(), req).await;
    let members = result
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(str(id))
                .with_group_instance_id(if version >= 5 { instance.map(str) } else { None })
                .with_metadata(metadata)
        })
        .collect();
    let response = JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation)
        .with_leader(str(result.leader))
        .with_member_id(str(result.member_id))
        .with_members(members);
    let response = if version >= 7 {
        response
            .with_protocol_type(result.protocol_type.map(str))
            .with_protocol_name(result.protocol_name.map(str))
    } else {
        // Not nullable before v7.
        response.with_protocol_name(Some(str(result.protocol_name.unwrap_or_default())))
    };
    if version >= 9 {
        response.with_skip_assignment(result.skip_assignment)
    } else {
        response
    }
}

pub async fn sync(apis: &Apis, r: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let req = SyncRequest {
        member_id: r.member_id.as_str().to_string(),
        instance_id: opt(&r.group_instance_id),
        generation: r.generation_id,
        protocol_type: opt(&r.protocol_type),
        protocol_name: opt(&r.protocol_name),
        assignments: r
            .assignments
            .iter()
            .map(|a| (a.member_id.as_str().to_string(), a.assignment.clone()))
            .collect(),
    };
    let result = apis.groups.sync(r.group_id.as_str(), req).await;
    let response = SyncGroupResponse::default()
        .with_error_code(result.error)
        .with_assignment(result.assignment);
    if version >= 5 {
        response
            .with_protocol_type(result.protocol_type.map(str))
            .with_protocol_name(result.protocol_name.map(str))
    } else {
        response
    }
}

pub fn heartbeat(apis: &Apis, r: HeartbeatRequest) -> HeartbeatResponse {
    let code = apis.groups.heartbeat(
        r.group_id.as_str(),
        r.member_id.as_str(),
        r.group_instance_id.as_ref().map(|s| s.as_str()),
        r.generation_id,
    );
    HeartbeatResponse::default().with_error_code(code)
}

pub fn leave(apis: &Apis, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        r.members
            .iter()
            .map(|m| (m.member_id.as_str().to_string(), opt(&m.group_instance_id)))
            .collect()
    } else {
        vec![(r.member_id.as_str().to_string(), None)]
    };
    let (group_error, codes) = apis.groups.leave(r.group_id.as_str(), &members);
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(if group_error != 0 {
            group_error
        } else {
            codes.first().copied().unwrap_or(0)
        });
    }
    let responses = members
        .into_iter()
        .zip(codes)
        .map(|((id, instance), code)| {
            MemberResponse::default()
                .with_member_id(str(id))
                .with_group_instance_id(instance.map(str))
                .with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default()
        .with_error_code(group_error)
        .with_members(responses)
}

pub async fn offset_commit(apis: &Apis, r: OffsetCommitRequest, version: i16) -> OffsetCommitResponse {
    super::coordinator::ensure_offsets_topic(apis).await;
    let offsets = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| CommitRequest {
                topic: t.name.as_str().to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 6 { p.committed_leader_epoch } else { -1 },
                metadata: opt(&p.committed_metadata),
            })
        })
        .collect();
    let results = apis
        .groups
        .commit(
            r.group_id.as_str(),
            r.member_id.as_str(),
            r.group_instance_id.as_ref().map(|s| s.as_str()),
            r.generation_id_or_member_epoch,
            offsets,
        )
        .await;
    let topics = by_topic(results)
        .into_iter()
        .map(|(t, ps)| {
            OffsetCommitResponseTopic::default()
                .with_name(TopicName(str(t)))
                .with_partitions(
                    ps.into_iter()
                        .map(|(p, code)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// OffsetFetch: a group's committed offsets (v8+: several groups). With
/// `require_stable` (v7+), a partition whose commit is still being
/// replicated answers UNSTABLE_OFFSET_COMMIT and the client retries.
pub fn offset_fetch(apis: &Apis, r: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    let require_stable = version >= 7 && r.require_stable;
    let value = |c: &Result<Option<Committed>, i16>| match c {
        Ok(Some(c)) => (c.offset, c.leader_epoch, c.metadata.clone(), 0),
        Ok(None) => (-1, -1, String::new(), 0),
        Err(code) => (-1, -1, String::new(), *code),
    };
    let fetch = |group: &str, topics: Option<Vec<(String, i32)>>| {
        apis.groups.fetch_offsets(group, topics, require_stable).map(|offsets| {
            by_topic(
                offsets
                    .into_iter()
                    .map(|f| (f.topic, f.partition, f.committed))
                    .collect(),
            )
        })
    };
    if version >= 8 {
        let groups = r
            .groups
            .iter()
            .map(|g| {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.as_str().to_string(), *p)))
                        .collect()
                });
                let group = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                match fetch(g.group_id.as_str(), topics) {
                    Err(code) => group.with_error_code(code),
                    Ok(offsets) => group.with_topics(
                        offsets
                            .into_iter()
                            .map(|(t, ps)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(str(t)))
                                    .with_partitions(
                                        ps.into_iter()
                                            .map(|(p, c)| {
                                                let (offset, epoch, metadata, code) = value(&c);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(str(metadata)))
                                                    .with_error_code(code)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = r.topics.as_ref().map(|ts| {
        ts.iter()
            .flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.as_str().to_string(), *p)))
            .collect()
    });
    match fetch(r.group_id.as_str(), topics) {
        Err(code) => {
            let response = OffsetFetchResponse::default();
            if version >= 2 {
                response.with_error_code(code)
            } else {
                response
            }
        }
        Ok(offsets) => OffsetFetchResponse::default().with_topics(
            offsets
                .into_iter()
                .map(|(t, ps)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(str(t)))
                        .with_partitions(
                            ps.into_iter()
                                .map(|(p, c)| {
                                    let (offset, epoch, metadata, code) = value(&c);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
                                        .with_metadata(Some(str(metadata)))
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    }
}

pub fn list(apis: &Apis, r: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let states: Vec<String> = r.states_filter.iter().map(|s| s.as_str().to_lowercase()).collect();
    let types: Vec<String> = r.types_filter.iter().map(|s| s.as_str().to_lowercase()).collect();
    match apis.groups.list() {
        Err(code) => ListGroupsResponse::default().with_error_code(code),
        Ok(groups) => ListGroupsResponse::default().with_groups(
            groups
                .into_iter()
                .filter(|(_, _, state)| states.is_empty() || states.contains(&state.to_lowercase()))
                .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
                .map(|(id, ptype, state)| {
                    let g = ListedGroup::default()
                        .with_group_id(GroupId(str(id)))
                        .with_protocol_type(str(ptype));
                    let g = if version >= 4 {
                        g.with_group_state(str(state))
                    } else {
                        g
                    };
                    if version >= 5 {
                        g.with_group_type(str("classic"))
                    } else {
                        g
                    }
                })
                .collect(),
        ),
    }
}

pub fn describe(apis: &Apis, r: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
    let groups = r
        .groups
        .iter()
        .map(|id| {
            let group = DescribedGroup::default().with_group_id(id.clone());
            match apis.groups.describe(id.as_str()) {
                Err(code) => group.with_error_code(code),
                Ok(d) => group
                    .with_authorized_operations(if version >= 3 {
                        authorized::when(r.include_authorized_operations, authorized::GROUP)
                    } else {
                        authorized::NOT_REQUESTED
                    })
                    .with_group_state(str(d.state))
                    .with_protocol_type(str(d.protocol_type))
                    .with_protocol_data(str(d.protocol))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(str(m.member_id))
                                    .with_group_instance_id(if version >= 4 { m.instance_id.map(str) } else { None })
                                    .with_client_id(str(m.client_id))
                                    .with_client_host(str(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub fn delete(apis: &Apis, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let results = r
        .groups_names
        .iter()
        .map(|g| {
            DeletableGroupResult::default()
                .with_group_id(g.clone())
                .with_error_code(apis.groups.delete_group(g.as_str()))
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}

pub fn offset_delete(apis: &Apis, r: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let partitions = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.as_str().to_string(), p.partition_index))
        })
        .collect();
    match apis.groups.delete_offsets(r.group_id.as_str(), partitions) {
        Err(code) => OffsetDeleteResponse::default().with_error_code(code),
        Ok(results) => OffsetDeleteResponse::default().with_topics(
            by_topic(results)
                .into_iter()
                .map(|(t, ps)| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(TopicName(str(t)))
                        .with_partitions(
                            ps.into_iter()
                                .map(|(p, code)| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    }
}
