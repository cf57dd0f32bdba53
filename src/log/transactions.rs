//! Durable transaction-coordinator state: one record per transactional id.
//!
//! The coordinator (in `broker`) owns what a record means; this module stores and loads the
//! bytes. Ending a transaction writes its record together with the markers and offsets in
//! one batch ([`LogStore::end_transaction`]), so the record never disagrees with the log.

use std::sync::Arc;

use bytes::Bytes;
use slatedb::WriteBatch;

use super::durability::PendingWrite;
use super::read::prefix_range;
use super::{AppendReceipt, LogError, LogStore, PartitionLog, TxnMarker};
use crate::storage::keys::{self, OffsetValue};

/// A group's offset committed by a transaction, stored when the transaction commits.
pub struct TxnOffset<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub value: &'a OffsetValue,
}

impl LogStore {
    /// Every stored transaction record, by transactional id.
    pub async fn load_transactions(&self) -> Result<Vec<(String, Bytes)>, LogError> {
        let mut records = Vec::new();
        let mut scan = self
            .db
            .scan(prefix_range(&keys::transaction_prefix()))
            .await?;
        while let Some(entry) = scan.next().await? {
            let id = keys::decode_transaction_key(&entry.key)
                .ok_or_else(|| LogError::Corrupt("transaction key".into()))?;
            records.push((id.to_string(), entry.value));
        }
        Ok(records)
    }

    /// Stores a transaction record; await [`PendingWrite::durable`] before answering.
    pub async fn store_transaction(
        &self,
        transactional_id: &str,
        record: Bytes,
    ) -> Result<PendingWrite, LogError> {
        let mut batch = WriteBatch::new();
        batch.put(keys::transaction_key(transactional_id), record);
        Ok(self.pending_write(self.db.write(batch).await?))
    }

    /// Deletes a transaction record (an expired transactional id). Not waited for: a delete
    /// lost to a crash leaves a record that expires again.
    pub async fn delete_transaction(&self, transactional_id: &str) -> Result<(), LogError> {
        let mut batch = WriteBatch::new();
        batch.delete(keys::transaction_key(transactional_id));
        self.db.write(batch).await?;
        Ok(())
    }

    /// Ends a transaction: markers on `partitions`, the transaction's new `record`, and on
    /// commit its group offsets, all in one write.
    pub async fn write_transaction_end(
        &self,
        transactional_id: &str,
        record: Bytes,
        partitions: Vec<Arc<PartitionLog>>,
        marker: TxnMarker,
        offsets: &[TxnOffset<'_>],
    ) -> Result<AppendReceipt, LogError> {
        let mut metadata = vec![(keys::transaction_key(transactional_id), record)];
        if marker.commit {
            for offset in offsets {
                let key = keys::committed_offset_key(offset.group, offset.topic, offset.partition);
                metadata.push((key, offset.value.encode()));
            }
        }
        self.end_transaction(partitions, marker, metadata).await
    }
}
