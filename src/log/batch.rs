//! Kafka record batches (magic v2) as stored: validated on produce, served back unchanged.
//!
//! Layout of the 61-byte header (big-endian):
//! `baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32`.
//! The CRC-32C covers everything from `attributes` to the end, so the broker can rewrite
//! `baseOffset` without touching the CRC. Records are decompressed only to index their
//! keys ([`keyed_records`]); what is stored and served is the batch as received.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub const HEADER_LEN: usize = 61;
const LENGTH_END: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;

/// Attribute bit set when the batch's timestamps are the broker's append time.
const LOG_APPEND_TIME_BIT: i16 = 1 << 3;
/// Attribute bit set on batches written inside a transaction.
const TRANSACTIONAL_BIT: i16 = 1 << 4;
/// Attribute bit set on transaction markers, which only brokers write.
const CONTROL_BIT: i16 = 1 << 5;
/// The codec's bits in the attributes; 0 is no compression.
const COMPRESSION_BITS: i16 = 0x07;

/// The fewest bytes a record takes in the v2 format: its length, attributes, timestamp and
/// offset deltas, key and value lengths (both null) and header count, a byte each.
const MIN_RECORD_BYTES: usize = 7;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("corrupt record batch: {0}")]
    Corrupt(&'static str),
    #[error("record batch magic {0} is not supported; only v2 (Kafka 0.11+) batches are")]
    UnsupportedMagic(i8),
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A view of one batch whose header has been checked to be complete.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a>(&'a [u8]);

impl<'a> BatchView<'a> {
    /// Reads a stored (already validated) batch; `None` if it is shorter than a header.
    pub fn new(batch: &'a [u8]) -> Option<Self> {
        (batch.len() >= HEADER_LEN).then_some(BatchView(batch))
    }
    pub fn base_offset(&self) -> i64 {
        i64_at(self.0, 0)
    }
    /// The batch's whole length as stored: its `batchLength` and the fields before it.
    pub fn stored_len(&self) -> usize {
        LENGTH_END + usize::try_from(i32_at(self.0, 8)).unwrap_or(0)
    }
    pub fn last_offset_delta(&self) -> i32 {
        i32_at(self.0, LAST_OFFSET_DELTA)
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.last_offset_delta())
    }
    pub fn record_count(&self) -> i32 {
        i32_at(self.0, RECORD_COUNT)
    }
    pub fn attributes(&self) -> i16 {
        i16_at(self.0, ATTRIBUTES)
    }
    pub fn max_timestamp(&self) -> i64 {
        i64_at(self.0, MAX_TIMESTAMP)
    }
    pub fn producer_id(&self) -> i64 {
        i64_at(self.0, PRODUCER_ID)
    }
    pub fn producer_epoch(&self) -> i16 {
        i16_at(self.0, PRODUCER_EPOCH)
    }
    pub fn base_sequence(&self) -> i32 {
        i32_at(self.0, BASE_SEQUENCE)
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & LOG_APPEND_TIME_BIT != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }
}

/// One keyed record of a stored batch, its fields sliced out of the batch (or the
/// decoder's output for a compressed batch): what the key index needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRecord {
    pub offset_delta: i64,
    /// The record's timestamp as consumers see it (the batch's for log-append time).
    pub timestamp: i64,
    pub key: Bytes,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// The keyed records of each of an append's batches, or why a batch's could not be read.
pub type BatchKeys = Vec<Result<Vec<KeyedRecord>, String>>;

/// The records of a stored batch that have a key; the others have nothing to index.
/// Uncompressed batches are read straight from the record encoding, each field of a keyed
/// record a slice of `batch`; a keyless record is read through (a malformed one is still
/// refused) with no slice taken and nothing allocated, the produce path's fast path, as
/// most records of a busy topic carry no key. Compressed ones go through the decoder.
pub fn keyed_records(batch: &Bytes) -> Result<Vec<KeyedRecord>, String> {
    let view = BatchView::new(batch).ok_or("short record batch")?;
    let log_append_time = view.is_log_append_time().then(|| view.max_timestamp());
    let mut records = if view.attributes() & COMPRESSION_BITS == 0 {
        uncompressed_keyed_records(batch).ok_or("malformed record")?
    } else {
        super::decode::records(batch)?
            .into_iter()
            .filter_map(|r| {
                Some(KeyedRecord {
                    offset_delta: r.offset - view.base_offset(),
                    timestamp: r.timestamp,
                    key: r.key?,
                    value: r.value,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| (Bytes::from(k.to_string()), v))
                        .collect(),
                })
            })
            .collect()
    };
    if let Some(timestamp) = log_append_time {
        for record in &mut records {
            record.timestamp = timestamp;
        }
    }
    Ok(records)
}

/// The keyed records of an uncompressed batch, `None` if any record is malformed. Every
/// record is read through; nothing of a keyless one is kept.
fn uncompressed_keyed_records(batch: &Bytes) -> Option<Vec<KeyedRecord>> {
    let view = BatchView::new(batch)?;
    let base_timestamp = i64_at(batch, BASE_TIMESTAMP);
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    for index in 0..view.record_count() {
        let (length, after_length) = varint(batch, at)?;
        let end = after_length.checked_add(usize::try_from(length).ok()?)?;
        // Fields are read within the record's own bytes.
        let record = batch.get(..end)?;
        at = end;
        let (timestamp_delta, next) = varint(record, after_length + 1)?; // after attributes
        let (offset_delta, next) = varint(record, next)?;
        let (key, next) = length_prefixed(record, next)?;
        let (value, next) = length_prefixed(record, next)?;
        let (header_count, mut next) = varint(record, next)?;
        let keep = key.is_some();
        let mut headers = Vec::with_capacity(if keep {
            header_count.clamp(0, 64) as usize
        } else {
            0
        });
        for _ in 0..header_count {
            let (name, after_name) = length_prefixed(record, next)?;
            let (value, after_value) = length_prefixed(record, after_name)?;
            let name = name?;
            if keep {
                headers.push((batch.slice(name), value.map(|v| batch.slice(v))));
            }
            next = after_value;
        }
        let Some(key) = key else {
            continue;
        };
        if records.is_empty() {
            // Sized once for the rest of the batch, which is usually keyed throughout; the
            // count is the producer's word, so no more than the bytes left can hold.
            let left = (view.record_count() - index) as usize;
            records.reserve_exact(left.min((batch.len() - at) / MIN_RECORD_BYTES + 1));
        }
        records.push(KeyedRecord {
            offset_delta,
            timestamp: base_timestamp.wrapping_add(timestamp_delta),
            key: batch.slice(key),
            value: value.map(|v| batch.slice(v)),
            headers,
        });
    }
    Some(records)
}

/// Where a varint-length-prefixed field at `at` lies (`None` for length -1, null), and the
/// position after it.
fn length_prefixed(bytes: &[u8], at: usize) -> Option<(Option<Range<usize>>, usize)> {
    let (length, start) = varint(bytes, at)?;
    match length {
        -1 => Some((None, start)),
        n if n >= 0 && start + n as usize <= bytes.len() => {
            Some((Some(start..start + n as usize), start + n as usize))
        }
        _ => None,
    }
}

/// A zigzag varint (Kafka's record fields) at `at`: its value and the position after it.
fn varint(bytes: &[u8], mut at: usize) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), at));
        }
    }
    None
}

/// A transaction marker: the control batch that ends a producer's transaction on one
/// partition. Its one record has key `version i16 = 0 | type i16` (0 abort, 1 commit) and
/// value `version i16 = 0 | coordinator epoch i32`, as Kafka's consumers expect.
pub fn control_batch(producer_id: i64, producer_epoch: i16, commit: bool, now_ms: i64) -> Bytes {
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(i16::from(commit));
    let mut value = BytesMut::with_capacity(6);
    value.put_i16(0);
    value.put_i32(0);
    let marker = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: now_ms,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Default::default(),
    };
    let mut batch = BytesMut::with_capacity(HEADER_LEN + 32);
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, std::iter::once(&marker), &options)
        .expect("an uncompressed one-record batch always encodes");
    batch.freeze()
}

/// Splits a produce request's `records` into batches, checking each one: complete, magic v2,
/// CRC-32C intact, a consistent record count, not a control batch, at most `max_batch_bytes`.
pub fn split_and_validate(
    records: &Bytes,
    max_batch_bytes: usize,
) -> Result<Vec<Bytes>, BatchError> {
    let mut batches = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        if rest.len() < LENGTH_END {
            return Err(BatchError::Corrupt("truncated batch header"));
        }
        let batch_length = i32_at(rest, 8);
        if batch_length < 0 {
            return Err(BatchError::Corrupt("negative batch length"));
        }
        let size = LENGTH_END + batch_length as usize;
        if rest.len() > MAGIC && rest[MAGIC] != 2 {
            return Err(BatchError::UnsupportedMagic(rest[MAGIC] as i8));
        }
        if size < HEADER_LEN || size > rest.len() {
            return Err(BatchError::Corrupt("batch length does not match the data"));
        }
        if size > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size,
                max: max_batch_bytes,
            });
        }
        let batch = &rest[..size];
        let stored_crc = u32::from_be_bytes(batch[CRC..ATTRIBUTES].try_into().expect("4 bytes"));
        if crc32c::crc32c(&batch[ATTRIBUTES..]) != stored_crc {
            return Err(BatchError::Corrupt("CRC-32C mismatch"));
        }
        let view = BatchView(batch);
        if view.record_count() <= 0 || view.last_offset_delta() != view.record_count() - 1 {
            return Err(BatchError::Corrupt(
                "record count does not match lastOffsetDelta",
            ));
        }
        if view.attributes() & CONTROL_BIT != 0 {
            return Err(BatchError::Corrupt(
                "clients may not produce control batches",
            ));
        }
        // Offsets are handed out by the count, and readers size what they decode by it. An
        // uncompressed batch must be exactly that many records, as Kafka reads it through
        // before taking it; consumers would otherwise fail on it or lose records. A
        // compressed one must count no more than what its records may decompress to: a
        // 70-byte batch claiming 2^27 records had the key index reserve 14 GB, which aborts
        // the process where memory is short.
        if view.attributes() & COMPRESSION_BITS == 0 {
            if !records_fill(&batch[HEADER_LEN..], view.record_count()) {
                return Err(BatchError::Corrupt(
                    "the records do not match the record count",
                ));
            }
        } else if view.record_count() as usize
            > super::decode::MAX_DECOMPRESSED_BYTES / MIN_RECORD_BYTES
        {
            return Err(BatchError::Corrupt(
                "more records counted than the batch can hold",
            ));
        }
        batches.push(records.slice(at..at + size));
        at += size;
    }
    if batches.is_empty() {
        return Err(BatchError::Corrupt("no record batch in produce data"));
    }
    Ok(batches)
}

/// Whether `records`, an uncompressed batch's after its header, are exactly `count`
/// records, each a varint length and then that many bytes (at least the 6 of a record with
/// no key, value or headers). A count the bytes cannot hold fails at the first record that
/// is not there.
fn records_fill(records: &[u8], count: i32) -> bool {
    let mut at = 0;
    for _ in 0..count {
        let Some((length, start)) = varint(records, at) else {
            return false;
        };
        match usize::try_from(length) {
            Ok(length) if length >= MIN_RECORD_BYTES - 1 && length <= records.len() - start => {
                at = start + length;
            }
            _ => return false,
        }
    }
    at == records.len()
}

/// A batch copied out of the request so the broker can assign its offset.
pub fn with_base_offset(batch: &[u8], base_offset: i64) -> Bytes {
    let mut owned = BytesMut::from(batch);
    owned[..8].copy_from_slice(&base_offset.to_be_bytes());
    owned.freeze()
}

/// Marks a batch as stamped with the broker's append time (topics with
/// `message.timestamp.type=LogAppendTime`): sets the attribute bit and `maxTimestamp`, which
/// consumers then use for every record, and recomputes the CRC those fields are under.
pub fn stamp_log_append_time(batch: &Bytes, now_ms: i64) -> Bytes {
    let mut owned = BytesMut::from(batch.as_ref());
    let attributes = i16_at(&owned, ATTRIBUTES) | LOG_APPEND_TIME_BIT;
    owned[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    owned[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    reseal(&mut owned);
    owned.freeze()
}

/// Recomputes the CRC-32C of a batch whose fields under it changed.
fn reseal(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[ATTRIBUTES..]);
    batch[CRC..ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::RecordBatchDecoder;

    pub(crate) fn encode_batch(values: &[&str], compression: Compression) -> Bytes {
        encode_records(values, compression, |_| true)
    }

    /// A batch of `values`, record `i` with key `k{i}` where `keyed(i)`, else none.
    fn encode_records(
        values: &[&str],
        compression: Compression,
        keyed: impl Fn(usize) -> bool,
    ) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: 1_000 + i as i64,
                key: keyed(i).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(v.to_string())),
                // No header, then a null one, then one with a value.
                headers: (0..i.min(1))
                    .map(|_| {
                        let value = (i > 1).then(|| Bytes::from(format!("v{i}")));
                        (StrBytes::from_static_str("h"), value)
                    })
                    .collect(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, records.iter(), &options).unwrap();
        buf.freeze()
    }

    #[test]
    fn valid_batches_split_and_keep_their_bytes() {
        let a = encode_batch(&["a", "b", "c"], Compression::None);
        let b = encode_batch(&["d"], Compression::Gzip);
        let both = Bytes::from([a.as_ref(), b.as_ref()].concat());
        let batches = split_and_validate(&both, 1 << 20).unwrap();
        assert_eq!(batches, vec![a.clone(), b]);
        let view = BatchView::new(&batches[0]).unwrap();
        assert_eq!(view.record_count(), 3);
        assert_eq!(view.max_timestamp(), 1_002);
    }

    #[test]
    fn rewriting_the_base_offset_keeps_the_batch_decodable() {
        let batch = encode_batch(&["x", "y"], Compression::Lz4);
        let moved = with_base_offset(&batch, 40);
        assert_eq!(BatchView::new(&moved).unwrap().last_offset(), 41);
        let mut buf = moved.clone();
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![40, 41]);
    }

    #[test]
    fn log_append_time_stamp_keeps_the_crc_valid() {
        let batch = encode_batch(&["x"], Compression::None);
        let stamped = stamp_log_append_time(&batch, 99_000);
        let checked = split_and_validate(&stamped, 1 << 20).unwrap();
        let view = BatchView::new(&checked[0]).unwrap();
        assert!(view.is_log_append_time());
        assert_eq!(view.max_timestamp(), 99_000);
    }

    #[test]
    fn bad_batches_are_rejected_with_a_reason() {
        let batch = encode_batch(&["a", "b"], Compression::None);
        let mut flipped = BytesMut::from(batch.as_ref());
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert_eq!(
            split_and_validate(&flipped.freeze(), 1 << 20),
            Err(BatchError::Corrupt("CRC-32C mismatch"))
        );
        assert!(matches!(
            split_and_validate(&batch.slice(..batch.len() - 3), 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
        assert!(matches!(
            split_and_validate(&batch.slice(..10), 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
        let mut old_magic = BytesMut::from(batch.as_ref());
        old_magic[MAGIC] = 1;
        assert_eq!(
            split_and_validate(&old_magic.freeze(), 1 << 20),
            Err(BatchError::UnsupportedMagic(1))
        );
        assert_eq!(
            split_and_validate(&batch, 20),
            Err(BatchError::TooLarge {
                size: batch.len(),
                max: 20
            })
        );
        assert!(split_and_validate(&Bytes::new(), 1 << 20).is_err());
    }

    /// `batch` claiming `count` records, its CRC-32C made to match.
    fn counting(batch: &[u8], count: i32) -> Bytes {
        let mut lying = BytesMut::from(batch);
        lying[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&count.to_be_bytes());
        lying[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&(count - 1).to_be_bytes());
        reseal(&mut lying);
        lying.freeze()
    }

    #[test]
    fn a_record_count_the_records_do_not_match_is_refused_and_sizes_nothing() {
        let batch = encode_batch(&["a", "bb", "ccc"], Compression::None);
        assert!(split_and_validate(&batch, 1 << 20).is_ok());
        let mismatch = Err(BatchError::Corrupt(
            "the records do not match the record count",
        ));
        for count in [1, 2, 4, i32::MAX] {
            assert_eq!(
                split_and_validate(&counting(&batch, count), 1 << 20),
                mismatch,
                "{count}"
            );
        }
        // Bytes after the last record, under a valid CRC.
        let mut padded = BytesMut::from(batch.as_ref());
        padded.extend_from_slice(&[0; 8]);
        let length = padded.len() as i32 - LENGTH_END as i32;
        padded[8..12].copy_from_slice(&length.to_be_bytes());
        reseal(&mut padded);
        assert_eq!(split_and_validate(&padded.freeze(), 1 << 20), mismatch);
        // A stored batch is read the same way: the key index's reads stop at the first
        // record that is not there, having reserved no more than the bytes allow.
        assert!(keyed_records(&counting(&batch, i32::MAX)).is_err());
        let compressed = encode_batch(&["a"], Compression::Gzip);
        assert!(split_and_validate(&counting(&compressed, 1 << 20), 1 << 20).is_ok());
        assert!(split_and_validate(&counting(&compressed, i32::MAX), 1 << 20).is_err());
    }

    #[test]
    fn keyed_records_match_the_decoder_for_every_codec() {
        for compression in [Compression::None, Compression::Lz4, Compression::Gzip] {
            let batch = with_base_offset(&encode_batch(&["a", "bb", "ccc"], compression), 40);
            let fields = keyed_records(&batch).unwrap();
            let mut buf = batch.clone();
            let decoded = RecordBatchDecoder::decode(&mut buf).unwrap().records;
            assert_eq!(fields.len(), 3);
            for (field, record) in fields.iter().zip(&decoded) {
                assert_eq!(40 + field.offset_delta, record.offset);
                assert_eq!(field.timestamp, record.timestamp);
                assert_eq!(Some(&field.key), record.key.as_ref());
                assert_eq!(field.value, record.value);
                assert_eq!(field.headers.len(), record.headers.len());
            }
            assert_eq!(fields[1].headers[0].0, Bytes::from("h"));
            assert_eq!(fields[1].headers[0].1, None);
            assert_eq!(fields[2].headers[0].1, Some(Bytes::from("v2")));

            let mixed = encode_records(&["a", "bb", "ccc", "dddd"], compression, |i| i % 2 == 1);
            let keyed = keyed_records(&mixed).unwrap();
            let got: Vec<_> = keyed
                .iter()
                .map(|r| (r.offset_delta, r.key.clone(), r.value.clone()))
                .collect();
            let expected = [(1, "k1", "bb"), (3, "k3", "dddd")]
                .map(|(d, k, v)| (d, Bytes::from(k), Some(Bytes::from(v))));
            assert_eq!(
                got, expected,
                "{compression:?}: keyless records are left out"
            );
        }
        let batch = encode_batch(&["a"], Compression::None);
        assert!(keyed_records(&batch.slice(..batch.len() - 2)).is_err());
        // A keyless record is checked as far as a keyed one: a value length past the
        // record's end is refused.
        let keyless = encode_records(&["a"], Compression::None, |_| false);
        let mut corrupt = BytesMut::from(keyless.as_ref());
        let value_length = HEADER_LEN
            + corrupt[HEADER_LEN..]
                .windows(3)
                .position(|w| w == [0x01, 0x02, b'a'])
                .expect("null key, then a value of length 1")
            + 1;
        corrupt[value_length] = 0x7e;
        assert!(keyed_records(&keyless).unwrap().is_empty());
        assert!(keyed_records(&corrupt.freeze()).is_err());
        let stamped = stamp_log_append_time(&batch, 77);
        assert_eq!(keyed_records(&stamped).unwrap()[0].timestamp, 77);
        assert_eq!(varint(&[0x01], 0), Some((-1, 1)));
        assert_eq!(varint(&[0xac, 0x02], 0), Some((150, 2)));
    }

    #[test]
    fn markers_are_valid_control_batches_clients_cannot_send() {
        let marker = control_batch(42, 3, true, 1_000);
        let view = BatchView::new(&marker).unwrap();
        assert!(view.is_control() && view.is_transactional());
        assert_eq!((view.producer_id(), view.producer_epoch()), (42, 3));
        assert_eq!(view.record_count(), 1);
        assert_eq!(
            split_and_validate(&marker, 1 << 20),
            Err(BatchError::Corrupt(
                "clients may not produce control batches"
            ))
        );
        let mut buf = marker.clone();
        let decoded = RecordBatchDecoder::decode(&mut buf).unwrap();
        let record = &decoded.records[0];
        assert!(record.control);
        assert_eq!(record.key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
    }
}
