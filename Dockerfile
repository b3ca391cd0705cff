# Fjord image: the broker (entrypoint), the operator (/usr/local/bin/fjord-operator),
# fjord-verifiable (a verifiable producer and consumer group, as Kafka's
# VerifiableProducer/VerifiableConsumer, for runs under faults) and kcat (a Kafka
# client for in-cluster Jobs).
#   docker build -t fjord .
#   docker run -p 9092:9092 -p 9093:9093 -p 9644:9644 \
#     -e FJORD_ADVERTISED_LISTENERS=PLAINTEXT://localhost:9092 fjord

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: cargo needs every member to resolve it. fjord-verifiable
# links librdkafka, which rdkafka-sys builds from source with the C toolchain and
# zlib headers the rust image already has; the broker and operator do not.
COPY Cargo.toml Cargo.lock ./
COPY vendor/ vendor/
COPY broker/ broker/
COPY proto/ proto/
COPY e2e/ e2e/
COPY crds/ crds/
COPY operator/ operator/
COPY helm/fjord/crds/ helm/fjord/crds/
RUN cargo build --release --locked --bin fjord-broker --bin fjord-operator --bin fjord-verifiable

# `make image` builds the same image from host binaries without a registry
# (e2e/k8s/image.py, whose `check` fails when this stage and the script disagree).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates kcat \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/fjord --no-create-home fjord \
 && install -d -o fjord -g fjord /var/lib/fjord
COPY --from=build /src/target/release/fjord-broker /usr/local/bin/fjord-broker
COPY --from=build /src/target/release/fjord-operator /usr/local/bin/fjord-operator
COPY --from=build /src/target/release/fjord-verifiable /usr/local/bin/fjord-verifiable

USER 10001
EXPOSE 9092 9093 9644
VOLUME /var/lib/fjord
ENTRYPOINT ["/usr/local/bin/fjord-broker"]
# For `docker run`: listen on all interfaces inside the container. Set
# FJORD_ADVERTISED_LISTENERS (e.g. PLAINTEXT://broker.example:9092) to an
# address clients can reach; otherwise Metadata tells them 0.0.0.0:9092.
# These are arguments, not environment: in Kubernetes the operator's pods set
# their own command, which drops them, so the ConfigMap's server.properties
# is the one source of listeners and log dirs.
CMD ["--override", "listeners=PLAINTEXT://0.0.0.0:9092", \
     "--override", "admin.listener=0.0.0.0:9093", \
     "--override", "metrics.listener=0.0.0.0:9644", \
     "--override", "log.dirs=/var/lib/fjord"]
