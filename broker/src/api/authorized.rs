//! `include_*_authorized_operations`: with no authorizer configured, Kafka
//! answers every operation the resource type supports (AclEntry's
//! supportedOperations), as a bitfield of AclOperation codes.

const READ: i32 = 3;
const WRITE: i32 = 4;
const CREATE: i32 = 5;
const DELETE: i32 = 6;
const ALTER: i32 = 7;
const DESCRIBE: i32 = 8;
const CLUSTER_ACTION: i32 = 9;
const DESCRIBE_CONFIGS: i32 = 10;
const ALTER_CONFIGS: i32 = 11;
const IDEMPOTENT_WRITE: i32 = 12;

const fn bits(operations: &[i32]) -> i32 {
    let mut out = 0;
    let mut i = 0;
    while i < operations.len() {
        out |= 1 << operations[i];
        i += 1;
    }
    out
}

pub const TOPIC: i32 = bits(&[
    READ,
    WRITE,
    CREATE,
    DELETE,
    ALTER,
    DESCRIBE,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
]);
pub const CLUSTER: i32 = bits(&[
    CREATE,
    CLUSTER_ACTION,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
    IDEMPOTENT_WRITE,
    ALTER,
    DESCRIBE,
]);
pub const GROUP: i32 = bits(&[READ, DESCRIBE, DELETE]);
/// What the field holds when the client did not ask.
pub const NOT_REQUESTED: i32 = i32::MIN;

/// The bitfield when asked for, else Kafka's "not requested" value.
pub fn when(requested: bool, operations: i32) -> i32 {
    if requested {
        operations
    } else {
        NOT_REQUESTED
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bitfields_match_kafka() {
        assert_eq!(super::TOPIC, 3576);
        assert_eq!(super::CLUSTER, 8096);
        assert_eq!(super::GROUP, 328);
    }
}
