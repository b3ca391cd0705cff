# Shared by the real-node suite (suite.sh) and the local quick start (demo.sh):
# the node, the image, the chart, client pods, and bounded polling.
# Sourced from the repository root.

KN_SCRIPTS="${KN_SCRIPTS:-$PWD/../shared/kube-node}"
export KN_DIR="${KN_DIR:-/tmp/kube-node}"
export KUBECONFIG="$KN_DIR/admin.kubeconfig"
IMAGE_REPO=localhost/fjord
IMAGE_TAG=dev
NS="${NS:-demo}"
BOOTSTRAP="my-cluster-bootstrap.$NS.svc.cluster.local:9092"
CHECK="python3 $PWD/e2e/k8s/check.py"
T0=$(date +%s)

say() { echo "[k8s +$(( $(date +%s) - T0 ))s] $*"; }
# The failure is kept in FAILURE so the exit handler repeats it after the
# diagnostics: a log read from its tail still says what failed.
FAILURE=""
fail() { FAILURE="[k8s +$(( $(date +%s) - T0 ))s] FAIL: $*"; echo "$FAILURE" >&2; exit 1; }
# Every kubectl call is bounded: a hung API call fails the step, not the run.
# A read is tried three times: one refused connection to the apiserver (seen
# on CI while the node recreated every pod sandbox) is not a failed check.
k() {
  local attempt rc
  for attempt in 1 2 3; do
    rc=0
    timeout 120 kubectl "$@" && return 0 || rc=$?
    [ "$1" = get ] && [ "$attempt" -lt 3 ] || return "$rc"
    echo "kubectl $1 failed (exit $rc), trying again" >&2
    sleep 2
  done
}
# The command that ended a run outside a checked step, for the failure line.
LAST_ERR=""

# poll WHAT SECONDS CMD...: until CMD succeeds, at most SECONDS; the last
# failure's output is shown when it gives up.
poll() {
  local what=$1 limit=$2; shift 2
  local deadline=$(( $(date +%s) + limit )) out
  while true; do
    if out=$("$@" 2>&1); then
      say "$what"
      return 0
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within ${limit}s; last: $out"
    sleep 1
  done
}

# The node, with the image built from target/$1 imported into its containerd.
start_node_with_image() {
  local profile=$1
  command -v kubectl >/dev/null || fail "kubectl is needed (set KUBECTL= for kube-node)"
  [ "$(id -u)" = 0 ] || fail "the real node needs root"
  python3 e2e/k8s/image.py build --profile "$profile" --tag "$IMAGE_REPO:$IMAGE_TAG" --out target/fjord-image.tar
  say "image $IMAGE_REPO:$IMAGE_TAG built ($(du -h target/fjord-image.tar | cut -f1)); starting the node"
  bash "$KN_SCRIPTS/up.sh" >"${KN_LOG:-/tmp/kube-node-up.log}" 2>&1 ||
    { tail -30 "${KN_LOG:-/tmp/kube-node-up.log}"; fail "kube-node up.sh failed"; }
  ctr --address "$KN_DIR/containerd/containerd.sock" -n k8s.io images import target/fjord-image.tar >/dev/null
  say "node Ready, image imported"
}

# The chart as a user installs it, with the local image.
install_chart() {
  local helm
  helm=$(bash helm/install-helm.sh)
  "$helm" install fjord helm/fjord --namespace fjord-system --create-namespace \
    --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" --wait --timeout 180s >/dev/null
  say "helm install: the operator is running"
}

# client_pod NAME SECONDS KCAT-ARGS...: kcat in a pod of the Fjord image; prints its output.
# A failed kcat fails the run, or returns 1 with ALLOW_FAIL=1.
client_pod() {
  local name=$1 limit=$2; shift 2
  k run "$name" -n "$NS" --image="$IMAGE_REPO:$IMAGE_TAG" --image-pull-policy=IfNotPresent \
    --restart=Never --command -- /usr/bin/kcat "$@" >/dev/null
  local deadline=$(( $(date +%s) + limit )) phase
  while true; do
    phase=$(k get pod "$name" -n "$NS" -o jsonpath='{.status.phase}')
    [ "$phase" = Succeeded ] && break
    if [ "$phase" = Failed ] && [ "${ALLOW_FAIL:-0}" = 1 ]; then
      k delete pod "$name" -n "$NS" --wait=false >/dev/null
      return 1
    fi
    if [ "$phase" = Failed ] || [ "$(date +%s)" -ge "$deadline" ]; then
      k logs "$name" -n "$NS" >&2 || true
      fail "client pod $name: $phase; its log ends: $(k logs "$name" -n "$NS" 2>&1 | tail -5)"
    fi
    sleep 1
  done
  k logs "$name" -n "$NS"
  k delete pod "$name" -n "$NS" --wait=false >/dev/null
}

# kcat gives up when every broker connection is down at once (ALL_BROKERS_DOWN);
# with librdkafka's sparse connections a roll reaches that moment when the broker
# going down held every leader, so the producers keep a connection to each broker.
# produce_job NAME TOPIC FROM TO [PER_100MS]: an idempotent acks=all producer Job
# sending the numbers FROM..TO, one record each; with PER_100MS it is fed that
# many records every 100 ms through a FIFO (a load that lasts while a fault
# happens), else all at once.
produce_job() {
  local feed="seq $3 $4 > /work/input" writer="" step=${5:-0}
  if [ "$step" -gt 0 ]; then
    feed="mkfifo /work/input"
    writer="
      - name: feed
        image: localhost/busybox:1.35
        command: [sh, -c, 'i=$(( $3 - 1 )); while [ \$i -lt $4 ]; do n=\$(( i + $step )); [ \$n -gt $4 ] && n=$4; seq \$(( i + 1 )) \$n; i=\$n; usleep 100000; done > /work/input']
        volumeMounts: [{name: work, mountPath: /work}]"
  fi
  k apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $1}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      volumes: [{name: work, emptyDir: {}}]
      initContainers:
      - name: input
        image: localhost/busybox:1.35
        command: [sh, -c, "$feed"]
        volumeMounts: [{name: work, mountPath: /work}]
      containers:
      - name: kcat
        image: $IMAGE_REPO:$IMAGE_TAG
        command: [/usr/bin/kcat, -P, -b, "$BOOTSTRAP", -t, "$2", -l,
                  -X, acks=all, -X, enable.idempotence=true, -X, message.timeout.ms=300000,
                  -X, enable.sparse.connections=false,
                  /work/input]
        volumeMounts: [{name: work, mountPath: /work}]$writer
YAML
}

# verifiable_start NAME TOPIC [RATE [PRELOAD]]: fjord-verifiable
# (e2e/src/bin/verifiable.rs) in a pod: an idempotent acks=all producer
# (PRELOAD records at once, then RATE records/s, default 1000) and a member of
# consumer group NAME committing as it goes, until verifiable_stop.
verifiable_start() {
  k run "$1" -n "$NS" --image="$IMAGE_REPO:$IMAGE_TAG" --image-pull-policy=IfNotPresent \
    --restart=Never --command -- /usr/local/bin/fjord-verifiable run \
    --bootstrap "$BOOTSTRAP" --topic "$2" --group "$1" --rate "${3:-1000}" --preload "${4:-0}" >/dev/null
  poll "$1 producing to $2 and consuming in group $1" 300 verifiable_producing "$1"
}
verifiable_producing() { k logs -n "$NS" "$1" | grep -q 'records/s'; }

# verifiable_stop NAME: stops it and waits for its verdict: every acknowledged
# record read back once at its offset and in order, the group's committed
# offsets never backwards (sampled every second) and at the end. Prints its
# summary; a violation fails the run. Sets ACKED to the records acknowledged.
verifiable_stop() {
  k exec -n "$NS" "$1" -- /usr/local/bin/fjord-verifiable stop
  local deadline=$(( $(date +%s) + 600 )) phase out
  while true; do
    phase=$(k get pod "$1" -n "$NS" -o jsonpath='{.status.phase}')
    case "$phase" in Succeeded | Failed) break ;; esac
    [ "$(date +%s)" -lt "$deadline" ] || { k logs -n "$NS" "$1" | tail -40 >&2; fail "$1 did not finish verifying"; }
    sleep 1
  done
  out=$(k logs -n "$NS" "$1" | grep '^\[verifiable')
  echo "$out" | sed 's/^/    /'
  [ "$phase" = Succeeded ] || fail "$1 found violations"
  ACKED=$(sed -n 's/.*acknowledged \([0-9]*\), failed.*/\1/p' <<<"$out")
  [ "${ACKED:-0}" -gt 0 ] || fail "$1 had no record acknowledged"
  k delete pod "$1" -n "$NS" --wait=false >/dev/null
}

job_running() {
  [ "$(k get pods -n "$NS" -l job-name="$1" -o jsonpath='{.items[0].status.phase}')" = Running ]
}

wait_job() {
  local deadline=$(( $(date +%s) + $2 ))
  while true; do
    [ "$(k get job "$1" -n "$NS" -o jsonpath='{.status.succeeded}')" = 1 ] && { say "job $1 done"; return 0; }
    if [ "$(k get job "$1" -n "$NS" -o jsonpath='{.status.failed}')" = 1 ] || [ "$(date +%s)" -ge "$deadline" ]; then
      k logs -n "$NS" "job/$1" --all-containers >&2 || true
      fail "job $1 did not succeed within $2 s"
    fi
    sleep 1
  done
}

# expect_records TOPIC N: read TOPIC from the beginning, one reader pod per
# partition, one after another (a pod's log is rotated past 10 MiB, CRI prefixes included, and
# `kubectl logs` shows only the current file); 1..N each once, in order per partition.
expect_records() {
  local topic=$1 n=$2 p
  for p in $(k get topic "$topic" -n "$NS" -o jsonpath='{.status.partitions[*].partition}'); do
    client_pod "read-$topic-$p-$RANDOM" 300 -C -b "$BOOTSTRAP" -t "$topic" -p "$p" -o beginning -e -q -f '%p %o %s\n'
  done | $CHECK records "$n" || fail "$topic does not hold 1..$n exactly once"
  say "$topic: every one of $n records read back once, in order per partition"
}

# apply_topic NAME PARTITIONS REPLICAS [CONFIG-JSON-FIELDS]: a Topic of my-cluster.
apply_topic() {
  k apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: fjord.dev/v1alpha1
kind: Topic
metadata: {name: $1}
spec: {clusterRef: my-cluster, partitions: $2, replicas: $3, config: {${4:-}}}
YAML
}

broker_uids() { k get pods -n "$NS" -l app.kubernetes.io/component=broker -o jsonpath='{.items[*].metadata.uid}'; }
cluster_ready() {
  [ "$(k get cluster my-cluster -n "$NS" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
# Every broker in the Cluster's status has rack $1 (its node's zone label) and RackAware is True.
racks_are() {
  local racks aware
  racks=$(k get cluster my-cluster -n "$NS" -o jsonpath='{.status.brokers[*].rack}')
  aware=$(k get cluster my-cluster -n "$NS" -o jsonpath='{.status.conditions[?(@.type=="RackAware")].status}')
  [ -n "$racks" ] && [ -z "$(tr ' ' '\n' <<<"$racks" | grep -vx "$1")" ] && [ "$aware" = True ] ||
    { echo "racks '$racks', RackAware '$aware'"; return 1; }
}
# The RollingRestart condition as "STATUS REASON MESSAGE" (empty: no roll due).
roll_condition() {
  k get cluster my-cluster -n "$NS" -o jsonpath='{range .status.conditions[?(@.type=="RollingRestart")]}{.status} {.reason} {.message}{end}'
}
# rolled: every broker pod in $brokers_before replaced, every broker Ready, the
# Cluster Ready with no roll due.
rolled() {
  local now
  now=$(k get pods -n "$NS" -l app.kubernetes.io/component=broker -o jsonpath='{range .items[*]}{.metadata.uid}={.status.conditions[?(@.type=="Ready")].status} {end}')
  for uid in $brokers_before; do case " $now" in *" $uid="*) return 1 ;; esac; done
  [ "$(grep -o '=True' <<<"$now" | wc -l)" = 3 ] && cluster_ready && [ -z "$(roll_condition)" ]
}
# pending_successor POD UID: POD was recreated (another uid) and waits to be scheduled.
pending_successor() {
  local got
  got=$(k get pod "$1" -n "$NS" -o jsonpath='{.metadata.uid} {.status.phase}')
  [ "${got% *}" != "$2" ] && [ "${got#* }" = Pending ]
}
# event_says OBJECT REASON TEXT: an event on OBJECT with REASON whose message has TEXT.
event_says() {
  k get events -n "$NS" --field-selector "involvedObject.name=$1,reason=$2" -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' |
    grep -qF "$3"
}

topic_in_sync() { k get topic "$1" -n "$NS" -o json | $CHECK topic-in-sync "$2" "$3"; }
topic_offsets_sum() { k get topic "$1" -n "$NS" -o json | $CHECK topic-offsets-sum "$2"; }
group_state() { k get consumergroup "$1" -n "$NS" -o json | $CHECK group-state "$2" "$3"; }
pod_replaced_and_ready() {
  local got
  got=$(k get pod "$1" -n "$NS" -o jsonpath='{.metadata.uid} {.status.conditions[?(@.type=="Ready")].status}')
  [ "${got% *}" != "$2" ] && [ "${got#* }" = True ]
}

# What failed: pods, descriptions of those not Ready, logs, events.
diagnose() {
  kubectl get pods -A -o wide || true
  for ns in fjord-system "$NS"; do
    for pod in $(kubectl get pods -n "$ns" -o name 2>/dev/null); do
      if [ "$(kubectl get -n "$ns" "$pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" != True ]; then
        kubectl describe -n "$ns" "$pod" | tail -40 || true
      fi
      echo "----- logs $ns/$pod"
      kubectl logs -n "$ns" "$pod" --all-containers --tail=60 || true
      kubectl logs -n "$ns" "$pod" --all-containers --previous --tail=30 2>/dev/null || true
    done
  done
  kubectl get clusters,topics,consumergroups -A -o yaml 2>/dev/null | grep -A8 "conditions:" | head -80 || true
  kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -40 || true
  # The node itself, last: a run's log is read from its tail.
  local svc
  for svc in etcd kube-apiserver containerd kubelet; do
    echo "----- $svc (pid $(cat "$KN_DIR/run/$svc.pid" 2>/dev/null), alive: $(kill -0 "$(cat "$KN_DIR/run/$svc.pid" 2>/dev/null)" 2>/dev/null && echo yes || echo no))"
    grep -iE "error|fail|kill|oom|sandbox" "$KN_DIR/log/$svc.log" 2>/dev/null | tail -8 | cut -c1-300 || true
  done
  echo "----- kernel"
  dmesg 2>/dev/null | grep -iE "oom|killed process|out of memory|segfault" | tail -8 || true
  free -m || true
}
