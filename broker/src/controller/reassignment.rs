//! Partition reassignment (KIP-455), as pure changes to the image.
//!
//! A reassignment of a partition to `target` first makes its replicas the
//! union `target ++ (original - target)`: the adding replicas start fetching
//! from the leader while every original replica keeps serving. Once every
//! target replica is in the ISR the controller completes it: the replicas
//! become `target`, the removing ones leave the ISR, and when the leader is
//! among them leadership moves to the first in-sync target replica. Until
//! then it can be cancelled, which restores the original replicas.
//!
//! A drain is a reassignment of every partition off one broker.
//!
//! Pure functions over one partition's replicas and state; the image
//! (`image.rs`) applies them to its topics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::leadership::{PartitionState, NO_LEADER};
use crate::error::{Error, Result};

/// One partition's reassignment in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The replicas before it started, in their order.
    pub original: Vec<i32>,
    /// The replicas it ends with; the first is the preferred leader.
    pub target: Vec<i32>,
}

impl Reassignment {
    /// Target replicas that were not replicas before: they copy the log.
    pub fn adding(&self) -> Vec<i32> {
        self.target
            .iter()
            .copied()
            .filter(|r| !self.original.contains(r))
            .collect()
    }

    /// Original replicas the target drops: they go once it completes.
    pub fn removing(&self) -> Vec<i32> {
        self.original
            .iter()
            .copied()
            .filter(|r| !self.target.contains(r))
            .collect()
    }

    /// The replicas while it runs: the target, then the removing ones.
    pub fn replicas(&self) -> Vec<i32> {
        let mut all = self.target.clone();
        all.extend(self.removing());
        all
    }
}

/// A partition's state once its replicas become `replicas`: the ISR keeps
/// only them, and a leader outside them hands over to the first live one in
/// sync (a new leader epoch). The partition epoch moves: the replica set did.
fn narrowed(state: &PartitionState, replicas: &[i32], live: impl Fn(i32) -> bool) -> PartitionState {
    // Never empty: a change that would leave no in-sync replica is refused
    // first (`keeps_an_in_sync_replica`), and completion needs the target in sync.
    let isr: Vec<i32> = state.isr.iter().copied().filter(|r| replicas.contains(r)).collect();
    let leader = if replicas.contains(&state.leader) {
        state.leader
    } else {
        replicas
            .iter()
            .copied()
            .find(|r| isr.contains(r) && live(*r))
            .unwrap_or(NO_LEADER)
    };
    state.changed(leader, isr)
}

/// One partition as a reassignment sees it.
pub struct PartitionReplicas<'a> {
    pub replicas: &'a mut Vec<i32>,
    pub state: &'a mut PartitionState,
    /// The reassignment in progress, if any.
    pub moving: &'a mut Option<Reassignment>,
}

impl PartitionReplicas<'_> {
    /// Starts (or replaces) a reassignment to `target`; `None` cancels the
    /// one in progress, restoring the original replicas. `registered` are
    /// the brokers a target may name; `live` those that may lead.
    pub fn alter(
        &mut self,
        target: Option<&[i32]>,
        allow_rf_change: bool,
        registered: &[i32],
        live: impl Fn(i32) -> bool + Copy,
    ) -> Result<()> {
        let Some(target) = target else {
            let Some(r) = self.moving.take() else {
                return Err(Error::NoReassignmentInProgress(
                    "the partition is not being reassigned".into(),
                ));
            };
            if let Err(e) = self.keeps_an_in_sync_replica(&r.original) {
                *self.moving = Some(r);
                return Err(e);
            }
            *self.state = narrowed(self.state, &r.original, live);
            *self.replicas = r.original;
            return Ok(());
        };
        validate_target(target, registered)?;
        let original = self
            .moving
            .as_ref()
            .map_or_else(|| self.replicas.clone(), |r| r.original.clone());
        if !allow_rf_change && target.len() != original.len() {
            return Err(Error::InvalidReplicationFactor(format!(
                "the target has {} replicas, the partition {}",
                target.len(),
                original.len()
            )));
        }
        let r = Reassignment {
            original,
            target: target.to_vec(),
        };
        let replicas = r.replicas();
        self.keeps_an_in_sync_replica(&replicas)?;
        if replicas != *self.replicas {
            // Replicas that are neither target nor original (a replaced
            // reassignment's adding ones) leave the ISR too.
            *self.state = narrowed(self.state, &replicas, live);
            *self.replicas = replicas;
        }
        *self.moving = (r.target != r.original).then_some(r);
        self.maybe_complete(live);
        Ok(())
    }

    /// A change that would leave no in-sync replica among the replicas
    /// would need an unclean election to lead again: refused.
    fn keeps_an_in_sync_replica(&self, replicas: &[i32]) -> Result<()> {
        if self.state.isr.iter().any(|r| replicas.contains(r)) {
            Ok(())
        } else {
            Err(Error::InvalidReplicaAssignment(format!(
                "replicas {replicas:?} would hold none of the in-sync replicas {:?}",
                self.state.isr
            )))
        }
    }

    /// Completes the reassignment once every target replica is in sync.
    /// Answers whether it did.
    pub fn maybe_complete(&mut self, live: impl Fn(i32) -> bool) -> bool {
        let isr = &self.state.isr;
        let Some(r) = self.moving.take_if(|r| r.target.iter().all(|x| isr.contains(x))) else {
            return false;
        };
        *self.state = narrowed(self.state, &r.target, live);
        *self.replicas = r.target;
        true
    }
}

/// A broker as a drain sees it.
pub struct DrainCandidate {
    pub id: i32,
    pub rack: String,
    /// Replicas it holds now.
    pub load: usize,
}

/// Targets that move every replica off `broker`: each replica goes to a
/// live broker the partition does not use, from the same rack when one can
/// take it, the one holding fewest replicas first (counting the moves
/// planned so far). The drained broker's position is kept, so preferred
/// leadership moves with it. `partitions` are (topic, partition, replicas,
/// target of a reassignment in progress).
pub fn drain_plan<'a>(
    broker: i32,
    broker_rack: &str,
    candidates: &[DrainCandidate],
    partitions: impl Iterator<Item = (&'a str, i32, &'a [i32], Option<&'a [i32]>)>,
) -> Result<Vec<(String, i32, Vec<i32>)>> {
    let mut load: BTreeMap<i32, (usize, bool)> = candidates
        .iter()
        .filter(|c| c.id != broker)
        .map(|c| (c.id, (c.load, c.rack == broker_rack)))
        .collect();
    let mut plan = Vec::new();
    for (topic, p, replicas, moving_to) in partitions {
        let current = moving_to.unwrap_or(replicas);
        let Some(pos) = current.iter().position(|r| *r == broker) else {
            continue;
        };
        let chosen = load
            .iter()
            .filter(|(id, _)| !replicas.contains(id))
            .min_by_key(|(id, (n, same_rack))| (!*same_rack, *n, **id))
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                Error::InvalidReplicaAssignment(format!("no live broker can take {topic}-{p} from broker {broker}"))
            })?;
        if let Some(entry) = load.get_mut(&chosen) {
            entry.0 += 1;
        }
        let mut target = current.to_vec();
        target[pos] = chosen;
        plan.push((topic.to_string(), p, target));
    }
    Ok(plan)
}

/// A target names registered brokers, each once, at least one.
fn validate_target(target: &[i32], registered: &[i32]) -> Result<()> {
    if target.is_empty() {
        return Err(Error::InvalidReplicaAssignment(
            "a target needs at least one replica".into(),
        ));
    }
    for (i, id) in target.iter().enumerate() {
        if target[..i].contains(id) {
            return Err(Error::InvalidReplicaAssignment(format!("broker {id} named twice")));
        }
        if !registered.contains(id) {
            return Err(Error::InvalidReplicaAssignment(format!(
                "broker {id} is not registered"
            )));
        }
    }
    Ok(())
}
