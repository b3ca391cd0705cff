//! Micro-benchmark of one ISR change through the metadata path: the active
//! controller turns AlterPartition into records (`ops::run`), every node
//! applies them to its image and publishes it. Its cost must follow the
//! change, not the cluster's partition count: compare the sizes.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use fjord_broker::config::BrokerConfig;
use fjord_broker::controller::image::BrokerRegistration;
use fjord_broker::controller::{ops, records, ControllerOp, ImageChanges, IsrChange, MetadataImage};

/// Three brokers and `partitions` partitions of RF 3, in topics of `per_topic`.
fn cluster(partitions: usize, per_topic: usize) -> MetadataImage {
    let broker = BrokerConfig::default();
    let mut image = MetadataImage::default();
    for id in 1..=3 {
        image.brokers.insert(
            id,
            BrokerRegistration {
                id,
                incarnation_id: uuid::Uuid::new_v4(),
                host: "127.0.0.1".into(),
                port: 9092,
                admin: String::new(),
                rack: String::new(),
                fenced: false,
            },
        );
    }
    for t in 0..partitions.div_ceil(per_topic) {
        image
            .create_topic(&broker, &format!("t{t}"), per_topic as i32, 3, BTreeMap::new(), None)
            .unwrap();
    }
    image
}

/// The leader of t0-0 drops a follower from its ISR, or takes it back.
fn isr_change(image: &MetadataImage) -> ControllerOp {
    let topic = &image.topics["t0"];
    let state = topic.state(0).unwrap();
    let isr = if state.isr.len() == 3 {
        vec![state.leader]
    } else {
        topic.replicas(0).to_vec()
    };
    ControllerOp::AlterPartition {
        leader: state.leader,
        changes: vec![IsrChange {
            topic: "t0".into(),
            partition: 0,
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr,
        }],
    }
}

fn bench_isr_change(c: &mut Criterion) {
    let broker = BrokerConfig::default();
    let mut group = c.benchmark_group("isr_change");
    for (partitions, per_topic) in [(300, 100), (30_000, 100), (300, 300), (10_000, 10_000)] {
        let mut image = Arc::new(cluster(partitions, per_topic));
        group.bench_function(format!("{partitions}_partitions_{per_topic}_per_topic"), |b| {
            b.iter(|| {
                let (_, batch) = ops::run(&broker, &isr_change(&image), &image).unwrap();
                // Applied and published as the state machine does: the
                // published image stays shared, the new one copies what changed.
                let mut next = (*image).clone();
                let mut changes = ImageChanges::default();
                for r in &batch {
                    records::apply(&mut next, r, &mut changes);
                }
                image = Arc::new(next);
                changes
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_isr_change);
criterion_main!(benches);
