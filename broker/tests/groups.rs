//! Consumer groups with librdkafka: assignors, rebalances on leave and on
//! session expiry, static membership, commits, resets, restarts, bad input.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::raw::Raw;
use common::TestBroker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);

/// Offsets expire as soon as they may, checked every 100 ms.
const EXPIRE_AT_ONCE: &[(&str, &str)] = &[
    ("offsets.retention.minutes", "0"),
    ("offsets.retention.check.interval.ms", "100"),
];

/// OffsetCommit v8 of one offset for a group without members (manual assignment).
fn manual_commit(group: &str, topic: &str, offset: i64) -> RequestKind {
    RequestKind::OffsetCommit(
        OffsetCommitRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(s(""))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)])]),
    )
}

/// The error code of the one partition of an OffsetCommit response.
fn commit_error(response: ResponseKind) -> i16 {
    match response {
        ResponseKind::OffsetCommit(r) => r.topics[0].partitions[0].error_code,
        other => panic!("{other:?}"),
    }
}

/// Group timers short enough for tests; the protocol is unchanged.
const FAST_GROUPS: &[(&str, &str)] = &[
    ("group.initial.rebalance.delay.ms", "0"),
    ("group.min.session.timeout.ms", "500"),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A group member polling on its own thread, publishing its assignment.
struct Member {
    assignment: Arc<Mutex<BTreeSet<i32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    fn start(b: &TestBroker, group: &str, topic: &str, extra: &[(&str, &str)]) -> Member {
        let mut config = b.client_config();
        config
            .set("group.id", group)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "100")
            .set("auto.offset.reset", "earliest");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        let consumer: BaseConsumer = config.create().unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let assignment = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (assignment.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let _ = consumer.poll(Duration::from_millis(50));
                if let Ok(tpl) = consumer.assignment() {
                    *a.lock().unwrap() = tpl.elements().iter().map(|e| e.partition()).collect();
                }
            }
            // Dropping closes the consumer: a dynamic member sends LeaveGroup.
            drop(consumer);
        });
        Member {
            assignment,
            stop,
            thread: Some(thread),
        }
    }

    fn assigned(&self) -> BTreeSet<i32> {
        self.assignment.lock().unwrap().clone()
    }

    fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Disjoint, non-empty assignments covering every partition.
fn covers(members: &[&Member], partitions: i32) -> bool {
    let sets: Vec<BTreeSet<i32>> = members.iter().map(|m| m.assigned()).collect();
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
    sets.iter().all(|s| !s.is_empty()) && total == partitions as usize && union == (0..partitions).collect()
}

#[test]
fn every_assignor_spreads_and_rebalances_on_leave() {
    let rt = runtime();
    let b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("six", 6, &[]));
    for strategy in ["range", "roundrobin", "cooperative-sticky"] {
        let group = format!("assign-{strategy}");
        let extra = [("partition.assignment.strategy", strategy)];
        let members: Vec<Member> = (0..3).map(|_| Member::start(&b, &group, "six", &extra)).collect();
        wait_for(&format!("{strategy}: 3 members cover 6 partitions"), WAIT, || {
            covers(&members.iter().collect::<Vec<_>>(), 6)
        });
        let description = b.broker().ctx.groups.describe(&group).unwrap();
        assert_eq!((description.state, description.members.len()), ("Stable", 3));
        let expected_protocol = if strategy == "cooperative-sticky" {
            "cooperative-sticky"
        } else {
            strategy
        };
        assert_eq!(description.protocol, expected_protocol);

        let mut members = members.into_iter();
        members.next().unwrap().close();
        let rest: Vec<Member> = members.collect();
        wait_for(&format!("{strategy}: the leaver's partitions move"), WAIT, || {
            covers(&rest.iter().collect::<Vec<_>>(), 6)
        });
        for m in rest {
            m.close();
        }
    }
}

#[test]
fn a_silent_member_is_expired_after_its_session_timeout() {
    let rt = runtime();
    let b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("expiry", 6, &[]));
    // A static member does not send LeaveGroup when it closes (KIP-345): to the
    // group it vanishes like a killed process, and only its session timeout frees its partitions.
    let silent = Member::start(
        &b,
        "expiry",
        "expiry",
        &[("group.instance.id", "vanishing"), ("session.timeout.ms", "1500")],
    );
    let survivor = Member::start(&b, "expiry", "expiry", &[]);
    wait_for("two members share six partitions", WAIT, || {
        covers(&[&silent, &survivor], 6)
    });
    let closed_at = Instant::now();
    silent.close();
    wait_for("the survivor takes every partition", WAIT, || {
        survivor.assigned().len() == 6
    });
    assert!(
        closed_at.elapsed() >= Duration::from_millis(1000),
        "moved by session expiry, not a LeaveGroup"
    );
}

#[test]
fn a_restarted_static_member_gets_its_partitions_back_without_rebalance() {
    let rt = runtime();
    let b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("static", 6, &[]));
    let extra = [("group.instance.id", "instance-a"), ("session.timeout.ms", "10000")];
    let a = Member::start(&b, "static", "static", &extra);
    let other = Member::start(&b, "static", "static", &[]);
    wait_for("stable group", WAIT, || {
        covers(&[&a, &other], 6)
            && b.broker()
                .ctx
                .groups
                .describe("static")
                .is_ok_and(|d| d.state == "Stable")
    });
    let before = a.assigned();
    let others_before = other.assigned();
    let (generation, rebalances) = b.broker().ctx.groups.generation("static").unwrap();
    a.close();
    let restarted = Member::start(&b, "static", "static", &extra);
    wait_for("the restarted member is assigned", WAIT, || {
        !restarted.assigned().is_empty()
    });
    assert_eq!(restarted.assigned(), before, "same partitions");
    assert_eq!(other.assigned(), others_before);
    assert_eq!(
        b.broker().ctx.groups.generation("static").unwrap(),
        (generation, rebalances),
        "no rebalance"
    );
}

fn produce(rt: &tokio::runtime::Runtime, b: &TestBroker, topic: &str, n: usize) {
    let producer = b.producer(&[]);
    rt.block_on(async {
        for i in 0..n {
            let v = format!("v{i}");
            producer
                .send(FutureRecord::<str, _>::to(topic).payload(&v).partition(0), WAIT)
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
}

fn group_consumer(b: &TestBroker, group: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut c = b.client_config();
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "100");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

fn poll_n(c: &BaseConsumer, n: usize) -> Vec<i64> {
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.len() < n && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(50)) {
            out.push(m.expect("consume").offset());
        }
    }
    out
}

#[test]
fn commits_with_metadata_resume_and_survive_restart() {
    let rt = runtime();
    let mut b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("ledger", 1, &[]));
    produce(&rt, &b, "ledger", 100);

    // librdkafka's destroy waits for partition lists it handed out: each consumer
    // lives in a block that drops them first.
    {
        let c = group_consumer(&b, "ledger-app", &[("auto.offset.reset", "earliest")]);
        c.subscribe(&["ledger"]).unwrap();
        let first = poll_n(&c, 40);
        assert_eq!(first, (0..40).collect::<Vec<_>>());
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("ledger", 0, Offset::Offset(40)).unwrap();
        tpl.find_partition("ledger", 0).unwrap().set_metadata("checkpoint-40");
        c.commit(&tpl, CommitMode::Sync).unwrap();
        let committed = c.committed(WAIT).unwrap();
        let e = committed.find_partition("ledger", 0).unwrap();
        assert_eq!((e.offset(), e.metadata()), (Offset::Offset(40), "checkpoint-40"));
    }
    {
        // A new member of the group resumes at the commit: nothing lost, nothing before it again.
        let c = group_consumer(&b, "ledger-app", &[("auto.offset.reset", "earliest")]);
        c.subscribe(&["ledger"]).unwrap();
        let rest = poll_n(&c, 60);
        assert_eq!(rest, (40..100).collect::<Vec<_>>());
        // commitAsync: the offset arrives without waiting in the call.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("ledger", 0, Offset::Offset(100)).unwrap();
        tpl.find_partition("ledger", 0).unwrap().set_metadata("async");
        c.commit(&tpl, CommitMode::Async).unwrap();
        wait_for("async commit visible", WAIT, || {
            b.broker()
                .ctx
                .groups
                .committed("ledger-app")
                .unwrap()
                .iter()
                .any(|(_, _, o)| o.offset == 100)
        });
    }

    let read = |b: &TestBroker| {
        let c = group_consumer(b, "ledger-app", &[]);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("ledger", 0);
        let got = c.committed_offsets(tpl, WAIT).unwrap();
        let e = got.find_partition("ledger", 0).unwrap();
        let out = (e.offset(), e.metadata().to_string());
        drop(got);
        out
    };
    assert_eq!(read(&b), (Offset::Offset(100), "async".to_string()));
    rt.block_on(b.restart(FAST_GROUPS));
    assert_eq!(
        read(&b),
        (Offset::Offset(100), "async".to_string()),
        "committed offsets survive a restart"
    );
}

#[test]
fn auto_offset_reset_earliest_latest_and_none() {
    let rt = runtime();
    let b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("reset", 1, &[]));
    produce(&rt, &b, "reset", 10);

    let earliest = group_consumer(&b, "reset-earliest", &[("auto.offset.reset", "earliest")]);
    earliest.subscribe(&["reset"]).unwrap();
    assert_eq!(poll_n(&earliest, 10), (0..10).collect::<Vec<_>>());

    let latest = group_consumer(&b, "reset-latest", &[("auto.offset.reset", "latest")]);
    latest.subscribe(&["reset"]).unwrap();
    // Keep producing until the consumer, once positioned at the end, sees a record.
    let producer = b.producer(&[]);
    let deadline = Instant::now() + WAIT;
    let first = loop {
        assert!(Instant::now() < deadline, "latest consumer never received a record");
        rt.block_on(producer.send(FutureRecord::<str, str>::to("reset").payload("new").partition(0), WAIT))
            .map_err(|(e, _)| e)
            .unwrap();
        if let Some(m) = latest.poll(Duration::from_millis(200)) {
            break m.unwrap().offset();
        }
    };
    assert!(first >= 10, "latest skips the records before it: first offset {first}");

    let none = group_consumer(&b, "reset-none", &[("auto.offset.reset", "error")]);
    none.subscribe(&["reset"]).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut error = None;
    while error.is_none() && Instant::now() < deadline {
        if let Some(Err(e)) = none.poll(Duration::from_millis(50)) {
            error = Some(e);
        }
    }
    assert!(matches!(error, Some(KafkaError::MessageConsumption(_))), "{error:?}");
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

#[test]
fn bad_group_requests_get_kafka_errors_and_the_group_keeps_working() {
    let rt = runtime();
    let b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("guarded", 1, &[]));
    let member = group_consumer(&b, "guarded-app", &[("auto.offset.reset", "earliest")]);
    member.subscribe(&["guarded"]).unwrap();
    produce(&rt, &b, "guarded", 1);
    assert_eq!(poll_n(&member, 1), vec![0]);
    let real = b.broker().ctx.groups.describe("guarded-app").unwrap();
    let real_id = real.members[0].member_id.clone();
    let (generation, _) = b.broker().ctx.groups.generation("guarded-app").unwrap();

    rt.block_on(async {
        let mut raw = Raw::connect(&b.bootstrap).await;
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(s("guarded-app")))
            .with_session_timeout_ms(6000)
            .with_rebalance_timeout_ms(6000)
            .with_member_id(s(""))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("no-such-assignor"))
                .with_metadata(bytes::Bytes::new())]);
        match raw
            .request(ApiKey::JoinGroup, 5, RequestKind::JoinGroup(join))
            .await
            .unwrap()
        {
            ResponseKind::JoinGroup(r) => assert_eq!(r.error_code, ResponseError::InconsistentGroupProtocol.code()),
            other => panic!("{other:?}"),
        }
        let hb = |member: &str, generation: i32| {
            RequestKind::Heartbeat(
                HeartbeatRequest::default()
                    .with_group_id(GroupId(s("guarded-app")))
                    .with_member_id(s(member))
                    .with_generation_id(generation),
            )
        };
        match raw
            .request(ApiKey::Heartbeat, 3, hb("ghost", generation))
            .await
            .unwrap()
        {
            ResponseKind::Heartbeat(r) => assert_eq!(r.error_code, ResponseError::UnknownMemberId.code()),
            other => panic!("{other:?}"),
        }
        match raw
            .request(ApiKey::Heartbeat, 3, hb(&real_id, generation + 7))
            .await
            .unwrap()
        {
            ResponseKind::Heartbeat(r) => assert_eq!(r.error_code, ResponseError::IllegalGeneration.code()),
            other => panic!("{other:?}"),
        }
        let commit = OffsetCommitRequest::default()
            .with_group_id(GroupId(s("guarded-app")))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s("ghost"))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s("guarded")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(999)])]);
        match raw
            .request(ApiKey::OffsetCommit, 8, RequestKind::OffsetCommit(commit))
            .await
            .unwrap()
        {
            ResponseKind::OffsetCommit(r) => {
                assert_eq!(
                    r.topics[0].partitions[0].error_code,
                    ResponseError::UnknownMemberId.code()
                )
            }
            other => panic!("{other:?}"),
        }
    });
    // The real member was not disturbed.
    produce(&rt, &b, "guarded", 1);
    assert_eq!(poll_n(&member, 1), vec![1]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("guarded", 0, Offset::Offset(2)).unwrap();
    member.commit(&tpl, CommitMode::Sync).unwrap();
    assert_eq!(b.broker().ctx.groups.generation("guarded-app").unwrap().0, generation);
}

#[test]
fn groups_are_listed_described_and_lag_is_exported() {
    let rt = runtime();
    let b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("lagging", 1, &[]));
    produce(&rt, &b, "lagging", 30);
    let c = group_consumer(&b, "lag-app", &[("auto.offset.reset", "earliest")]);
    c.subscribe(&["lagging"]).unwrap();
    assert_eq!(poll_n(&c, 10).len(), 10);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("lagging", 0, Offset::Offset(10)).unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();

    let groups = c.fetch_group_list(Some("lag-app"), WAIT).unwrap();
    let g = &groups.groups()[0];
    assert_eq!(
        (g.name(), g.state(), g.protocol_type()),
        ("lag-app", "Stable", "consumer")
    );
    assert_eq!(g.members().len(), 1);
    assert!(!g.members()[0].assignment().unwrap_or_default().is_empty());

    let ctx = &b.broker().ctx;
    ctx.metrics.update_groups(&ctx.groups, &ctx.replicas);
    let text = ctx.metrics.render(&ctx.replicas);
    assert!(
        text.contains("fjord_consumer_group_lag{group=\"lag-app\",partition=\"0\",topic=\"lagging\"} 20"),
        "{text}"
    );
    assert!(text.contains("fjord_consumer_group_lag_sum{group=\"lag-app\"} 20"));
    assert!(text.contains("fjord_consumer_group_members{group=\"lag-app\",state=\"Stable\"} 1"));
}

#[test]
fn grpc_admin_describes_groups_and_resets_offsets_of_empty_groups() {
    use fjord_proto::admin::v1 as pb;
    let rt = runtime();
    let b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("resettable", 1, &[]));
    produce(&rt, &b, "resettable", 50);
    let mut admin = rt
        .block_on(pb::admin_client::AdminClient::connect(format!(
            "http://{}",
            b.broker().admin_addr
        )))
        .unwrap();
    let reset = |to: pb::reset_group_offsets_request::To, value: i64| pb::ResetGroupOffsetsRequest {
        group_id: "reset-app".into(),
        to: to as i32,
        topics: vec!["resettable".into()],
        value,
    };
    {
        let c = group_consumer(&b, "reset-app", &[("auto.offset.reset", "earliest")]);
        c.subscribe(&["resettable"]).unwrap();
        assert_eq!(poll_n(&c, 50).len(), 50);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("resettable", 0, Offset::Offset(50)).unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
        drop(tpl);
        let d = rt
            .block_on(admin.describe_group(pb::DescribeGroupRequest {
                group_id: "reset-app".into(),
            }))
            .unwrap()
            .into_inner();
        assert_eq!((d.state.as_str(), d.members.len()), ("Stable", 1));
        assert_eq!(
            d.members[0].assignment,
            vec![pb::TopicPartitions {
                topic: "resettable".into(),
                partitions: vec![0]
            }]
        );
        assert_eq!((d.offsets[0].committed_offset, d.offsets[0].lag), (50, 0));
        let refused = rt
            .block_on(admin.reset_group_offsets(reset(pb::reset_group_offsets_request::To::Offset, 10)))
            .unwrap_err();
        assert_eq!(
            (refused.code(), refused.details()),
            (tonic::Code::FailedPrecondition, fjord_proto::reason::GROUP_NOT_EMPTY),
            "not while members are active, said in a typed detail"
        );
    }
    let d = rt
        .block_on(admin.reset_group_offsets(reset(pb::reset_group_offsets_request::To::Offset, 10)))
        .unwrap()
        .into_inner();
    assert_eq!(
        (d.state.as_str(), d.offsets[0].committed_offset, d.total_lag),
        ("Empty", 10, 40)
    );
    let c = group_consumer(&b, "reset-app", &[]);
    c.subscribe(&["resettable"]).unwrap();
    assert_eq!(
        poll_n(&c, 40),
        (10..50).collect::<Vec<_>>(),
        "a consumer resumes from the reset offset"
    );
    let listed = rt
        .block_on(admin.list_groups(pb::ListGroupsRequest {}))
        .unwrap()
        .into_inner();
    assert!(listed.groups.iter().any(|g| g.group_id == "reset-app"));
}

#[test]
fn offsets_of_groups_that_stay_empty_expire() {
    let rt = runtime();
    let overrides = [FAST_GROUPS, EXPIRE_AT_ONCE].concat();
    let b = rt.block_on(TestBroker::start(&overrides));
    rt.block_on(b.create_topic("expiring", 1, &[]));
    {
        // A consumer with manual assignment commits for a group without members.
        let c = group_consumer(&b, "short-lived", &[]);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("expiring", 0, Offset::Offset(0)).unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
    wait_for("the committed offset expires", WAIT, || {
        b.broker()
            .ctx
            .groups
            .committed("short-lived")
            .is_ok_and(|o| o.is_empty())
    });
    // Expired offsets are tombstoned in __consumer_offsets: they stay gone after a
    // restart, even with the default retention that would keep them.
    let mut b = b;
    rt.block_on(b.restart(FAST_GROUPS));
    wait_for("the coordinator reloads", WAIT, || b.broker().ctx.groups.is_loaded());
    assert!(b.broker().ctx.groups.committed("short-lived").unwrap().is_empty());
}

/// With fewer in-sync replicas than min.insync.replicas, the coordinator's
/// writes to `__consumer_offsets` fail as Kafka's do: OffsetCommit gets the
/// retriable COORDINATOR_NOT_AVAILABLE (clients back off and retry), SyncGroup
/// too, with no assignment handed out, and the admin reset answers
/// Unavailable, which callers such as the operator retry.
#[test]
fn coordinator_writes_below_min_isr_get_retriable_errors() {
    use fjord_proto::admin::v1 as pb;
    let rt = runtime();
    let mut overrides = FAST_GROUPS.to_vec();
    overrides.push(("min.insync.replicas", "2"));
    let b = rt.block_on(TestBroker::start(&overrides));
    rt.block_on(b.create_topic("strict", 1, &[]));
    rt.block_on(async {
        let mut raw = Raw::connect(&b.bootstrap).await;
        let response = raw
            .request(ApiKey::OffsetCommit, 8, manual_commit("strict-app", "strict", 0))
            .await
            .unwrap();
        assert_eq!(commit_error(response), ResponseError::CoordinatorNotAvailable.code());
        // A member's assignment is not handed out when it could not be stored.
        let join = |member: &str| {
            RequestKind::JoinGroup(
                JoinGroupRequest::default()
                    .with_group_id(GroupId(s("strict-group")))
                    .with_session_timeout_ms(6000)
                    .with_rebalance_timeout_ms(6000)
                    .with_member_id(s(member))
                    .with_protocol_type(s("consumer"))
                    .with_protocols(vec![JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(bytes::Bytes::new())]),
            )
        };
        let member = match raw.request(ApiKey::JoinGroup, 5, join("")).await.unwrap() {
            ResponseKind::JoinGroup(r) => {
                assert_eq!(r.error_code, ResponseError::MemberIdRequired.code());
                r.member_id
            }
            other => panic!("{other:?}"),
        };
        let generation = match raw.request(ApiKey::JoinGroup, 5, join(&member)).await.unwrap() {
            ResponseKind::JoinGroup(r) => {
                assert_eq!((r.error_code, &r.leader), (0, &member));
                r.generation_id
            }
            other => panic!("{other:?}"),
        };
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(s("strict-group")))
            .with_generation_id(generation)
            .with_member_id(member.clone())
            .with_assignments(vec![sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(member.clone())
                .with_assignment(bytes::Bytes::from_static(b"assignment"))]);
        match raw
            .request(ApiKey::SyncGroup, 3, RequestKind::SyncGroup(sync))
            .await
            .unwrap()
        {
            ResponseKind::SyncGroup(r) => {
                assert_eq!(r.error_code, ResponseError::CoordinatorNotAvailable.code());
                assert!(r.assignment.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", b.broker().admin_addr))
            .await
            .unwrap();
        let refused = admin
            .reset_group_offsets(pb::ResetGroupOffsetsRequest {
                group_id: "strict-app".into(),
                to: pb::reset_group_offsets_request::To::Earliest as i32,
                topics: vec!["strict".into()],
                value: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    });
    assert!(
        b.broker().ctx.groups.committed_snapshot().is_empty(),
        "nothing was committed"
    );
}

/// A group lives in `__consumer_offsets` partition `abs(hashCode) % 50`, as in
/// Kafka ("my-group": 12). Offsets an older Fjord wrote to the masked-hash
/// partition (36) are still read, and are moved on load.
#[test]
fn groups_live_in_kafkas_offsets_partition_and_old_placements_move() {
    use fjord_broker::group::records::{OffsetValue, RecordKey};
    use fjord_broker::group::OFFSETS_TOPIC;
    use fjord_broker::log::batch::{encode_records, plain_record};
    use fjord_broker::log::segment::now_ms;
    let rt = runtime();
    let mut b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("orders", 1, &[]));
    let groups = b.broker().ctx.groups.clone();
    assert_eq!(groups.partition_for("my-group"), 12);
    rt.block_on(groups.ensure_offsets_topic()).unwrap();

    // Where the old mapping put it: an offset of 42 for my-group in partition 36.
    let old = b.broker().ctx.replicas.get(OFFSETS_TOPIC, 36).unwrap();
    let key = RecordKey::Offset {
        group: "my-group".into(),
        topic: "orders".into(),
        partition: 0,
    };
    let value = OffsetValue {
        offset: 42,
        leader_epoch: -1,
        metadata: "old".into(),
        commit_timestamp: now_ms(),
    };
    let mut records = vec![plain_record(
        0,
        now_ms(),
        Some(key.encode().unwrap()),
        Some(value.encode().unwrap()),
    )];
    let batch = encode_records(&mut records, kafka_protocol::records::Compression::None, -1, -1, -1).unwrap();
    old.append(&batch, -1).unwrap();
    rt.block_on(b.restart(FAST_GROUPS));

    let committed = |b: &TestBroker| {
        let c = group_consumer(b, "my-group", &[]);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("orders", 0);
        let got = c.committed_offsets(tpl, WAIT).unwrap();
        let offset = got.find_partition("orders", 0).unwrap().offset();
        drop(got);
        offset
    };
    assert_eq!(
        committed(&b),
        Offset::Offset(42),
        "offsets written under the old mapping still load"
    );
    let replicas = &b.broker().ctx.replicas;
    assert_eq!(
        replicas.get(OFFSETS_TOPIC, 12).unwrap().log_end_offset(),
        1,
        "moved to Kafka's partition"
    );
    assert_eq!(
        replicas.get(OFFSETS_TOPIC, 36).unwrap().log_end_offset(),
        2,
        "and tombstoned where it was"
    );
    // A second restart reads it from its own partition alone and moves nothing more.
    rt.block_on(b.restart(FAST_GROUPS));
    assert_eq!(committed(&b), Offset::Offset(42));
    let replicas = &b.broker().ctx.replicas;
    assert_eq!(replicas.get(OFFSETS_TOPIC, 12).unwrap().log_end_offset(), 1);
    assert_eq!(replicas.get(OFFSETS_TOPIC, 36).unwrap().log_end_offset(), 2);
    // New commits land in partition 12.
    let c = group_consumer(&b, "my-group", &[]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("orders", 0, Offset::Offset(50)).unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
    drop(c);
    assert_eq!(
        b.broker().ctx.replicas.get(OFFSETS_TOPIC, 12).unwrap().log_end_offset(),
        2
    );
}

/// Kafka's group metadata cleanup: a Stable group keeps the offsets of the
/// topics it consumes while those of topics it no longer subscribes to expire
/// (KIP-211); once empty with no offsets left it is deleted, so ListGroups
/// does not grow without bound, and it stays deleted across a restart.
#[test]
fn unsubscribed_offsets_expire_and_empty_groups_without_offsets_are_deleted() {
    let rt = runtime();
    let overrides = [FAST_GROUPS, EXPIRE_AT_ONCE].concat();
    let mut b = rt.block_on(TestBroker::start(&overrides));
    rt.block_on(b.create_topic("kept", 1, &[]));
    rt.block_on(b.create_topic("dropped", 1, &[]));
    produce(&rt, &b, "kept", 1);
    let groups = b.broker().ctx.groups.clone();
    let committed_topics = || -> BTreeSet<String> {
        groups
            .committed("stable-app")
            .unwrap_or_default()
            .into_iter()
            .map(|(t, _, _)| t)
            .collect()
    };
    {
        let c = group_consumer(&b, "stable-app", &[("auto.offset.reset", "earliest")]);
        c.subscribe(&["kept"]).unwrap();
        assert_eq!(poll_n(&c, 1), vec![0]);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("kept", 0, Offset::Offset(1)).unwrap();
        tpl.add_partition_offset("dropped", 0, Offset::Offset(5)).unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
        wait_for("the unsubscribed topic's offset expires", WAIT, || {
            let _ = c.poll(Duration::from_millis(20));
            committed_topics() == BTreeSet::from(["kept".to_string()])
        });
        // Retention 0 and checks every 100 ms: the subscribed topic's offset stays.
        for _ in 0..10 {
            let _ = c.poll(Duration::from_millis(50));
        }
        assert_eq!(committed_topics(), BTreeSet::from(["kept".to_string()]));
    }
    // The consumer left: the group is Empty, its offset expires, then the group goes.
    let listed = |b: &TestBroker| {
        b.broker()
            .ctx
            .groups
            .list()
            .unwrap()
            .into_iter()
            .any(|(id, _, _)| id == "stable-app")
    };
    wait_for("the empty group without offsets is deleted", WAIT, || !listed(&b));
    rt.block_on(b.restart(FAST_GROUPS));
    wait_for("the coordinator reloads", WAIT, || b.broker().ctx.groups.is_loaded());
    assert!(!listed(&b), "the group's tombstone keeps it deleted");
}

/// A group id longer than a `__consumer_offsets` record's i16 string (flexible
/// request versions carry such strings) is refused with INVALID_GROUP_ID,
/// never written truncated.
#[test]
fn group_ids_too_long_for_the_offsets_record_are_refused() {
    let rt = runtime();
    let b = rt.block_on(TestBroker::start(FAST_GROUPS));
    rt.block_on(b.create_topic("long", 1, &[]));
    let long = "g".repeat(40_000);
    rt.block_on(async {
        let mut raw = Raw::connect(&b.bootstrap).await;
        let response = raw
            .request(ApiKey::OffsetCommit, 8, manual_commit(&long, "long", 5))
            .await
            .unwrap();
        assert_eq!(commit_error(response), ResponseError::InvalidGroupId.code());
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(s(&long)))
            .with_session_timeout_ms(6000)
            .with_rebalance_timeout_ms(6000)
            .with_member_id(s(""))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(bytes::Bytes::new())]);
        match raw
            .request(ApiKey::JoinGroup, 9, RequestKind::JoinGroup(join))
            .await
            .unwrap()
        {
            ResponseKind::JoinGroup(r) => assert_eq!(r.error_code, ResponseError::InvalidGroupId.code()),
            other => panic!("{other:?}"),
        }
    });
    assert!(b.broker().ctx.groups.committed_snapshot().is_empty(), "nothing stored");
}
