# Fjord: two commands set up a fresh machine — `make run` and `make test`.
CARGO ?= cargo
DATA_DIR ?= ./data

.PHONY: run cluster cluster-node build image test k8s-test k8s-up k8s-demo k8s-down crds bench lint fmt clean

## Build and start a single-node broker: Kafka on 127.0.0.1:9092, admin gRPC on
## 127.0.0.1:9093, metrics on 127.0.0.1:9644, data under ./data.
run:
	$(CARGO) run --release --bin fjord-broker -- --data-dir $(DATA_DIR)

## Three brokers in combined mode on 127.0.0.1 (node ids 1-3; Kafka 9092,
## 9192, 9292; admin 9093, 9193, 9293; metrics 9644, 9744, 9844), data under
## ./data/cluster/node-N. A broker that stops leaves the others running;
## Ctrl-C stops all three.
cluster:
	$(CARGO) build --release --bin fjord-broker
	DATA_DIR=$(DATA_DIR) e2e/cluster.sh

## Starts node N of `make cluster` again (after it stopped), in the foreground.
cluster-node:
	@test -n "$(N)" || { echo "usage: make cluster-node N=1|2|3" >&2; exit 2; }
	DATA_DIR=$(DATA_DIR) e2e/cluster.sh node $(N)

build:
	$(CARGO) build --release --bin fjord-broker

## The Fjord image (broker, operator, fjord-verifiable, kcat) as a docker archive, built from the
## release binaries without a registry: `ctr -n k8s.io images import` or `docker load -i`.
## PROFILE=debug builds it from target/debug instead (faster to compile).
IMAGE ?= localhost/fjord:dev
PROFILE ?= release
image:
	@case "$(PROFILE)" in debug|release) ;; *) echo "PROFILE must be debug or release" >&2; exit 2 ;; esac
	$(CARGO) build $(if $(filter release,$(PROFILE)),--release,) --bin fjord-broker --bin fjord-operator --bin fjord-verifiable
	python3 e2e/k8s/image.py build --profile $(PROFILE) --tag $(IMAGE) --out target/fjord-image.tar

## The whole suite: unit and property tests, client-compatibility tests with
## librdkafka, and the process-level fault tests in e2e/.
test:
	$(CARGO) build --bin fjord-broker
	$(CARGO) test --workspace
	bash helm/check.sh

## The real-node suite (needs root): a one-node Kubernetes from ../shared/kube-node,
## the image from debug binaries, `helm install`, the examples, clients as pods,
## faults and metrics; the node is torn down afterwards. CI runs it after `make test`.
k8s-test:
	$(CARGO) build --bin fjord-broker --bin fjord-operator --bin fjord-verifiable
	PROFILE=debug bash e2e/k8s/suite.sh

## A local Kubernetes quick start (needs root): the node, the image, the chart and
## the examples, then how to produce, consume and watch. `make k8s-down` stops it.
k8s-up k8s-demo: image
	PROFILE=$(PROFILE) bash e2e/k8s/demo.sh

k8s-down:
	bash ../shared/kube-node/down.sh

## Regenerate the CRD YAML in crds/ and helm/fjord/crds/ from the Rust types.
crds:
	$(CARGO) run -p fjord-crds --bin crdgen

## Criterion micro-benchmarks, then an end-to-end produce/consume load with librdkafka.
bench:
	$(CARGO) bench -p fjord-broker --bench log
	$(CARGO) bench -p fjord-broker --bench metadata
	$(CARGO) build --release --bin fjord-broker
	$(CARGO) run --release -p fjord-e2e --bin fjord-load

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
