//! A transactional id's state at its transaction coordinator (Kafka's
//! TransactionMetadata and its state machine), as pure transitions: the
//! coordinator shell persists each new state in `__transaction_state` before
//! it answers, writes the markers a Prepare state asks for, and then moves
//! to the Complete state.
//!
//! Empty -> Ongoing (AddPartitionsToTxn / AddOffsetsToTxn) -> PrepareCommit
//! or PrepareAbort (EndTxn, or the timeout / a new producer incarnation
//! aborting it) -> CompleteCommit or CompleteAbort (markers written) ->
//! Ongoing again with the next transaction. InitProducerId bumps the epoch
//! (fencing the previous incarnation) and aborts what it left open first.

use std::collections::BTreeSet;

/// Kafka's TransactionState.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// A transaction is ending: its markers are being written.
    pub fn is_preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// What the coordinator keeps per transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions of the transaction in progress ("topic", partition).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the transaction in progress began (its first partition added).
    pub started_ms: i64,
    pub updated_ms: i64,
}

/// Why a request is refused, as the Kafka error the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// A newer incarnation of the producer took over (PRODUCER_FENCED).
    #[error("producer epoch {got} fenced by epoch {current}")]
    ProducerFenced { got: i16, current: i16 },
    /// The request's producer id is not this transactional id's (INVALID_PRODUCER_ID_MAPPING).
    #[error("producer id {got} is not the transactional id's {current}")]
    InvalidProducerIdMapping { got: i64, current: i64 },
    /// The previous transaction is still ending: retry (CONCURRENT_TRANSACTIONS).
    #[error("a transaction of this transactional id is still completing")]
    ConcurrentTransactions,
    /// EndTxn with nothing to end, or the other outcome of one ending (INVALID_TXN_STATE).
    #[error("no transaction in a state that allows this")]
    InvalidTxnState,
    /// transaction.timeout.ms above transaction.max.timeout.ms (INVALID_TRANSACTION_TIMEOUT).
    #[error("transaction timeout {0} ms is not within 1..=transaction.max.timeout.ms")]
    InvalidTransactionTimeout(i32),
}

/// What InitProducerId leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// The producer may go on with this id and epoch (the new state).
    Ready(TxnMetadata),
    /// An open transaction of the previous incarnation must be aborted
    /// first (the new state is PrepareAbort with the bumped epoch); the
    /// client retries and gets `Ready` once the abort completed.
    AbortFirst(TxnMetadata),
}

/// The epoch after `epoch`; None when it is exhausted and a new producer
/// id is needed (Kafka bumps to a new id at Short.MaxValue - 1).
fn bumped(epoch: i16) -> Option<i16> {
    (epoch < i16::MAX - 1).then_some(epoch + 1)
}

impl TxnMetadata {
    /// InitProducerId. `current` is the stored state, if any; `new_producer_id`
    /// is a freshly allocated id, used for a new transactional id or an
    /// exhausted epoch. `expected` is KIP-360's (producer id, epoch) a
    /// producer that lost its state sends to resume: it must match the
    /// stored one (or the one just before a bump already made).
    pub fn init(
        current: Option<&TxnMetadata>,
        timeout_ms: i32,
        max_timeout_ms: i32,
        new_producer_id: i64,
        expected: Option<(i64, i16)>,
        now_ms: i64,
    ) -> Result<InitOutcome, TxnError> {
        if timeout_ms <= 0 || timeout_ms > max_timeout_ms {
            return Err(TxnError::InvalidTransactionTimeout(timeout_ms));
        }
        let Some(m) = current else {
            return Ok(InitOutcome::Ready(TxnMetadata {
                producer_id: new_producer_id,
                producer_epoch: 0,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                started_ms: -1,
                updated_ms: now_ms,
            }));
        };
        if let Some((pid, epoch)) = expected {
            if pid != m.producer_id {
                return Err(TxnError::InvalidProducerIdMapping {
                    got: pid,
                    current: m.producer_id,
                });
            }
            if epoch != m.producer_epoch {
                return Err(TxnError::ProducerFenced {
                    got: epoch,
                    current: m.producer_epoch,
                });
            }
        }
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => Err(TxnError::ConcurrentTransactions),
            TxnState::Ongoing => {
                // Its transaction is aborted under the bumped epoch, so the
                // previous incarnation's late writes are refused.
                let mut next = m.with_bumped_epoch(new_producer_id, now_ms);
                next.state = TxnState::PrepareAbort;
                Ok(InitOutcome::AbortFirst(next))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let mut next = m.with_bumped_epoch(new_producer_id, now_ms);
                next.timeout_ms = timeout_ms;
                next.state = TxnState::Empty;
                next.partitions.clear();
                next.started_ms = -1;
                Ok(InitOutcome::Ready(next))
            }
        }
    }

    /// This state under the next epoch (a new producer id once the epochs
    /// run out): the previous incarnation of the producer is fenced.
    fn with_bumped_epoch(&self, new_producer_id: i64, now_ms: i64) -> TxnMetadata {
        let mut next = self.clone();
        match bumped(self.producer_epoch) {
            Some(e) => next.producer_epoch = e,
            None => {
                next.producer_id = new_producer_id;
                next.producer_epoch = 0;
            }
        }
        next.updated_ms = now_ms;
        next
    }

    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
        if producer_id != self.producer_id {
            return Err(TxnError::InvalidProducerIdMapping {
                got: producer_id,
                current: self.producer_id,
            });
        }
        if epoch != self.producer_epoch {
            return Err(TxnError::ProducerFenced {
                got: epoch,
                current: self.producer_epoch,
            });
        }
        Ok(())
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's
    /// `__consumer_offsets` partition): the transaction is Ongoing with them.
    pub fn add_partitions(
        &self,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        now_ms: i64,
    ) -> Result<TxnMetadata, TxnError> {
        self.check_producer(producer_id, epoch)?;
        if self.state.is_preparing() {
            return Err(TxnError::ConcurrentTransactions);
        }
        let mut next = self.clone();
        if next.state != TxnState::Ongoing {
            next.partitions.clear();
            next.started_ms = now_ms;
        }
        next.state = TxnState::Ongoing;
        next.partitions.extend(partitions.iter().cloned());
        next.updated_ms = now_ms;
        Ok(next)
    }

    /// KIP-890 verification: whether `partition` is in the producer's
    /// ongoing transaction (its leader asks before it takes the first
    /// transactional batch of the transaction there).
    pub fn verify(&self, producer_id: i64, epoch: i16, partition: &(String, i32)) -> Result<(), TxnError> {
        self.check_producer(producer_id, epoch)?;
        if self.state == TxnState::Ongoing && self.partitions.contains(partition) {
            Ok(())
        } else {
            Err(TxnError::InvalidTxnState)
        }
    }

    /// EndTxn: an Ongoing transaction moves to PrepareCommit or
    /// PrepareAbort (the markers go out next). A retried EndTxn of the
    /// outcome already reached is answered again, as Kafka does.
    pub fn end(&self, producer_id: i64, epoch: i16, commit: bool, now_ms: i64) -> Result<EndOutcome, TxnError> {
        self.check_producer(producer_id, epoch)?;
        match (self.state, commit) {
            (TxnState::Ongoing, _) => {
                let mut next = self.clone();
                next.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                next.updated_ms = now_ms;
                Ok(EndOutcome::Prepare(next))
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(EndOutcome::AlreadyDone),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => Err(TxnError::ConcurrentTransactions),
            // Nothing was added (an empty transaction) or the other outcome: Kafka's INVALID_TXN_STATE,
            // except an empty transaction, which the client ends locally and never sends.
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// The markers are written: the transaction is complete.
    pub fn complete(&self, now_ms: i64) -> Option<TxnMetadata> {
        let state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            _ => return None,
        };
        let mut next = self.clone();
        next.state = state;
        next.partitions.clear();
        next.updated_ms = now_ms;
        Some(next)
    }

    /// An Ongoing transaction past its timeout is aborted by the
    /// coordinator, under a bumped epoch so the producer is fenced (Kafka's
    /// abortTimedOutTransactions): the new state, or None if not expired.
    pub fn expire(&self, new_producer_id: i64, now_ms: i64) -> Option<TxnMetadata> {
        if self.state != TxnState::Ongoing || now_ms < self.started_ms.saturating_add(i64::from(self.timeout_ms)) {
            return None;
        }
        let mut next = self.with_bumped_epoch(new_producer_id, now_ms);
        next.state = TxnState::PrepareAbort;
        Some(next)
    }

    /// A transactional id idle for `transactional.id.expiration.ms` with no
    /// transaction open or ending is forgotten (Kafka's
    /// removeExpiredTransactionalIds): its next InitProducerId starts afresh.
    pub fn id_expired(&self, expiration_ms: i64, now_ms: i64) -> bool {
        matches!(
            self.state,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        ) && now_ms >= self.updated_ms.saturating_add(expiration_ms)
    }
}

/// What EndTxn leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// Write the markers for this state, then `complete`.
    Prepare(TxnMetadata),
    /// A retry of an EndTxn already completed: answer success.
    AlreadyDone,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ready(outcome: Result<InitOutcome, TxnError>) -> TxnMetadata {
        match outcome {
            Ok(InitOutcome::Ready(m)) => m,
            other => panic!("not ready: {other:?}"),
        }
    }

    fn tp(p: i32) -> (String, i32) {
        ("t".to_string(), p)
    }

    #[test]
    fn only_an_idle_id_without_an_open_transaction_expires() {
        let m = ready(TxnMetadata::init(None, 60_000, 900_000, 7, None, 100));
        assert!(!m.id_expired(1_000, 1_099), "idle for less than the expiration");
        assert!(m.id_expired(1_000, 1_100), "Empty and idle long enough");
        let open = m.add_partitions(7, 0, &[tp(0)], 200).unwrap();
        assert!(
            !open.id_expired(1_000, 10_000_000),
            "an Ongoing transaction is never forgotten"
        );
        let EndOutcome::Prepare(preparing) = open.end(7, 0, true, 300).unwrap() else {
            panic!("not prepared")
        };
        assert!(
            !preparing.id_expired(1_000, 10_000_000),
            "nor one whose markers are being written"
        );
        let done = preparing.complete(400).unwrap();
        assert!(!done.id_expired(1_000, 1_399));
        assert!(
            done.id_expired(1_000, 1_400),
            "a completed transaction's id expires from its last update"
        );
    }

    #[test]
    fn a_transaction_commits_and_the_next_begins() {
        let m = ready(TxnMetadata::init(None, 60_000, 900_000, 7, None, 0));
        assert_eq!((m.producer_id, m.producer_epoch, m.state), (7, 0, TxnState::Empty));
        let m = m.add_partitions(7, 0, &[tp(0), tp(1)], 10).unwrap();
        assert_eq!((m.state, m.partitions.len(), m.started_ms), (TxnState::Ongoing, 2, 10));
        let m = m.add_partitions(7, 0, &[tp(1), tp(2)], 20).unwrap();
        assert_eq!(
            (m.partitions.len(), m.started_ms),
            (3, 10),
            "the same transaction grows"
        );
        let EndOutcome::Prepare(m) = m.end(7, 0, true, 30).unwrap() else {
            panic!("prepare")
        };
        assert_eq!(m.state, TxnState::PrepareCommit);
        assert_eq!(
            m.add_partitions(7, 0, &[tp(0)], 31),
            Err(TxnError::ConcurrentTransactions)
        );
        let m = m.complete(40).unwrap();
        assert_eq!((m.state, m.partitions.len()), (TxnState::CompleteCommit, 0));
        assert_eq!(m.end(7, 0, true, 41), Ok(EndOutcome::AlreadyDone), "a retried EndTxn");
        assert_eq!(m.end(7, 0, false, 41), Err(TxnError::InvalidTxnState));
        let m = m.add_partitions(7, 0, &[tp(3)], 50).unwrap();
        assert_eq!((m.state, m.started_ms, m.partitions.len()), (TxnState::Ongoing, 50, 1));
    }

    #[test]
    fn verification_answers_only_for_partitions_of_the_ongoing_transaction() {
        let m = ready(TxnMetadata::init(None, 60_000, 900_000, 7, None, 0));
        assert_eq!(
            m.verify(7, 0, &tp(0)),
            Err(TxnError::InvalidTxnState),
            "no transaction yet"
        );
        let m = m.add_partitions(7, 0, &[tp(0)], 10).unwrap();
        assert_eq!(m.verify(7, 0, &tp(0)), Ok(()));
        assert_eq!(m.verify(7, 0, &tp(1)), Err(TxnError::InvalidTxnState), "not added");
        assert_eq!(
            m.verify(7, 1, &tp(0)),
            Err(TxnError::ProducerFenced { got: 1, current: 0 })
        );
        assert!(matches!(
            m.verify(8, 0, &tp(0)),
            Err(TxnError::InvalidProducerIdMapping { .. })
        ));
        // A late batch of a transaction that ended (aborted by its timeout, say).
        let EndOutcome::Prepare(m) = m.end(7, 0, false, 20).unwrap() else {
            panic!("prepare")
        };
        assert_eq!(m.verify(7, 0, &tp(0)), Err(TxnError::InvalidTxnState));
        let m = m.complete(30).unwrap();
        assert_eq!(m.verify(7, 0, &tp(0)), Err(TxnError::InvalidTxnState));
    }

    #[test]
    fn a_new_incarnation_fences_the_old_and_aborts_its_transaction() {
        let m = ready(TxnMetadata::init(None, 60_000, 900_000, 7, None, 0));
        let m = m.add_partitions(7, 0, &[tp(0)], 10).unwrap();
        let Ok(InitOutcome::AbortFirst(m)) = TxnMetadata::init(Some(&m), 60_000, 900_000, 8, None, 20) else {
            panic!("the open transaction is aborted first")
        };
        assert_eq!((m.producer_epoch, m.state), (1, TxnState::PrepareAbort));
        // The zombie (epoch 0) is fenced.
        assert_eq!(
            m.end(7, 0, true, 21),
            Err(TxnError::ProducerFenced { got: 0, current: 1 })
        );
        // While the abort's markers go out, a retry is told to wait.
        assert_eq!(
            TxnMetadata::init(Some(&m), 60_000, 900_000, 8, None, 22),
            Err(TxnError::ConcurrentTransactions)
        );
        let m = m.complete(30).unwrap();
        let m = ready(TxnMetadata::init(Some(&m), 60_000, 900_000, 8, None, 31));
        assert_eq!((m.producer_id, m.producer_epoch, m.state), (7, 2, TxnState::Empty));
    }

    #[test]
    fn timeouts_and_exhausted_epochs() {
        assert_eq!(
            TxnMetadata::init(None, 900_001, 900_000, 7, None, 0),
            Err(TxnError::InvalidTransactionTimeout(900_001))
        );
        let m = ready(TxnMetadata::init(None, 1_000, 900_000, 7, None, 0));
        let m = m.add_partitions(7, 0, &[tp(0)], 100).unwrap();
        assert_eq!(m.expire(9, 1_099), None);
        let aborted = m.expire(9, 1_100).unwrap();
        assert_eq!((aborted.producer_epoch, aborted.state), (1, TxnState::PrepareAbort));
        // At the last epoch, a new producer id.
        let mut last = m.clone();
        last.state = TxnState::CompleteCommit;
        last.partitions.clear();
        last.producer_epoch = i16::MAX - 1;
        let m = ready(TxnMetadata::init(Some(&last), 1_000, 900_000, 9, None, 0));
        assert_eq!((m.producer_id, m.producer_epoch), (9, 0));
        // KIP-360: a producer resuming with a stale epoch is fenced.
        assert_eq!(
            TxnMetadata::init(Some(&m), 1_000, 900_000, 10, Some((9, 3)), 0),
            Err(TxnError::ProducerFenced { got: 3, current: 0 })
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Init,
        Add(i32),
        End(bool),
        Complete,
        Expire(i64),
        ZombieEnd,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Init),
            (0..4i32).prop_map(Op::Add),
            any::<bool>().prop_map(Op::End),
            Just(Op::Complete),
            (0..5_000i64).prop_map(Op::Expire),
            Just(Op::ZombieEnd),
        ]
    }

    proptest! {
        /// Over any sequence of requests: the epoch never goes back for a
        /// producer id, a request with an older epoch never changes the
        /// state, partitions exist exactly while a transaction is open or
        /// ending, and a Complete state is only reached from its Prepare.
        #[test]
        fn the_state_machine_never_lets_a_zombie_in(ops in proptest::collection::vec(op(), 1..40)) {
            let mut m = ready(TxnMetadata::init(None, 1_000, 900_000, 1, None, 0));
            let mut next_id = 2;
            let mut now = 0;
            for op in ops {
                now += 10;
                let before = m.clone();
                let result: Option<TxnMetadata> = match op {
                    Op::Init => match TxnMetadata::init(Some(&m), 1_000, 900_000, next_id, None, now) {
                        Ok(InitOutcome::Ready(n)) | Ok(InitOutcome::AbortFirst(n)) => Some(n),
                        Err(_) => None,
                    },
                    Op::Add(p) => m.add_partitions(m.producer_id, m.producer_epoch, &[tp(p)], now).ok(),
                    Op::End(commit) => match m.end(m.producer_id, m.producer_epoch, commit, now) {
                        Ok(EndOutcome::Prepare(n)) => Some(n),
                        _ => None,
                    },
                    Op::Complete => m.complete(now),
                    Op::Expire(t) => m.expire(next_id, now + t),
                    Op::ZombieEnd => {
                        let zombie = m.producer_epoch - 1;
                        prop_assert!(m.end(m.producer_id, zombie, true, now).is_err());
                        prop_assert!(m.add_partitions(m.producer_id, zombie, &[tp(0)], now).is_err());
                        None
                    }
                };
                if let Some(n) = result {
                    if n.producer_id == before.producer_id {
                        prop_assert!(n.producer_epoch >= before.producer_epoch);
                    } else {
                        next_id += 1;
                    }
                    match n.state {
                        TxnState::CompleteCommit => prop_assert_eq!(before.state, TxnState::PrepareCommit),
                        TxnState::CompleteAbort => prop_assert_eq!(before.state, TxnState::PrepareAbort),
                        _ => {}
                    }
                    let open = matches!(n.state, TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort);
                    prop_assert!(open || n.partitions.is_empty(), "{:?}", n);
                    m = n;
                }
            }
        }
    }
}
