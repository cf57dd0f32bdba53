//! Any request frame a client may send: decoded as the broker decodes it and, for a
//! produce, its records split, validated and read for their keys as an indexed topic's
//! are. Nothing here may panic: each of these runs on what a client sent.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::RequestKind;
use libfuzzer_sys::fuzz_target;
use shale::log::batch;
use shale::protocol::{decode_request, Incoming};

fuzz_target!(|frame: &[u8]| {
    let Ok(Incoming::Request { body, .. }) = decode_request(Bytes::copy_from_slice(frame)) else {
        return;
    };
    let RequestKind::Produce(produce) = *body else {
        return;
    };
    let records = produce
        .topic_data
        .into_iter()
        .flat_map(|topic| topic.partition_data)
        .filter_map(|partition| partition.records);
    for records in records {
        if let Ok(batches) = batch::split_and_validate(&records, 1 << 20) {
            for batch in &batches {
                let _ = batch::keyed_records(batch);
            }
        }
    }
});
