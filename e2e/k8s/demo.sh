#!/usr/bin/env bash
# A local Kubernetes quick start: a real one-node Kubernetes on this machine
# (../shared/kube-node), the Fjord image built from target/$PROFILE and
# imported, the chart installed with helm, the example Cluster, Topic and
# ConsumerGroup applied; then how to produce, consume and watch. Needs root.
# `make k8s-down` stops the node and restores the host settings it changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
source e2e/k8s/lib.sh

start_node_with_image "${PROFILE:-release}"
install_chart
k create namespace "$NS" >/dev/null 2>&1 || true
k apply -n "$NS" -f helm/fjord/examples/cluster.yaml -f helm/fjord/examples/topic.yaml >/dev/null
cluster_ready() {
  [ "$(k get cluster my-cluster -n "$NS" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
poll "Cluster my-cluster Ready" 300 cluster_ready
poll "Topic orders Ready" 120 topic_in_sync orders 6 3
k apply -n "$NS" -f helm/fjord/examples/consumergroup.yaml >/dev/null

cat <<EOF

Fjord runs on the local node: three brokers (pods my-cluster-0..2 in namespace $NS),
the operator in fjord-system, topic orders (6 partitions, RF 3).

  export KUBECONFIG=$KUBECONFIG
  kubectl get clusters,topics,consumergroups -n $NS

Produce and consume with kcat from a pod (the brokers advertise in-cluster names):

  kubectl run -n $NS -it --rm producer --image=$IMAGE_REPO:$IMAGE_TAG --restart=Never \\
    --command -- /usr/bin/kcat -P -b $BOOTSTRAP -t orders -X acks=all
  kubectl run -n $NS -it --rm consumer --image=$IMAGE_REPO:$IMAGE_TAG --restart=Never \\
    --command -- /usr/bin/kcat -b $BOOTSTRAP -G payments orders

Metrics: each broker pod serves /metrics on port 9644 and the operator on 8080
(pod IPs are reachable from this host: kubectl get pods -o wide).
  python3 e2e/k8s/metrics.py start /tmp/fjord-prometheus
starts a Prometheus (Debian's prometheus package) that scrapes them through the
chart's PodMonitor and ServiceMonitor and prints its address; point a Grafana at
it and import the dashboards in helm/fjord/dashboards.
  python3 e2e/k8s/metrics.py stop /tmp/fjord-prometheus

Watch a failover: kubectl delete pod -n $NS my-cluster-1 (the StatefulSet brings it
back on the same volume); kubectl get topic orders -n $NS -o yaml shows the ISRs.

Stop: make k8s-down
EOF
