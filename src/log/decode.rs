//! Decoding the records of a stored batch, with decompression bounded.
//!
//! The broker stores batches as received and decodes their records only to index keys, to
//! compact a topic, to find an offset by time and to serve key streams. A compressed batch
//! says nothing trustworthy about its size once decompressed: a 1 MB gzip batch of zeros
//! holds ~1 GB, a zstd or snappy one far more, and the decoders of `kafka-protocol`
//! decompress the whole of it into memory. One such produce request took a broker from
//! 60 MB to 930 MB of RSS; a few at once would have had it killed. So every decode here
//! stops at [`MAX_DECOMPRESSED_BYTES`] and refuses the batch.

use std::io::Read;

use anyhow::{bail, Context};
use bytes::Bytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};

/// Most bytes one batch's records may take decompressed. Far above what clients send
/// (librdkafka caps a batch at `batch.size`, 1 MB, before compression; the Java producer's
/// batches are 16 KB compressed by default), and low enough that a few at once fit any
/// machine the broker runs on. Produce decodes under the log's append lock, so this also
/// bounds how long one hostile batch holds up other appends (~0.1 s of gzip).
pub const MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// The records of one stored batch (the v2 format), or why they cannot be read.
pub fn records(batch: &Bytes) -> Result<Vec<Record>, String> {
    let mut buf = batch.clone();
    RecordBatchDecoder::decode_with_custom_compression(
        &mut buf,
        Some(|data: &mut Bytes, compression| decompress(data, compression, MAX_DECOMPRESSED_BYTES)),
    )
    .map(|set| set.records)
    .map_err(|e| format!("{e:#}"))
}

/// `data` decompressed, failing past `limit` bytes without holding more than that.
fn decompress(data: &mut Bytes, compression: Compression, limit: usize) -> anyhow::Result<Bytes> {
    let decoded = match compression {
        Compression::None => return Ok(data.clone()),
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(&data[..]), limit),
        Compression::Lz4 => read_bounded(lz4::Decoder::new(&data[..])?, limit),
        Compression::Zstd => read_bounded(zstd::stream::read::Decoder::new(&data[..])?, limit),
        Compression::Snappy => snappy(data, limit),
    };
    decoded
        .map(Bytes::from)
        .with_context(|| format!("cannot decompress {compression:?} records"))
}

fn read_bounded(decoder: impl Read, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    decoder.take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        bail!("records decompress past {} MiB", limit >> 20);
    }
    Ok(out)
}

/// Kafka's snappy is the xerial framing (a 16-byte header, then blocks each with a 4-byte
/// length), or a bare snappy block from some clients, as the Java broker accepts. Each
/// block declares its decompressed length; the sum is checked before anything is allocated.
fn snappy(data: &[u8], limit: usize) -> anyhow::Result<Vec<u8>> {
    const MAGIC: &[u8] = b"\x82SNAPPY\x00";
    const HEADER_LEN: usize = 16;
    let Some(mut framed) = data.strip_prefix(MAGIC) else {
        return snappy_block(data, Vec::new(), limit);
    };
    framed = framed
        .get(HEADER_LEN - MAGIC.len()..)
        .context("short snappy header")?;
    let mut out = Vec::new();
    while !framed.is_empty() {
        let (length, rest) = framed
            .split_at_checked(4)
            .context("short snappy block length")?;
        let length = u32::from_be_bytes(length.try_into().expect("4 bytes")) as usize;
        let (block, rest) = rest
            .split_at_checked(length)
            .context("short snappy block")?;
        out = snappy_block(block, out, limit)?;
        framed = rest;
    }
    Ok(out)
}

/// Appends one snappy block's bytes to `out`, if they fit within `limit` in all.
fn snappy_block(block: &[u8], mut out: Vec<u8>, limit: usize) -> anyhow::Result<Vec<u8>> {
    let length = snap::raw::decompress_len(block)?;
    let start = out.len();
    if start.saturating_add(length) > limit {
        bail!("records decompress past {} MiB", limit >> 20);
    }
    out.resize(start + length, 0);
    snap::raw::Decoder::new().decompress(block, &mut out[start..])?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::tests::encode_batch;

    fn compressed(compression: Compression, plain: &[u8]) -> Bytes {
        use std::io::Write;
        match compression {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(plain).unwrap();
                e.finish().unwrap().into()
            }
            Compression::Lz4 => {
                let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
                e.write_all(plain).unwrap();
                e.finish().0.into()
            }
            Compression::Zstd => zstd::encode_all(plain, 1).unwrap().into(),
            Compression::Snappy => snap::raw::Encoder::new()
                .compress_vec(plain)
                .unwrap()
                .into(),
            Compression::None => Bytes::copy_from_slice(plain),
        }
    }

    #[test]
    fn every_codec_decompresses_within_the_limit_and_refuses_past_it() {
        let plain = vec![0u8; 1 << 20];
        for compression in [
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let mut data = compressed(compression, &plain);
            assert_eq!(decompress(&mut data, compression, 1 << 20).unwrap(), plain);
            let refused = decompress(&mut data, compression, (1 << 20) - 1).unwrap_err();
            assert!(
                format!("{refused:#}").contains("decompress past"),
                "{refused:#}"
            );
        }
    }

    #[test]
    fn framed_snappy_is_bounded_over_all_its_blocks() {
        let block = snap::raw::Encoder::new().compress_vec(&[7; 1000]).unwrap();
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        for _ in 0..3 {
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        assert_eq!(snappy(&framed, 3000).unwrap(), vec![7; 3000]);
        assert!(snappy(&framed, 2999).is_err());
        // A block claiming more than it holds is refused before its bytes are allocated.
        let mut lying = framed[..16].to_vec();
        lying.extend_from_slice(&5u32.to_be_bytes());
        lying.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(snappy(&lying, MAX_DECOMPRESSED_BYTES).is_err());
    }

    #[test]
    fn batches_of_every_codec_decode_to_their_records() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let batch = encode_batch(&["a", "bb", "ccc"], compression);
            let values: Vec<_> = records(&batch)
                .unwrap()
                .into_iter()
                .map(|r| r.value.unwrap())
                .collect();
            assert_eq!(values, ["a", "bb", "ccc"], "{compression:?}");
        }
    }
}
