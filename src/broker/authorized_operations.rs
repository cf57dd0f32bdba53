//! The operations a client is told it may perform when it asks (KIP-430's
//! `include_*_authorized_operations`). Shale has no authorizer, so, as a Kafka broker
//! without one, it answers with every operation the resource type supports.

/// Kafka's `AclOperation` codes, the bit each sets in the answer.
const READ: u8 = 3;
const WRITE: u8 = 4;
const CREATE: u8 = 5;
const DELETE: u8 = 6;
const ALTER: u8 = 7;
const DESCRIBE: u8 = 8;
const CLUSTER_ACTION: u8 = 9;
const DESCRIBE_CONFIGS: u8 = 10;
const ALTER_CONFIGS: u8 = 11;
const IDEMPOTENT_WRITE: u8 = 12;

const fn bits(operations: &[u8]) -> i32 {
    let mut field = 0;
    let mut i = 0;
    while i < operations.len() {
        field |= 1 << operations[i];
        i += 1;
    }
    field
}

pub const TOPIC: i32 = bits(&[
    READ,
    WRITE,
    CREATE,
    DESCRIBE,
    DELETE,
    ALTER,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
]);

pub const GROUP: i32 = bits(&[READ, DESCRIBE, DELETE]);

pub const CLUSTER: i32 = bits(&[
    CREATE,
    CLUSTER_ACTION,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
    IDEMPOTENT_WRITE,
    ALTER,
    DESCRIBE,
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_set_one_bit_per_operation() {
        assert_eq!(GROUP, (1 << 3) | (1 << 8) | (1 << 6));
        assert_eq!(TOPIC.count_ones(), 8);
        assert_eq!(CLUSTER.count_ones(), 7);
    }
}
