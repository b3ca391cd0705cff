#!/usr/bin/env bash
# The real-node suite: Fjord installed as a user installs it, on a real
# single-node Kubernetes (../shared/kube-node): the image without a registry,
# `helm install`, the chart's example Cluster and Topic applied with kubectl,
# clients as pods, faults on the node. The node is always torn down (it
# changes host settings; down.sh restores them), and on a failure the pods'
# logs and `kubectl describe` of what failed are printed first.
#
#   bash e2e/k8s/suite.sh        # needs root; binaries from `cargo build` (PROFILE=debug)
#
# Environment: PROFILE (debug|release, the binaries in the image), KEEP_NODE=1
# (leave the node up afterwards), RECORDS (records per load, default 100000).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/e2e/k8s
source "$here/lib.sh"

PROFILE="${PROFILE:-debug}"
RECORDS="${RECORDS:-100000}"
NS=demo

PROM_DIR=$(mktemp -d /tmp/fjord-k8s-prometheus.XXXXXX)
on_exit() {
  local rc=$?
  python3 "$here/metrics.py" stop "$PROM_DIR" || true
  if [ "$rc" -ne 0 ] && [ -f "$KUBECONFIG" ]; then
    say "FAILED (exit $rc): what the node has"
    diagnose || true
    echo "${FAILURE:-FAILED (exit $rc) outside a checked step: $LAST_ERR}" >&2
  fi
  if [ "${KEEP_NODE:-0}" = 1 ]; then
    say "KEEP_NODE=1: the node stays up (KUBECONFIG=$KUBECONFIG; bash $KN_SCRIPTS/down.sh)"
  else
    bash "$KN_SCRIPTS/down.sh" >/dev/null 2>&1 || say "down.sh failed"
  fi
  exit "$rc"
}
trap on_exit EXIT
set -E
trap 'LAST_ERR="line $LINENO: $BASH_COMMAND"' ERR

start_node_with_image "$PROFILE"
install_chart
# The example Cluster is rack-aware (topology.kubernetes.io/zone): the node gets a zone.
k label nodes --all topology.kubernetes.io/zone=zone-a --overwrite >/dev/null
say "applying the example Cluster and Topic"
k create namespace "$NS" >/dev/null
k apply -n "$NS" -f helm/fjord/examples/cluster.yaml -f helm/fjord/examples/topic.yaml >/dev/null

# --------------------------------------------------------------- one cluster
poll "Cluster my-cluster Ready=True" 240 cluster_ready
cluster_id=$(k get cluster my-cluster -n $NS -o jsonpath='{.status.clusterId}')
[ -n "$cluster_id" ] || fail "the Cluster's status has no cluster id"
brokers=$(k get cluster my-cluster -n $NS -o jsonpath='{.status.brokers[*].id}')
[ "$brokers" = "0 1 2" ] || fail "the Cluster's status lists brokers '$brokers', not 0 1 2"
say "Cluster Ready: cluster id $cluster_id, brokers $brokers"
# broker.rack from the node's zone label, through the operator's rack map.
poll "every broker's rack is its node's zone (zone-a), RackAware=True" 60 racks_are zone-a
k get configmap my-cluster-racks -n "$NS" -o jsonpath='{.data}' | grep -q '"zone-a"' ||
  fail "the rack map my-cluster-racks does not name the node's zone"
# What clients see: three brokers in Metadata (only registered, unfenced ones are listed).
meta=$(client_pod metadata 60 -b "$BOOTSTRAP" -L)
[ "$(grep -c '^  broker [0-9]* at my-cluster-[0-9].my-cluster-brokers' <<<"$meta")" = 3 ] ||
  fail "Metadata does not list three brokers by their pod DNS names: $meta"
# One quorum: every broker's log says it joined the same cluster id.
for i in 0 1 2; do
  log=$(k logs -n "$NS" "my-cluster-$i")
  grep -q "registered with the controller and unfenced node_id=$i cluster_id=$cluster_id" <<<"$log" ||
    fail "my-cluster-$i's log never says it joined cluster $cluster_id unfenced"
done
say "one cluster from the pods: 3 brokers in Metadata, one cluster id"

# Prometheus scraping the pods through the chart's PodMonitor and ServiceMonitor.
PROM=$(python3 "$here/metrics.py" start "$PROM_DIR")
say "prometheus on $PROM, scrape config from the chart's monitors"

# ------------------------------------------------------------------- the Topic
poll "Topic orders Ready with 6 partitions, 3 in-sync replicas each" 120 topic_in_sync orders 6 3
leaders=$(k get topic orders -n $NS -o jsonpath='{range .status.partitions[*]}{.leader}{"\n"}{end}' | sort -u | xargs)
[ "$leaders" = "0 1 2" ] || fail "orders' leaders are '$leaders', not spread over brokers 0 1 2"
say "Topic orders: 6 partitions, RF 3, leaders on $leaders"

# ------------------------------------------------- clients as pods: every record back
produce_job produce-1 orders 1 "$RECORDS"
wait_job produce-1 300
expect_records orders "$RECORDS"
poll "the Topic's status shows every partition's offsets from its leader" 120 topic_offsets_sum orders "$RECORDS"
say "Topic status: log end offsets sum to $RECORDS on every partition's leader"

# ------------------------------------------------------------ the ConsumerGroup
# The chart's example: a timestamp reset (before every record) of group payments on orders.
k apply -n "$NS" -f helm/fjord/examples/consumergroup.yaml >/dev/null
poll "ConsumerGroup payments reset to its timestamp, lag $RECORDS" 120 group_state payments True "$RECORDS"
reset_group() { # requestId, the offsetReset body's other fields
  k patch consumergroup payments -n "$NS" --type merge \
    -p '{"spec":{"offsetReset":{"requestId":"'"$1"'","topics":["orders"],'"$2"'}}}' >/dev/null
}
reset_group suite-latest '"to":"latest"'
poll "ConsumerGroup payments reset to latest, lag 0" 120 group_state payments True 0
reset_group suite-earliest '"to":"earliest"'
poll "ConsumerGroup payments reset to earliest, lag $RECORDS" 120 group_state payments True "$RECORDS"
# By offset: 100 into each of the 6 partitions.
reset_group suite-offset '"to":"offset","offset":100'
poll "ConsumerGroup payments reset to offset 100, lag $(( RECORDS - 600 ))" 120 group_state payments True "$(( RECORDS - 600 ))"
# A consumer of the group starts where the reset put it: 100 into each partition.
# What it read starts at offset 100 in every partition: the first offset of
# each partition is 100 and none is below. (stderr is in the pod's log too, so
# only whole `record P O` lines count.)
read_by_group=$(client_pod group-reader 120 -q -b "$BOOTSTRAP" -G payments -X auto.offset.reset=error \
  -c "$(( RECORDS - 600 ))" -f 'record %p %o\n' orders)
starts=$(grep '^record [0-9]* [0-9]*$' <<<"$read_by_group" |
  awk '!($2 in first) { first[$2] = $3 } END { for (p in first) print p, first[p] }' | sort -n | xargs)
[ "$starts" = "0 100 1 100 2 100 3 100 4 100 5 100" ] ||
  fail "the group member's first offsets per partition are '$starts', not 100 everywhere"
# A reset that cannot happen is a condition, not Ready.
k patch consumergroup payments -n "$NS" --type merge \
  -p '{"spec":{"offsetReset":{"requestId":"suite-bad","to":"earliest","topics":["no-such-topic"]}}}' >/dev/null
poll "a failed reset makes ConsumerGroup payments Ready=False" 120 group_state payments False ""
reason=$(k get consumergroup payments -n $NS -o jsonpath='{.status.conditions[?(@.type=="OffsetReset")].reason}')
[ "$reason" = ResetFailed ] || fail "OffsetReset condition reason '$reason', not ResetFailed"
say "ConsumerGroup: lag and resets by timestamp, latest, earliest and offset; a failed reset is a condition"

# ------------------------------------------------------------------- faults
# A broker pod deleted under an acks=all load: nothing acknowledged is lost.
apply_topic load 6 3 '"min.insync.replicas": "2"'
poll "Topic load Ready" 120 topic_in_sync load 6 3
produce_job produce-2 load 1 "$(( RECORDS * 3 ))" 1000
poll "the load running" 60 job_running produce-2
sleep 2 # a moment of load before the fault; the wait below is what is bounded
victim=my-cluster-1
uid=$(k get pod -n "$NS" $victim -o jsonpath='{.metadata.uid}')
say "deleting broker pod $victim under load"
k delete pod -n "$NS" $victim --wait=false >/dev/null
poll "$victim recreated and Ready" 180 pod_replaced_and_ready $victim "$uid"
wait_job produce-2 600
expect_records load "$(( RECORDS * 3 ))"
poll "$victim back in every ISR" 120 topic_in_sync load 6 3
# Stopped cleanly (SIGTERM, controlled shutdown): it starts without log recovery.
log=$(k logs -n "$NS" $victim)
grep -q "broker started" <<<"$log" || fail "$victim's log has no start"
if grep -q "no clean shutdown marker" <<<"$log"; then
  fail "$victim recovered its logs after a clean stop"
fi
say "broker pod deleted under load: every acknowledged record read back, back in every ISR, no log recovery"
python3 "$here/metrics.py" isr-moved "$PROM" load

# The operator deleted mid-reconcile: what converged stays, reconciliation resumes.
sts_gen=$(k get sts my-cluster -n "$NS" -o jsonpath='{.metadata.generation}')
pods_before=$(k get pods -n "$NS" -l app.kubernetes.io/component=broker -o jsonpath='{.items[*].metadata.uid}')
operators=$(k get pods -n fjord-system -l app.kubernetes.io/name=fjord-operator -o jsonpath='{.items[*].metadata.uid}')
k delete pod -n fjord-system -l app.kubernetes.io/name=fjord-operator --wait=false >/dev/null
k patch topic orders -n "$NS" --type merge -p '{"spec":{"partitions":9}}' >/dev/null
poll "Topic orders grown to 9 partitions after the operator restart" 180 topic_in_sync orders 9 3
[ "$(k get sts my-cluster -n "$NS" -o jsonpath='{.metadata.generation}')" = "$sts_gen" ] ||
  fail "the StatefulSet changed across an operator restart"
[ "$(k get pods -n "$NS" -l app.kubernetes.io/component=broker -o jsonpath='{.items[*].metadata.uid}')" = "$pods_before" ] ||
  fail "broker pods were replaced across an operator restart"
replaced() { # a new operator pod is the leader's successor: none of the old ones is left Ready
  local now
  now=$(k get pods -n fjord-system -l app.kubernetes.io/name=fjord-operator -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.uid}{" "}{end}')
  for uid in $operators; do case " $now " in *" $uid "*) return 1 ;; esac; done
}
poll "the operator pods replaced" 120 replaced
say "operator pods deleted mid-reconcile: the Topic converged, brokers and StatefulSet untouched"

# ---------------------------------------------- a rolling restart under load
# A change of a static config rolls every broker through the gate
# (operator/src/roll.rs): one at a time, each back in every ISR before the
# next, the controller last, while fjord-verifiable produces (idempotent,
# acks=all) and consumes in a group that commits throughout.
apply_topic rolling 6 3 '"min.insync.replicas": "2"'
poll "Topic rolling Ready" 120 topic_in_sync rolling 6 3
verifiable_start roll-load rolling 1000 "$RECORDS"
brokers_before=$(broker_uids)
roll_start=$(date +%s)
k patch cluster my-cluster -n "$NS" --type merge -p '{"spec":{"config":{"replica.lag.time.max.ms":"20000"}}}' >/dev/null
# The operator killed mid-roll: the roll is recomputed from the pods'
# template hashes, so the new operator resumes where the old one was.
one_restarted() {
  local now
  now=$(broker_uids)
  for uid in $brokers_before; do case " $now " in *" $uid "*) ;; *) return 0 ;; esac; done
  return 1
}
poll "the roll under way: a first broker restarted" 300 one_restarted
k delete pod -n fjord-system -l app.kubernetes.io/name=fjord-operator --wait=false >/dev/null
say "  operator pods deleted mid-roll"
poll "every broker restarted with the new config" 600 rolled
roll_secs=$(( $(date +%s) - roll_start ))
verifiable_stop roll-load
poll "every replica back in sync" 120 topic_in_sync rolling 6 3
python3 "$here/metrics.py" never "$PROM" "max(fjord_controller_offline_partitions)" "$(( roll_secs + 10 ))"
say "rolling restart of 3 brokers took ${roll_secs}s ($RECORDS records preloaded, 1000 records/s during it): $ACKED acknowledged records read back once and in order, the group's committed offsets never went back, no partition offline"

# A dynamic broker config changes through IncrementalAlterConfigs, without a restart.
brokers_before=$(broker_uids)
k patch cluster my-cluster -n "$NS" --type merge -p '{"spec":{"config":{"log.retention.ms":"172800000"}}}' >/dev/null
poll "log.retention.ms applied to the running brokers" 120 event_says my-cluster DynamicConfig "log.retention.ms=172800000"
for _ in 1 2 3 4 5; do
  [ "$(broker_uids)" = "$brokers_before" ] || fail "a dynamic config change restarted brokers"
  [ -z "$(roll_condition)" ] || fail "a dynamic config change started a roll: $(roll_condition)"
  sleep 2
done
say "dynamic config log.retention.ms changed without a restart"

# ------------------------------------------- a roll blocked by a broker kept down
# Broker 2's pod cannot be scheduled (the node cordoned): every partition of
# rolling is at its min ISR (2 of 3), so restarting broker 0 or 1 would take it
# below; the roll waits, says so, and completes once broker 2 is back.
verifiable_start blocked-load rolling 1000
node=$(k get nodes -o jsonpath='{.items[0].metadata.name}')
k cordon "$node" >/dev/null
uid2=$(k get pod -n "$NS" my-cluster-2 -o jsonpath='{.metadata.uid}')
k delete pod -n "$NS" my-cluster-2 --wait=false >/dev/null
poll "my-cluster-2 replaced by a pod that cannot be scheduled" 120 pending_successor my-cluster-2 "$uid2"
brokers_before=$(k get pods -n "$NS" my-cluster-0 my-cluster-1 -o jsonpath='{.items[*].metadata.uid}')
block_start=$(date +%s)
k patch cluster my-cluster -n "$NS" --type merge -p '{"spec":{"config":{"replica.lag.time.max.ms":"25000"}}}' >/dev/null
roll_blocked() { case "$(roll_condition)" in "False BlockedByMinIsr "*rolling-*) return 0 ;; *) roll_condition; return 1 ;; esac; }
poll "the roll blocked: RollingRestart=False BlockedByMinIsr naming rolling's partitions" 120 roll_blocked
say "  $(roll_condition)"
for _ in $(seq 10); do
  [ "$(k get pods -n "$NS" my-cluster-0 my-cluster-1 -o jsonpath='{.items[*].metadata.uid}')" = "$brokers_before" ] ||
    fail "a broker restarted while the roll was blocked"
  roll_blocked >/dev/null || fail "the roll stopped being blocked while broker 2 was down: $(roll_condition)"
  sleep 2
done
k uncordon "$node" >/dev/null
poll "broker 2 back, the roll completed" 600 rolled
verifiable_stop blocked-load
python3 "$here/metrics.py" never "$PROM" "max(fjord_controller_offline_partitions)" "$(( $(date +%s) - block_start + 10 ))"
say "a roll blocked by a broker kept down held for $(( $(date +%s) - block_start ))s in all, then completed: $ACKED acknowledged records read back, offsets never back, no partition offline"

# --------------------------------------------------- replication factor 1 -> 3 -> 2
apply_topic grows 6 1
poll "Topic grows Ready with RF 1" 120 topic_in_sync grows 6 1
verifiable_start rf-load grows 1000 "$RECORDS"
rf_start=$(date +%s)
k patch topic grows -n "$NS" --type merge -p '{"spec":{"replicas":3}}' >/dev/null
poll "Topic grows at RF 3, every replica in sync" 300 topic_in_sync grows 6 3
k patch topic grows -n "$NS" --type merge -p '{"spec":{"replicas":2}}' >/dev/null
poll "Topic grows at RF 2, every replica in sync" 300 topic_in_sync grows 6 2
rf_secs=$(( $(date +%s) - rf_start ))
verifiable_stop rf-load
python3 "$here/metrics.py" never "$PROM" "max(fjord_controller_offline_partitions)" "$(( rf_secs + 10 ))"
say "replication factor 1 -> 3 -> 2 in ${rf_secs}s ($RECORDS records preloaded, 1000 records/s during it): $ACKED acknowledged records read back, offsets never back, no partition offline"

# ------------------------------------------------------------ scale 3 -> 5 -> 3
# A scale-down that would remove a quorum voter is refused, the StatefulSet kept.
k patch cluster my-cluster -n "$NS" --type merge -p '{"spec":{"replicas":2}}' >/dev/null
scaling_reason() {
  [ "$(k get cluster my-cluster -n "$NS" -o jsonpath='{.status.conditions[?(@.type=="Scaling")].reason}')" = "$1" ]
}
poll "scaling to 2 refused: it would remove a voter" 60 scaling_reason WouldRemoveVoters
[ "$(k get sts my-cluster -n "$NS" -o jsonpath='{.spec.replicas}')" = 3 ] || fail "the StatefulSet shrank below the voters"
apply_topic wide 10 3
poll "Topic wide Ready" 120 topic_in_sync wide 10 3
verifiable_start scale-load wide 1000 "$RECORDS"
scale_start=$(date +%s)
# The moves copy under a 4 MiB/s replication throttle; the Cluster's status
# shows their progress and an estimate while they run.
k patch cluster my-cluster -n "$NS" --type merge -p '{"spec":{"replicas":5,"replicationThrottle":4194304}}' >/dev/null
brokers_ready() {
  [ "$(k get cluster my-cluster -n "$NS" -o jsonpath='{.status.readyBrokers}')" = "$1" ] && cluster_ready
}
poll "5 brokers ready and registered" 240 brokers_ready 5
rebalanced() { k get topics -n "$NS" -o json | python3 -c '
import json, sys
topics = json.load(sys.stdin)["items"]
parts = [p for t in topics for p in (t.get("status") or {}).get("partitions", [])]
used = {r for p in parts for r in p.get("replicas", [])}
in_sync = all(sorted(p.get("isr", [])) == sorted(p.get("replicas", [])) for p in parts)
sys.exit(0 if {3, 4} <= used and in_sync else 1)'
}
reassignment_shown() {
  local r
  r=$(k get cluster my-cluster -n "$NS" -o jsonpath='{.status.reassignment}')
  [ -n "$r" ] && grep -q partitionsMoving <<<"$r" && grep -q estimatedSecondsRemaining <<<"$r" && echo "$r"
}
poll "the Cluster's status shows the rebalance's progress and an estimate" 240 reassignment_shown
say "  $(k get cluster my-cluster -n "$NS" -o jsonpath='{.status.reassignment}')"
poll "the rebalance moved replicas onto the new brokers 3 and 4, all in sync" 300 rebalanced
new_leaders() { k get topics -n "$NS" -o json | python3 -c '
import json, sys
parts = [p for t in json.load(sys.stdin)["items"] for p in (t.get("status") or {}).get("partitions", [])]
sys.exit(0 if {3, 4} <= {p.get("leader") for p in parts} else 1)'
}
poll "brokers 3 and 4 lead partitions (a preferred election after the moves)" 120 new_leaders
up_secs=$(( $(date +%s) - scale_start ))
# storage.deleteClaim: the removed brokers' claims go with them.
k patch cluster my-cluster -n "$NS" --type merge -p '{"spec":{"replicas":3,"storage":{"deleteClaim":true}}}' >/dev/null
shrunk() {
  [ "$(k get sts my-cluster -n "$NS" -o jsonpath='{.spec.replicas}')" = 3 ] &&
    [ -z "$(k get pod -n "$NS" my-cluster-3 my-cluster-4 --ignore-not-found -o name)" ] && brokers_ready 3
}
poll "drained brokers 3 and 4, then the StatefulSet shrank to 3" 300 shrunk
on_three() { k get topic wide -n "$NS" -o json | python3 -c '
import json, sys
parts = json.load(sys.stdin)["status"]["partitions"]
sys.exit(0 if all(set(p["replicas"]) <= {0, 1, 2} and sorted(p["isr"]) == sorted(p["replicas"]) for p in parts) else 1)'
}
poll "every replica of wide on brokers 0-2 and in sync" 120 on_three
claims_gone() { [ -z "$(k get pvc -n "$NS" data-my-cluster-3 data-my-cluster-4 --ignore-not-found -o name)" ]; }
poll "the removed brokers' claims deleted (storage.deleteClaim)" 120 claims_gone
[ -n "$(k get pvc -n "$NS" data-my-cluster-0 -o name)" ] || fail "a staying broker's claim was deleted"
scale_secs=$(( $(date +%s) - scale_start ))
verifiable_stop scale-load
python3 "$here/metrics.py" never "$PROM" "max(fjord_controller_offline_partitions)" "$(( scale_secs + 10 ))"
say "scaled 3 -> 5 in ${up_secs}s and back to 3 in $(( scale_secs - up_secs ))s (10-partition RF 3 topic, $RECORDS records preloaded, 1000 records/s during it): $ACKED acknowledged records read back, offsets never back, no partition offline"

# -------------------------------------------------------------------- metrics
python3 "$here/metrics.py" wait "$PROM"
say "every broker pod and the operator scraped"
# Produce errors feed their panels: clients may not write internal topics.
ALLOW_FAIL=1 client_pod bad-produce 60 -P -b "$BOOTSTRAP" -t __consumer_offsets -X message.timeout.ms=5000 \
  /etc/passwd >/dev/null 2>&1 || true
python3 "$here/metrics.py" panels "$PROM"

say "PASSED in $(( $(date +%s) - T0 ))s"
