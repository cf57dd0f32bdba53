//! Durable consumer-group state: committed offsets and group records.
//!
//! The group coordinator (in `broker`) owns what these mean; this module only stores and
//! loads them. Writes return at once and are made durable by SlateDB's group commit, so
//! many offset commits share one WAL flush and never wait on produce traffic.

use bytes::Bytes;
use slatedb::WriteBatch;

use super::durability::PendingWrite;
use super::read::prefix_range;
use super::{LogError, LogStore};
use crate::storage::keys::{self, OffsetValue};

/// One change to a group's stored state.
pub enum GroupWrite {
    /// Sets (`Some`) or deletes (`None`) a committed offset.
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
    },
    /// Sets (`Some`) or deletes (`None`) a group's record.
    Group {
        group: String,
        record: Option<Bytes>,
    },
}

/// Everything stored about groups, as loaded at startup.
#[derive(Default)]
pub struct StoredGroups {
    pub records: Vec<(String, Bytes)>,
    pub offsets: Vec<(String, String, i32, OffsetValue)>,
}

impl LogStore {
    pub async fn load_groups(&self) -> Result<StoredGroups, LogError> {
        let mut stored = StoredGroups::default();
        let mut scan = self.db.scan(prefix_range(&keys::group_prefix())).await?;
        while let Some(entry) = scan.next().await? {
            let group = keys::decode_group_key(&entry.key)
                .ok_or_else(|| LogError::Corrupt("group key".into()))?;
            stored.records.push((group.to_string(), entry.value));
        }
        let mut scan = self
            .db
            .scan(prefix_range(&keys::committed_offset_prefix()))
            .await?;
        while let Some(entry) = scan.next().await? {
            let (group, topic, partition) = keys::decode_committed_offset_key(&entry.key)
                .ok_or_else(|| LogError::Corrupt("committed offset key".into()))?;
            let value = OffsetValue::decode(&entry.value)
                .ok_or_else(|| LogError::Corrupt("committed offset value".into()))?;
            stored
                .offsets
                .push((group.to_string(), topic.to_string(), partition, value));
        }
        Ok(stored)
    }

    /// Applies group changes in one write; await [`PendingWrite::durable`] before
    /// acknowledging them.
    pub async fn write_groups(&self, writes: Vec<GroupWrite>) -> Result<PendingWrite, LogError> {
        if writes.is_empty() {
            return Ok(PendingWrite(None));
        }
        let mut batch = WriteBatch::new();
        for write in writes {
            match write {
                GroupWrite::Offset {
                    group,
                    topic,
                    partition,
                    value,
                } => {
                    let key = keys::committed_offset_key(&group, &topic, partition);
                    match value {
                        Some(value) => batch.put(key, value.encode()),
                        None => batch.delete(key),
                    }
                }
                GroupWrite::Group { group, record } => {
                    let key = keys::group_key(&group);
                    match record {
                        Some(record) => batch.put(key, record),
                        None => batch.delete(key),
                    }
                }
            }
        }
        Ok(self.pending_write(self.db.write(batch).await?))
    }
}
