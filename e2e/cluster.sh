#!/usr/bin/env bash
# `make cluster`: three brokers in combined mode (broker + controller) on
# 127.0.0.1, in the foreground. When one stops (kill -9 it to watch a
# failover) the others run on; `make cluster-node N=<id>` starts it again.
# Ctrl-C stops them all.
#   node N: Kafka 9N92 (9092, 9192, 9292), admin 9N93, metrics 9N44 (9644, 9744, 9844)
#   data under ./data/cluster/node-N
# `e2e/cluster.sh node N` runs node N alone, in the foreground.
set -euo pipefail
BIN=${FJORD_BROKER:-target/release/fjord-broker}
DATA=${DATA_DIR:-./data}/cluster
VOTERS="1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293"

# Runs node $1 in the foreground of this (sub)shell.
node() {
  local n=$1 i=$(($1 - 1))
  mkdir -p "$DATA/node-$n"
  exec "$BIN" --data-dir "$DATA/node-$n" \
    --override node.id="$n" \
    --override controller.quorum.voters=$VOTERS \
    --override listeners=PLAINTEXT://127.0.0.1:9${i}92 \
    --override admin.listener=127.0.0.1:9${i}93 \
    --override metrics.listener=127.0.0.1:$((9644 + 100 * i))
}

if [ "${1:-}" = node ]; then
  case "${2:-}" in
    1 | 2 | 3) node "$2" ;;
    *) echo "usage: $0 node 1|2|3" >&2; exit 2 ;;
  esac
fi

declare -A ids # pid -> node id
stop() {
  trap - INT TERM EXIT
  [ ${#ids[@]} -gt 0 ] && kill -TERM "${!ids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  exit 0
}
trap stop INT TERM EXIT
for n in 1 2 3; do
  node "$n" &
  ids[$!]=$n
done
echo "three brokers: bootstrap 127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292 (kcat -b 127.0.0.1:9092 -L); Ctrl-C stops them"
while [ ${#ids[@]} -gt 0 ]; do
  status=0
  gone=
  wait -n -p gone "${!ids[@]}" || status=$?
  # No broker of ours is left to wait for.
  [ -n "$gone" ] || break
  n=${ids[$gone]}
  unset "ids[$gone]"
  if [ ${#ids[@]} -gt 0 ]; then
    echo "broker $n (pid $gone) stopped (exit status $status); the others run on. Start it again with: make cluster-node N=$n"
  else
    echo "broker $n (pid $gone) stopped (exit status $status); no broker is left"
  fi
done
