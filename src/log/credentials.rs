//! Durable SCRAM credentials set through AlterUserScramCredentials: one record per user and
//! mechanism. The broker's SASL module owns what a record means; this module stores and
//! loads the bytes.

use bytes::Bytes;
use slatedb::WriteBatch;

use super::durability::PendingWrite;
use super::read::prefix_range;
use super::{LogError, LogStore};
use crate::storage::keys;

impl LogStore {
    /// Every stored credential: (mechanism code, user, record).
    pub async fn load_scram_credentials(&self) -> Result<Vec<(u8, String, Bytes)>, LogError> {
        let mut credentials = Vec::new();
        let mut scan = self
            .db
            .scan(prefix_range(&keys::scram_credential_prefix()))
            .await?;
        while let Some(entry) = scan.next().await? {
            let (mechanism, user) = keys::decode_scram_credential_key(&entry.key)
                .ok_or_else(|| LogError::Corrupt("SCRAM credential key".into()))?;
            credentials.push((mechanism, user.to_string(), entry.value));
        }
        Ok(credentials)
    }

    /// Stores `upserts` and deletes `deletes` ((mechanism code, user)) in one write; await
    /// [`PendingWrite::durable`] before answering.
    pub async fn alter_scram_credentials(
        &self,
        upserts: Vec<(u8, String, Bytes)>,
        deletes: Vec<(u8, String)>,
    ) -> Result<PendingWrite, LogError> {
        let mut batch = WriteBatch::new();
        for (mechanism, user, record) in upserts {
            batch.put(keys::scram_credential_key(mechanism, &user), record);
        }
        for (mechanism, user) in deletes {
            batch.delete(keys::scram_credential_key(mechanism, &user));
        }
        Ok(self.pending_write(self.db.write(batch).await?))
    }
}
