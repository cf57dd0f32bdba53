//! The one place that owns Shale's SlateDB keyspace.
//!
//! Every key starts with a 4-byte big-endian **segment** number, then a 1-byte [`KeyType`].
//! SlateDB is opened with a segment extractor over those 4 bytes (see `storage::open`), so
//! each segment has its own LSM tree and retention can drop a whole segment without
//! rewriting live data. Segment 0 holds metadata and is never dropped; record data lives in
//! segments 1 and up. All integers are big-endian so byte order is numeric order.
//!
//! | type | key | value |
//! |---|---|---|
//! | `ClusterId` | `0 \| 01` | cluster id, UTF-8 |
//! | `Topic` | `0 \| 02 \| topic name` | `TopicRecord` (JSON) |
//! | `Segment` | `0 \| 03 \| segment u32` | segment metadata (JSON) |
//! | `CommittedOffset` | `0 \| 04 \| group len u16 \| group \| topic len u16 \| topic \| partition u32` | [`OffsetValue`] |
//! | `Group` | `0 \| 05 \| group` | group record (JSON) |
//! | `ProducerState` | `0 \| 06 \| topic id (16) \| partition u32 \| producer id u64` | idempotence state (`log::producers`) |
//! | `ProducerIds` | `0 \| 07` | the last producer id handed out, i64 |
//! | `Transaction` | `0 \| 08 \| transactional id` | transaction record (JSON, `broker::txn_coordinator`) |
//! | `PartitionStart` | `0 \| 09 \| topic id (16) \| partition u32` | the partition's log start offset, i64 |
//! | `ScramCredential` | `0 \| 0a \| mechanism u8 \| user` | SCRAM keys (`broker::sasl::ScramKeys`) |
//! | `RecordBatch` | `seg \| 10 \| topic id (16) \| partition u32 \| last offset u64` | [`StoredBatch`]: the record batch as received, `baseOffset` set, or its place in a batch object |
//! | `AbortedTxn` | `seg \| 11 \| topic id (16) \| partition u32 \| marker offset u64` | [`AbortedTxn`] |
//! | `BatchObject` | `seg \| 12 \| object id u64` | topic id (16) \| partition u32 (see [`batch_object_key`]) |
//! | `GlobalSequence` | `seg \| 20 \| first sequence u64` | [`SequenceEntry`] |
//! | `KeyIndex` | `seg \| 30 \| topic id (16) \| key len u32 \| key \| sequence u64` | [`KeyIndexEntry`] |
//!
//! Record batches are keyed by their *last* offset so that a forward seek from any fetch
//! offset lands on the batch containing it. `GlobalSequence` entries give every appended
//! record a position in one order across all partitions: a batch of `n` records owns the
//! sequences `first .. first + n`. `KeyIndex` entries list every record of one message key
//! in a topic in global-sequence order (the key's length comes first, so one key's entries
//! share a prefix no other key has).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

/// The segment that holds metadata; retention never drops it.
pub const META_SEGMENT: u32 = 0;

/// Persisted, must be kept stable: these bytes are in every stored key.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    ClusterId = 0x01,
    Topic = 0x02,
    Segment = 0x03,
    CommittedOffset = 0x04,
    Group = 0x05,
    ProducerState = 0x06,
    ProducerIds = 0x07,
    Transaction = 0x08,
    PartitionStart = 0x09,
    ScramCredential = 0x0a,
    RecordBatch = 0x10,
    AbortedTxn = 0x11,
    BatchObject = 0x12,
    GlobalSequence = 0x20,
    KeyIndex = 0x30,
}

const SEGMENT_LEN: usize = 4;
const HEADER_LEN: usize = SEGMENT_LEN + 1;
const PARTITION_PREFIX_LEN: usize = HEADER_LEN + 16 + 4;

fn header(segment: u32, key_type: KeyType, capacity: usize) -> BytesMut {
    let mut key = BytesMut::with_capacity(HEADER_LEN + capacity);
    key.put_u32(segment);
    key.put_u8(key_type as u8);
    key
}

/// The part of `key` after the segment and type bytes, when the key has that type.
fn body(key: &[u8], key_type: KeyType) -> Option<&[u8]> {
    (key.len() >= HEADER_LEN && key[SEGMENT_LEN] == key_type as u8).then(|| &key[HEADER_LEN..])
}

/// The segment a key belongs to.
pub fn segment_of(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(..SEGMENT_LEN)?.try_into().ok()?))
}

/// The length of the segment prefix of every Shale key (what the segment extractor uses).
pub const fn segment_prefix_len() -> usize {
    SEGMENT_LEN
}

pub fn cluster_id_key() -> Bytes {
    header(META_SEGMENT, KeyType::ClusterId, 0).freeze()
}

pub fn topic_key(name: &str) -> Bytes {
    let mut key = header(META_SEGMENT, KeyType::Topic, name.len());
    key.put_slice(name.as_bytes());
    key.freeze()
}

/// The prefix shared by all topic keys.
pub fn topic_prefix() -> Bytes {
    header(META_SEGMENT, KeyType::Topic, 0).freeze()
}

pub fn segment_key(segment: u32) -> Bytes {
    let mut key = header(META_SEGMENT, KeyType::Segment, 4);
    key.put_u32(segment);
    key.freeze()
}

/// The prefix shared by all segment keys.
pub fn segment_record_prefix() -> Bytes {
    header(META_SEGMENT, KeyType::Segment, 0).freeze()
}

pub fn decode_segment_key(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(
        body(key, KeyType::Segment)?.try_into().ok()?,
    ))
}

fn put_short_str(key: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    key.put_u16(bytes.len() as u16);
    key.put_slice(bytes);
}

fn take_short_str(rest: &[u8]) -> Option<(&str, &[u8])> {
    let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
    Some((s, &rest[2 + len..]))
}

/// Key of a group's committed offset for one partition.
pub fn committed_offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut key = committed_offset_group_prefix(group);
    put_short_str(&mut key, topic);
    key.put_u32(partition as u32);
    key.freeze()
}

/// The prefix shared by all committed offsets of one group.
pub fn committed_offset_group_prefix(group: &str) -> BytesMut {
    let mut key = header(META_SEGMENT, KeyType::CommittedOffset, 2 + group.len() + 32);
    put_short_str(&mut key, group);
    key
}

/// The prefix shared by all committed offsets.
pub fn committed_offset_prefix() -> Bytes {
    header(META_SEGMENT, KeyType::CommittedOffset, 0).freeze()
}

/// `(group, topic, partition)` of a committed-offset key.
pub fn decode_committed_offset_key(key: &[u8]) -> Option<(&str, &str, i32)> {
    let rest = body(key, KeyType::CommittedOffset)?;
    let (group, rest) = take_short_str(rest)?;
    let (topic, rest) = take_short_str(rest)?;
    let partition = i32::from_be_bytes(rest.try_into().ok()?);
    Some((group, topic, partition))
}

/// A committed offset as stored.
///
/// Layout: `offset i64 | leader epoch i32 | commit timestamp i64 | metadata (UTF-8, the rest)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub commit_timestamp: i64,
    pub metadata: String,
}

impl OffsetValue {
    pub fn encode(&self) -> Bytes {
        let mut value = BytesMut::with_capacity(20 + self.metadata.len());
        value.put_i64(self.offset);
        value.put_i32(self.leader_epoch);
        value.put_i64(self.commit_timestamp);
        value.put_slice(self.metadata.as_bytes());
        value.freeze()
    }

    pub fn decode(value: &[u8]) -> Option<OffsetValue> {
        Some(OffsetValue {
            offset: i64::from_be_bytes(value.get(..8)?.try_into().ok()?),
            leader_epoch: i32::from_be_bytes(value.get(8..12)?.try_into().ok()?),
            commit_timestamp: i64::from_be_bytes(value.get(12..20)?.try_into().ok()?),
            metadata: String::from_utf8(value.get(20..)?.to_vec()).ok()?,
        })
    }
}

pub fn group_key(group: &str) -> Bytes {
    let mut key = header(META_SEGMENT, KeyType::Group, group.len());
    key.put_slice(group.as_bytes());
    key.freeze()
}

/// The prefix shared by all group keys.
pub fn group_prefix() -> Bytes {
    header(META_SEGMENT, KeyType::Group, 0).freeze()
}

pub fn decode_group_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(body(key, KeyType::Group)?).ok()
}

/// Key of one producer's idempotence state on one partition.
pub fn producer_state_key(topic_id: Uuid, partition: i32, producer_id: i64) -> Bytes {
    let mut key = producer_state_prefix(topic_id, partition);
    key.put_u64(producer_id as u64);
    key.freeze()
}

/// The prefix shared by every producer's state on one partition.
pub fn producer_state_prefix(topic_id: Uuid, partition: i32) -> BytesMut {
    let mut key = header(META_SEGMENT, KeyType::ProducerState, 16 + 4 + 8);
    key.put_slice(topic_id.as_bytes());
    key.put_u32(partition as u32);
    key
}

/// The prefix shared by every producer's state on every partition.
pub fn producer_states_prefix() -> Bytes {
    header(META_SEGMENT, KeyType::ProducerState, 0).freeze()
}

/// The topic id and partition of a producer-state key.
pub fn decode_producer_state_partition(key: &[u8]) -> Option<(Uuid, i32)> {
    let rest = body(key, KeyType::ProducerState)?;
    let topic_id = Uuid::from_slice(rest.get(..16)?).ok()?;
    let partition = u32::from_be_bytes(rest.get(16..20)?.try_into().ok()?);
    Some((topic_id, partition as i32))
}

/// The producer id of a producer-state key.
pub fn decode_producer_state_key(key: &[u8]) -> Option<i64> {
    let rest = body(key, KeyType::ProducerState)?;
    Some(i64::from_be_bytes(rest.get(20..28)?.try_into().ok()?))
}

pub fn producer_ids_key() -> Bytes {
    header(META_SEGMENT, KeyType::ProducerIds, 0).freeze()
}

pub fn transaction_key(transactional_id: &str) -> Bytes {
    let mut key = header(META_SEGMENT, KeyType::Transaction, transactional_id.len());
    key.put_slice(transactional_id.as_bytes());
    key.freeze()
}

/// The prefix shared by all transaction keys.
pub fn transaction_prefix() -> Bytes {
    header(META_SEGMENT, KeyType::Transaction, 0).freeze()
}

pub fn decode_transaction_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(body(key, KeyType::Transaction)?).ok()
}

/// Key of a user's SCRAM credential for one mechanism (Kafka's code: 1 for SHA-256, 2 for
/// SHA-512), set by AlterUserScramCredentials.
pub fn scram_credential_key(mechanism: u8, user: &str) -> Bytes {
    let mut key = header(META_SEGMENT, KeyType::ScramCredential, 1 + user.len());
    key.put_u8(mechanism);
    key.put_slice(user.as_bytes());
    key.freeze()
}

/// The prefix shared by all SCRAM credential keys.
pub fn scram_credential_prefix() -> Bytes {
    header(META_SEGMENT, KeyType::ScramCredential, 0).freeze()
}

pub fn decode_scram_credential_key(key: &[u8]) -> Option<(u8, &str)> {
    let (&mechanism, user) = body(key, KeyType::ScramCredential)?.split_first()?;
    Some((mechanism, std::str::from_utf8(user).ok()?))
}

/// Key of a partition's log start offset, moved by retention and DeleteRecords. It also
/// keeps the partition's end when retention has dropped every record, so offsets never
/// restart at 0.
pub fn partition_start_key(topic_id: Uuid, partition: i32) -> Bytes {
    let mut key = header(META_SEGMENT, KeyType::PartitionStart, 20);
    key.put_slice(topic_id.as_bytes());
    key.put_u32(partition as u32);
    key.freeze()
}

/// An aborted transaction on one partition: what read_committed fetches report so that
/// consumers drop the producer's records from `first_offset` up to the abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The offset of the abort marker, the transaction's last offset.
    pub marker_offset: i64,
}

impl AbortedTxn {
    /// Key `seg | 11 | topic id | partition | marker offset`; value
    /// `producer id i64 | first offset i64`. Stored in the marker's segment, so retention
    /// drops it with the records it describes.
    pub fn encode(&self, segment: u32, topic_id: Uuid, partition: i32) -> (Bytes, Bytes) {
        let mut key = aborted_txn_prefix(segment, topic_id, partition);
        key.put_u64(self.marker_offset as u64);
        let mut value = BytesMut::with_capacity(16);
        value.put_i64(self.producer_id);
        value.put_i64(self.first_offset);
        (key.freeze(), value.freeze())
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Option<AbortedTxn> {
        let rest = body(key, KeyType::AbortedTxn)?;
        if rest.len() != 16 + 4 + 8 || value.len() != 16 {
            return None;
        }
        Some(AbortedTxn {
            producer_id: i64::from_be_bytes(value[..8].try_into().ok()?),
            first_offset: i64::from_be_bytes(value[8..].try_into().ok()?),
            marker_offset: i64::from_be_bytes(rest[20..28].try_into().ok()?),
        })
    }
}

/// The prefix shared by one partition's aborted transactions in one segment.
pub fn aborted_txn_prefix(segment: u32, topic_id: Uuid, partition: i32) -> BytesMut {
    let mut key = header(segment, KeyType::AbortedTxn, 16 + 4 + 8);
    key.put_slice(topic_id.as_bytes());
    key.put_u32(partition as u32);
    key
}

/// Key of one stored record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchKey {
    pub segment: u32,
    pub topic_id: Uuid,
    pub partition: i32,
    pub last_offset: i64,
}

impl BatchKey {
    pub fn encode(&self) -> Bytes {
        let mut key = partition_prefix(self.segment, self.topic_id, self.partition);
        key.put_u64(self.last_offset as u64);
        key.freeze()
    }

    pub fn decode(key: &[u8]) -> Option<BatchKey> {
        let rest = body(key, KeyType::RecordBatch)?;
        if rest.len() != 16 + 4 + 8 {
            return None;
        }
        Some(BatchKey {
            segment: segment_of(key)?,
            topic_id: Uuid::from_slice(&rest[..16]).ok()?,
            partition: i32::from_be_bytes(rest[16..20].try_into().ok()?),
            last_offset: i64::from_be_bytes(rest[20..28].try_into().ok()?),
        })
    }
}

/// The prefix shared by all batches of one partition in one segment.
pub fn partition_prefix(segment: u32, topic_id: Uuid, partition: i32) -> BytesMut {
    let mut key = header(segment, KeyType::RecordBatch, 16 + 4 + 8);
    key.put_slice(topic_id.as_bytes());
    key.put_u32(partition as u32);
    debug_assert_eq!(key.len(), PARTITION_PREFIX_LEN);
    key
}

/// The prefix shared by all record batches of one segment.
pub fn segment_batches_prefix(segment: u32) -> Bytes {
    header(segment, KeyType::RecordBatch, 0).freeze()
}

/// A `RecordBatch` value: the batch itself, or where in a batch object it is.
///
/// Large appends are written once, to a batch object of their own (`log::batch_objects`),
/// and their batch keys hold a location instead of the bytes. A stored batch starts with its
/// base offset, which is never negative, so a location starts with [`BatchLocation::TAG`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredBatch {
    Inline(Bytes),
    InObject(BatchLocation),
}

/// One batch in a batch object.
///
/// Layout: `0xff | object id u64 | position u64 | object length u64 | batch header`, the
/// header being the batch's first 61 bytes with its base offset set. The object holds the
/// batches as received; readers set the base offset (see `log::batch_objects`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLocation {
    pub object_id: u64,
    /// Where the batch starts in the object.
    pub position: u64,
    pub object_len: u64,
    /// The batch's header, so size and timestamp readers need not fetch the object.
    pub header: Bytes,
}

impl BatchLocation {
    pub const TAG: u8 = 0xff;
    const FIXED_LEN: usize = 1 + 8 + 8 + 8;

    pub fn encode(&self) -> Bytes {
        let mut value = BytesMut::with_capacity(Self::FIXED_LEN + self.header.len());
        value.put_u8(Self::TAG);
        value.put_u64(self.object_id);
        value.put_u64(self.position);
        value.put_u64(self.object_len);
        value.put_slice(&self.header);
        value.freeze()
    }
}

impl StoredBatch {
    pub fn decode(value: Bytes) -> Option<StoredBatch> {
        if value.first() != Some(&BatchLocation::TAG) {
            return Some(StoredBatch::Inline(value));
        }
        let fixed = value.get(..BatchLocation::FIXED_LEN)?;
        let u64_at = |at: usize| u64::from_be_bytes(fixed[at..at + 8].try_into().unwrap());
        Some(StoredBatch::InObject(BatchLocation {
            object_id: u64_at(1),
            position: u64_at(9),
            object_len: u64_at(17),
            header: value.slice(BatchLocation::FIXED_LEN..),
        }))
    }

    /// The batch's header: its first bytes, with the base offset set.
    pub fn header(&self) -> &[u8] {
        match self {
            StoredBatch::Inline(batch) => batch,
            StoredBatch::InObject(location) => &location.header,
        }
    }
}

/// Key of a batch object's registration in the segment its batches went to: retention
/// deletes the object when it drops the segment. Layout `seg | 12 | object id u64`; value
/// `topic id (16) | partition u32`, which name the object's path.
pub fn batch_object_key(segment: u32, object_id: u64) -> Bytes {
    let mut key = header(segment, KeyType::BatchObject, 8);
    key.put_u64(object_id);
    key.freeze()
}

pub fn batch_object_value(topic_id: Uuid, partition: i32) -> Bytes {
    let mut value = BytesMut::with_capacity(20);
    value.put_slice(topic_id.as_bytes());
    value.put_u32(partition as u32);
    value.freeze()
}

/// The prefix shared by the batch objects registered in one segment.
pub fn batch_objects_prefix(segment: u32) -> Bytes {
    header(segment, KeyType::BatchObject, 0).freeze()
}

/// `(object id, topic id, partition)` of a batch object's registration.
pub fn decode_batch_object(key: &[u8], value: &[u8]) -> Option<(u64, Uuid, i32)> {
    let id = u64::from_be_bytes(body(key, KeyType::BatchObject)?.try_into().ok()?);
    if value.len() != 20 {
        return None;
    }
    let topic_id = Uuid::from_slice(&value[..16]).ok()?;
    let partition = i32::from_be_bytes(value[16..].try_into().ok()?);
    Some((id, topic_id, partition))
}

/// Key of one global-sequence entry: the first sequence number of a batch.
pub fn sequence_key(segment: u32, first_sequence: u64) -> Bytes {
    let mut key = header(segment, KeyType::GlobalSequence, 8);
    key.put_u64(first_sequence);
    key.freeze()
}

/// The prefix shared by all global-sequence entries of one segment.
pub fn sequence_prefix(segment: u32) -> Bytes {
    header(segment, KeyType::GlobalSequence, 0).freeze()
}

pub fn decode_sequence_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(
        body(key, KeyType::GlobalSequence)?.try_into().ok()?,
    ))
}

/// Where the records of one global-sequence range live.
///
/// Layout: `topic id (16) | partition u32 | base offset u64 | record count u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceEntry {
    pub topic_id: Uuid,
    pub partition: i32,
    pub base_offset: i64,
    pub record_count: u32,
}

impl SequenceEntry {
    const LEN: usize = 16 + 4 + 8 + 4;

    pub fn encode(&self) -> Bytes {
        let mut value = BytesMut::with_capacity(Self::LEN);
        value.put_slice(self.topic_id.as_bytes());
        value.put_u32(self.partition as u32);
        value.put_u64(self.base_offset as u64);
        value.put_u32(self.record_count);
        value.freeze()
    }

    pub fn decode(value: &[u8]) -> Option<SequenceEntry> {
        if value.len() != Self::LEN {
            return None;
        }
        Some(SequenceEntry {
            topic_id: Uuid::from_slice(&value[..16]).ok()?,
            partition: i32::from_be_bytes(value[16..20].try_into().ok()?),
            base_offset: i64::from_be_bytes(value[20..28].try_into().ok()?),
            record_count: u32::from_be_bytes(value[28..32].try_into().ok()?),
        })
    }
}

/// The prefix shared by one message key's index entries in one segment.
pub fn key_index_prefix(segment: u32, topic_id: Uuid, key: &[u8]) -> BytesMut {
    let mut prefix = header(segment, KeyType::KeyIndex, 16 + 4 + key.len() + 8);
    prefix.put_slice(topic_id.as_bytes());
    prefix.put_u32(key.len() as u32);
    prefix.put_slice(key);
    prefix
}

/// Where one record of a message key is: an index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndexEntry {
    /// The segment holding the entry, and so the record's batch.
    pub segment: u32,
    pub sequence: u64,
    pub partition: i32,
    pub offset: i64,
    /// The last offset of the record's batch: with the segment, the batch's key, so a
    /// key-stream read is a point look-up per batch when the entry has no copy.
    pub batch_last_offset: i64,
    /// The producer of a transactional record: readers skip the record if that producer's
    /// transaction on the partition was aborted.
    pub transactional_producer: Option<i64>,
    /// A copy of the record, so a key-stream read needs no batch look-up. Absent for
    /// records over the topic's `shale.key.index.copy.max.bytes`, and removed when
    /// compaction removes the record.
    pub record: Option<IndexedRecord>,
}

/// The parts of a record its index entry does not already hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedRecord {
    pub timestamp: i64,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

const ENTRY_POINTER_LEN: usize = 20;
const ENTRY_TRANSACTIONAL: u8 = 1;
const ENTRY_RECORD: u8 = 2;

impl KeyIndexEntry {
    /// Key `key_index_prefix | sequence u64`; value `partition u32 | offset u64 | batch
    /// last offset u64`, then, if the entry has either, `flags u8 | [producer id u64] |
    /// [record]` with the record as `timestamp u64 | value | header count u32 | (name |
    /// value)*`, each value or name `length i32 (-1 null) | bytes`.
    pub fn encode(&self, topic_id: Uuid, key: &[u8]) -> (Bytes, Bytes) {
        let mut index_key = key_index_prefix(self.segment, topic_id, key);
        index_key.put_u64(self.sequence);
        let record_len = self.record.as_ref().map_or(0, |r| {
            let field = |b: &Option<Bytes>| 4 + b.as_ref().map_or(0, Bytes::len);
            12 + field(&r.value)
                + r.headers
                    .iter()
                    .map(|(name, value)| 4 + name.len() + field(value))
                    .sum::<usize>()
        });
        let mut value = BytesMut::with_capacity(ENTRY_POINTER_LEN + 9 + record_len);
        value.put_u32(self.partition as u32);
        value.put_u64(self.offset as u64);
        value.put_u64(self.batch_last_offset as u64);
        let flags = self
            .transactional_producer
            .map_or(0, |_| ENTRY_TRANSACTIONAL)
            | self.record.as_ref().map_or(0, |_| ENTRY_RECORD);
        if flags != 0 {
            value.put_u8(flags);
        }
        if let Some(producer_id) = self.transactional_producer {
            value.put_u64(producer_id as u64);
        }
        if let Some(record) = &self.record {
            let put_field = |value: &mut BytesMut, field: Option<&[u8]>| match field {
                Some(bytes) => {
                    value.put_i32(bytes.len() as i32);
                    value.put_slice(bytes);
                }
                None => value.put_i32(-1),
            };
            value.put_u64(record.timestamp as u64);
            put_field(&mut value, record.value.as_deref());
            value.put_u32(record.headers.len() as u32);
            for (name, header) in &record.headers {
                put_field(&mut value, Some(name));
                put_field(&mut value, header.as_deref());
            }
        }
        (index_key.freeze(), value.freeze())
    }

    pub fn decode(key: &[u8], value: &Bytes) -> Option<KeyIndexEntry> {
        body(key, KeyType::KeyIndex)?;
        if value.len() < ENTRY_POINTER_LEN || key.len() < HEADER_LEN + 16 + 4 + 8 {
            return None;
        }
        let mut rest = value.slice(ENTRY_POINTER_LEN..);
        let flags = take_u8(&mut rest).unwrap_or(0);
        let transactional_producer = if flags & ENTRY_TRANSACTIONAL != 0 {
            Some(take_u64(&mut rest)? as i64)
        } else {
            None
        };
        let record = if flags & ENTRY_RECORD != 0 {
            let timestamp = take_u64(&mut rest)? as i64;
            let value = take_field(&mut rest)?;
            let count = take_u32(&mut rest)?;
            let mut headers = Vec::with_capacity(count.min(64) as usize);
            for _ in 0..count {
                let name = take_field(&mut rest)??;
                headers.push((name, take_field(&mut rest)?));
            }
            Some(IndexedRecord {
                timestamp,
                value,
                headers,
            })
        } else {
            None
        };
        if !rest.is_empty() {
            return None;
        }
        Some(KeyIndexEntry {
            segment: segment_of(key)?,
            sequence: u64::from_be_bytes(key[key.len() - 8..].try_into().ok()?),
            partition: i32::from_be_bytes(value[..4].try_into().ok()?),
            offset: i64::from_be_bytes(value[4..12].try_into().ok()?),
            batch_last_offset: i64::from_be_bytes(value[12..20].try_into().ok()?),
            transactional_producer,
            record,
        })
    }

    /// The entry's stored value without its copy of the record: what compaction leaves
    /// when it removes the record, so the key's version (its entry count) never drops.
    pub fn without_record(&self, topic_id: Uuid, key: &[u8]) -> (Bytes, Bytes) {
        KeyIndexEntry {
            record: None,
            ..self.clone()
        }
        .encode(topic_id, key)
    }
}

fn take_u8(rest: &mut Bytes) -> Option<u8> {
    let byte = *rest.first()?;
    rest.advance(1);
    Some(byte)
}

fn take_u32(rest: &mut Bytes) -> Option<u32> {
    let bytes = rest.get(..4)?.try_into().ok()?;
    rest.advance(4);
    Some(u32::from_be_bytes(bytes))
}

fn take_u64(rest: &mut Bytes) -> Option<u64> {
    let bytes = rest.get(..8)?.try_into().ok()?;
    rest.advance(8);
    Some(u64::from_be_bytes(bytes))
}

/// A length-prefixed field; the outer `None` when the bytes run out.
fn take_field(rest: &mut Bytes) -> Option<Option<Bytes>> {
    let length = take_u32(rest)? as i32;
    if length < 0 {
        return Some(None);
    }
    let length = length as usize;
    (rest.len() >= length).then(|| Some(rest.split_to(length)))
}

/// The smallest key strictly greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(Bytes::from(end));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_key_round_trips_and_orders_by_offset() {
        let topic_id = Uuid::new_v4();
        for (partition, last_offset) in [(0, 0), (7, 41), (i32::MAX, i64::MAX)] {
            let key = BatchKey {
                segment: 3,
                topic_id,
                partition,
                last_offset,
            };
            assert_eq!(BatchKey::decode(&key.encode()), Some(key));
            assert_eq!(segment_of(&key.encode()), Some(3));
        }
        let at = |last_offset| {
            BatchKey {
                segment: 1,
                topic_id,
                partition: 2,
                last_offset,
            }
            .encode()
        };
        assert!(at(9) < at(10));
        assert!(at(255) < at(256));
        assert!(at(10).starts_with(&partition_prefix(1, topic_id, 2)));
    }

    #[test]
    fn sequence_entry_round_trips() {
        let entry = SequenceEntry {
            topic_id: Uuid::new_v4(),
            partition: 12,
            base_offset: 1 << 40,
            record_count: 500,
        };
        assert_eq!(SequenceEntry::decode(&entry.encode()), Some(entry));
        assert_eq!(SequenceEntry::decode(&entry.encode()[1..]), None);
        let key = sequence_key(5, 99);
        assert_eq!(decode_sequence_key(&key), Some(99));
        assert!(key.starts_with(&sequence_prefix(5)));
        assert!(sequence_key(5, 255) < sequence_key(5, 256));
    }

    #[test]
    fn meta_keys_live_in_segment_zero_and_do_not_collide() {
        let keys = [cluster_id_key(), topic_key("orders"), segment_key(1)];
        for key in &keys {
            assert_eq!(segment_of(key), Some(META_SEGMENT));
        }
        assert!(topic_key("orders").starts_with(&topic_prefix()));
        assert!(!segment_key(1).starts_with(&topic_prefix()));
        assert_eq!(decode_segment_key(&segment_key(77)), Some(77));
        assert_eq!(decode_segment_key(&topic_key("x")), None);
        assert_eq!(BatchKey::decode(&topic_key("orders")), None);
    }

    #[test]
    fn committed_offsets_round_trip_and_group_by_group() {
        let key = committed_offset_key("billing", "orders", 7);
        assert_eq!(
            decode_committed_offset_key(&key),
            Some(("billing", "orders", 7))
        );
        assert!(key.starts_with(&committed_offset_group_prefix("billing")));
        assert!(key.starts_with(&committed_offset_prefix()));
        // A group whose name extends another's never shares its prefix.
        let longer = committed_offset_key("billing2", "orders", 7);
        assert!(!longer.starts_with(&committed_offset_group_prefix("billing")));
        let value = OffsetValue {
            offset: 42,
            leader_epoch: -1,
            commit_timestamp: 1_700_000_000_000,
            metadata: "checkpoint \u{2713}".into(),
        };
        assert_eq!(OffsetValue::decode(&value.encode()), Some(value));
        assert_eq!(OffsetValue::decode(&[0; 5]), None);
        assert_eq!(decode_group_key(&group_key("g-1")), Some("g-1"));
        assert!(group_key("g-1").starts_with(&group_prefix()));
        assert_eq!(decode_group_key(&topic_key("g-1")), None);
    }

    #[test]
    fn producer_state_keys_round_trip_per_partition() {
        let topic_id = Uuid::new_v4();
        let key = producer_state_key(topic_id, 3, 1 << 40);
        assert_eq!(decode_producer_state_key(&key), Some(1 << 40));
        assert_eq!(decode_producer_state_partition(&key), Some((topic_id, 3)));
        assert!(key.starts_with(&producer_states_prefix()));
        assert!(key.starts_with(&producer_state_prefix(topic_id, 3)));
        assert!(!key.starts_with(&producer_state_prefix(topic_id, 4)));
        assert_eq!(segment_of(&producer_ids_key()), Some(META_SEGMENT));
    }

    #[test]
    fn scram_credential_keys_round_trip() {
        let key = scram_credential_key(2, "alice");
        assert_eq!(decode_scram_credential_key(&key), Some((2, "alice")));
        assert!(key.starts_with(&scram_credential_prefix()));
        assert_eq!(segment_of(&key), Some(META_SEGMENT));
        assert_eq!(decode_scram_credential_key(&transaction_key("alice")), None);
    }

    #[test]
    fn transactions_and_aborted_txns_round_trip() {
        let key = transaction_key("payments-app");
        assert_eq!(decode_transaction_key(&key), Some("payments-app"));
        assert!(key.starts_with(&transaction_prefix()));
        let topic_id = Uuid::new_v4();
        let aborted = AbortedTxn {
            producer_id: 7,
            first_offset: 40,
            marker_offset: 52,
        };
        let (key, value) = aborted.encode(3, topic_id, 2);
        assert_eq!(segment_of(&key), Some(3));
        assert!(key.starts_with(&aborted_txn_prefix(3, topic_id, 2)));
        assert_eq!(AbortedTxn::decode(&key, &value), Some(aborted));
        assert_eq!(AbortedTxn::decode(&key, &value[1..]), None);
    }

    #[test]
    fn key_index_entries_round_trip_and_keys_never_share_prefixes() {
        let topic = Uuid::new_v4();
        let entry = KeyIndexEntry {
            segment: 5,
            sequence: 99,
            partition: 2,
            offset: 1234,
            batch_last_offset: 1240,
            transactional_producer: None,
            record: None,
        };
        let (key, value) = entry.encode(topic, b"order-1");
        assert_eq!(value.len(), 20);
        assert_eq!(KeyIndexEntry::decode(&key, &value), Some(entry.clone()));
        let full = KeyIndexEntry {
            transactional_producer: Some(7),
            record: Some(IndexedRecord {
                timestamp: -3,
                value: Some(Bytes::from("placed")),
                headers: vec![
                    (Bytes::from("a"), None),
                    (Bytes::from("b"), Some(Bytes::new())),
                ],
            }),
            ..entry.clone()
        };
        let (full_key, full_value) = full.encode(topic, b"order-1");
        assert_eq!(full_key, key);
        assert_eq!(KeyIndexEntry::decode(&key, &full_value), Some(full.clone()));
        for cut in 21..full_value.len() {
            assert_eq!(KeyIndexEntry::decode(&key, &full_value.slice(..cut)), None);
        }
        let (_, bare) = full.without_record(topic, b"order-1");
        let bare = KeyIndexEntry::decode(&key, &bare).unwrap();
        assert_eq!((bare.transactional_producer, bare.record), (Some(7), None));
        assert!(key.starts_with(&key_index_prefix(5, topic, b"order-1")));
        assert!(!key.starts_with(&key_index_prefix(5, topic, b"order-")));
        let (longer, _) = entry.encode(topic, b"order-10");
        assert!(!longer.starts_with(&key_index_prefix(5, topic, b"order-1")));
    }

    #[test]
    fn prefix_end_bounds_every_extension() {
        assert_eq!(prefix_end(&[1, 2]), Some(Bytes::from_static(&[1, 3])));
        assert_eq!(prefix_end(&[1, 0xff]), Some(Bytes::from_static(&[2])));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        let prefix = partition_prefix(1, Uuid::nil(), 0);
        let end = prefix_end(&prefix).unwrap();
        let mut last = prefix.clone();
        last.put_u64(u64::MAX);
        assert!(last.as_ref() < end.as_ref());
    }
}
