#!/usr/bin/env bash
# `make cluster`: three brokers in combined mode (broker + controller) on
# 127.0.0.1, in the foreground; Ctrl-C stops all three.
#   node N: Kafka 9N92 (9092, 9192, 9292), admin 9N93, metrics 9N44 (9644, 9744, 9844)
#   data under ./data/cluster/node-N
set -euo pipefail
BIN=${FJORD_BROKER:-target/release/fjord-broker}
DATA=${DATA_DIR:-./data}/cluster
VOTERS="1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293"
pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait; }
trap stop INT TERM EXIT
for n in 1 2 3; do
  i=$((n - 1))
  mkdir -p "$DATA/node-$n"
  "$BIN" --data-dir "$DATA/node-$n" \
    --override node.id=$n \
    --override controller.quorum.voters=$VOTERS \
    --override listeners=PLAINTEXT://127.0.0.1:9${i}92 \
    --override admin.listener=127.0.0.1:9${i}93 \
    --override metrics.listener=127.0.0.1:$((9644 + 100 * i)) &
  pids+=($!)
done
echo "three brokers: bootstrap 127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292 (kcat -b 127.0.0.1:9092 -L); Ctrl-C stops them"
wait -n || true
