//! One record batch as a producer may send it, with its header made to pass the produce
//! checks (length, magic, record count, CRC-32C), so that what follows the header (records,
//! compressed or not) is what varies: read for its keys (an indexed topic's produce, which
//! decompresses with a bound), stamped with the log append time, given a base offset.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shale::log::batch::{self, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    // Header fields by their offsets in the v2 batch format.
    let mut batch = data.to_vec();
    let length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes()); // batchLength
    batch[16] = 2; // magic
    batch[22] &= !(1 << 5); // attributes: not a control batch (clients may not send those)
    let mut count = i32::from_be_bytes(batch[57..61].try_into().unwrap()); // records count
    if count <= 0 {
        count = 1;
        batch[57..61].copy_from_slice(&count.to_be_bytes());
    }
    batch[23..27].copy_from_slice(&(count - 1).to_be_bytes()); // lastOffsetDelta
    let crc = crc32c::crc32c(&batch[21..]); // CRC-32C from the attributes on
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    let batch = Bytes::from(batch);
    let Ok(batches) = batch::split_and_validate(&batch, usize::MAX) else {
        return;
    };
    for batch in &batches {
        let _ = batch::keyed_records(batch);
        let _ = batch::stamp_log_append_time(batch, 1);
        let _ = batch::with_base_offset(batch, 42);
    }
});
