//! Which of a Cluster's configs the brokers take at run time, and the config
//! operations that bring the brokers there. Pure: the cluster controller
//! reads the brokers' cluster-wide dynamic configs from the admin API and
//! sends what this returns through `AlterBrokerConfigs` (Kafka's
//! IncrementalAlterConfigs on the default broker entity), as Strimzi does for
//! the configs Kafka can change without a restart. Everything else is static:
//! it goes into the ConfigMap, and a change rolls the brokers.

use std::collections::BTreeMap;

use fjord_proto::DYNAMIC_BROKER_CONFIGS;

/// The brokers apply `name` at run time.
pub fn is_dynamic(name: &str) -> bool {
    DYNAMIC_BROKER_CONFIGS.contains(&name)
}

/// The configs of the brokers' config file: everything not dynamic.
pub fn static_configs(config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    config
        .iter()
        .filter(|(k, _)| !is_dynamic(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The cluster-wide dynamic configs a Cluster asks for: its config's dynamic
/// ones, with `replicationThrottle` as both replication throttle rates.
pub fn desired_dynamic(config: &BTreeMap<String, String>, throttle: Option<i64>) -> BTreeMap<String, String> {
    let mut desired: BTreeMap<String, String> = config
        .iter()
        .filter(|(k, _)| is_dynamic(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(rate) = throttle {
        for name in [
            "leader.replication.throttled.rate",
            "follower.replication.throttled.rate",
        ] {
            desired.insert(name.into(), rate.to_string());
        }
    }
    desired
}

/// The operations from the brokers' `current` dynamic configs to `desired`:
/// (name, Some(value)) sets, (name, None) removes. The Cluster owns the
/// dynamic configs, so one set elsewhere and not asked for is removed; the
/// configs Fjord stores without acting on them are left alone.
pub fn config_changes(
    desired: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>)> {
    let sets = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), Some(v.clone())));
    let removals = current
        .keys()
        .filter(|k| is_dynamic(k) && !desired.contains_key(*k))
        .map(|k| (k.clone(), None));
    sets.chain(removals).collect()
}

/// "set a=1, b=2; removed c" for events.
pub fn describe_changes(changes: &[(String, Option<String>)]) -> String {
    let set: Vec<String> = changes
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    let removed: Vec<&str> = changes
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    match (set.is_empty(), removed.is_empty()) {
        (false, false) => format!("set {}; removed {}", set.join(", "), removed.join(", ")),
        (false, true) => format!("set {}", set.join(", ")),
        (true, false) => format!("removed {}", removed.join(", ")),
        (true, true) => "nothing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(current: &BTreeMap<String, String>, changes: &[(String, Option<String>)]) -> BTreeMap<String, String> {
        let mut out = current.clone();
        for (k, v) in changes {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        out
    }

    #[test]
    fn static_and_dynamic_split_the_config() {
        let config = BTreeMap::from([
            ("log.retention.ms".to_string(), "1000".to_string()),
            ("replica.lag.time.max.ms".to_string(), "20000".to_string()),
        ]);
        assert_eq!(
            static_configs(&config).keys().collect::<Vec<_>>(),
            ["replica.lag.time.max.ms"]
        );
        let desired = desired_dynamic(&config, Some(1 << 20));
        assert_eq!(desired["log.retention.ms"], "1000");
        assert_eq!(desired["leader.replication.throttled.rate"], "1048576");
        assert_eq!(desired["follower.replication.throttled.rate"], "1048576");
        assert!(!desired.contains_key("replica.lag.time.max.ms"));
    }

    #[test]
    fn changes_name_what_they_do() {
        let current = BTreeMap::from([("log.retention.ms".to_string(), "5".to_string())]);
        let desired = BTreeMap::from([("log.segment.bytes".to_string(), "1048576".to_string())]);
        let changes = config_changes(&desired, &current);
        assert_eq!(
            describe_changes(&changes),
            "set log.segment.bytes=1048576; removed log.retention.ms"
        );
        assert!(config_changes(&desired, &desired).is_empty());
    }

    fn configs() -> impl Strategy<Value = BTreeMap<String, String>> {
        let names: Vec<String> = DYNAMIC_BROKER_CONFIGS
            .iter()
            .map(|s| s.to_string())
            .chain(["num.io.threads".to_string(), "ssl.cipher.suites".to_string()])
            .collect();
        proptest::collection::btree_map(proptest::sample::select(names), "[0-9]{1,3}", 0..8)
    }

    proptest! {
        /// Applying the changes gives the brokers exactly the desired dynamic
        /// configs, leaves the configs Fjord only stores alone, and applying
        /// them twice changes nothing more.
        #[test]
        fn changes_reach_the_desired_configs(config in configs(), current in configs(), throttle in proptest::option::of(1024i64..1 << 30)) {
            let desired = desired_dynamic(&config, throttle);
            let changes = config_changes(&desired, &current);
            let after = apply(&current, &changes);
            let dynamic_after: BTreeMap<_, _> = after.iter().filter(|(k, _)| is_dynamic(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&dynamic_after, &desired);
            for (k, v) in current.iter().filter(|(k, _)| !is_dynamic(k)) {
                prop_assert_eq!(after.get(k), Some(v));
            }
            prop_assert!(config_changes(&desired, &after).is_empty());
            // What goes in the file and what is applied at run time never overlap.
            let statics = static_configs(&config);
            prop_assert!(statics.keys().all(|k| !desired.contains_key(k)));
        }
    }
}
