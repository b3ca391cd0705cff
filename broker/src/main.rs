//! `fjord-broker`: runs one broker. With no arguments it serves Kafka on
//! 127.0.0.1:9092 with data under ./data.

use std::path::PathBuf;

use clap::Parser;
use fjord_broker::{Broker, BrokerConfig};

#[derive(Parser, Debug)]
#[command(name = "fjord-broker", version, about = "Fjord: a Kafka-compatible streaming broker")]
struct Args {
    /// A server.properties or .toml file with Kafka config names.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Override one config, e.g. `--override log.dirs=/var/lib/fjord` (repeatable).
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Shorthand for --override log.dirs=DIR.
    #[arg(long)]
    data_dir: Option<String>,
    /// Shorthand for --override listeners=PLAINTEXT://ADDR.
    #[arg(long)]
    listen: Option<String>,
    /// node.id from a StatefulSet pod's name: its ordinal (`demo-2` is node 2).
    /// Kubernetes before 1.28 has no pod-index label to read it from.
    #[arg(long, value_name = "POD_NAME")]
    node_id_from_pod_name: Option<String>,
    /// process.roles from controller.quorum.voters: broker and controller on
    /// the voters, broker alone on every other node (one config for all pods).
    #[arg(long)]
    roles_from_voters: bool,
    /// broker.rack from this file: the zone of the node the pod runs on, from
    /// the operator's rack map (a ConfigMap keyed by node name, mounted as
    /// files). Empty: no rack. A node new to the map reaches the mounted
    /// volume at the kubelet's next sync, so start-up waits for the file.
    #[arg(long, value_name = "PATH")]
    rack_from_file: Option<PathBuf>,
}

/// How long start-up waits for `--rack-from-file` (a kubelet syncs a
/// ConfigMap volume within about a minute; the operator refreshes the map
/// within one of its own).
const RACK_FILE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

fn main() -> anyhow::Result<()> {
    fjord_broker::logging::init();
    let args = Args::parse();
    let mut overrides = Vec::new();
    for o in &args.overrides {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--override expects KEY=VALUE, got '{o}'"))?;
        overrides.push((k.trim().to_string(), v.trim().to_string()));
    }
    if let Some(d) = args.data_dir {
        overrides.push(("log.dirs".into(), d));
    }
    if let Some(l) = args.listen {
        overrides.push(("listeners".into(), format!("PLAINTEXT://{l}")));
    }
    if let Some(pod) = &args.node_id_from_pod_name {
        let id = fjord_broker::config::pod_ordinal(pod)
            .ok_or_else(|| anyhow::anyhow!("pod name '{pod}' does not end in a StatefulSet ordinal"))?;
        overrides.push(("node.id".into(), id.to_string()));
    }
    if let Some(path) = &args.rack_from_file {
        let rack = fjord_broker::config::rack_from_file(path, RACK_FILE_WAIT)?;
        if !rack.is_empty() {
            overrides.push(("broker.rack".into(), rack));
        }
    }
    let mut config = BrokerConfig::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    if args.roles_from_voters {
        config.take_roles_from_voters()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let broker = Broker::start(config).await?;
        wait_for_signal().await;
        tracing::info!("shutting down");
        broker.shutdown().await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
