//! SlateDB and object-store setup.
//!
//! Owns how a store location (a local folder, `memory://`, `file://`, `s3://`) becomes an
//! opened [`Db`], and which SlateDB settings Shale runs with. It knows nothing about Kafka.

pub mod direct;
pub mod heap;
pub mod journal;
pub mod keys;
pub mod slatedb_log;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use slatedb::admin::{Admin, AdminBuilder};
use slatedb::config::{
    CompactorOptions, GarbageCollectorDirectoryOptions, GarbageCollectorOptions, Settings,
};
use slatedb::prefix_extractor::{PrefixExtractor, PrefixTarget};
use slatedb::{BlockCachePolicy, CacheTarget, Db};

pub use direct::DirectFolder;
pub use journal::{Journaled, LocalFolder};

/// Where SlateDB's objects go, parsed from `--store` or `--data-dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A folder on the local disk, written with fsync so an acked write survives a host crash.
    Folder(PathBuf),
    /// Process memory: gone when the broker stops. For tests and demos.
    Memory,
    /// An S3 or S3-compatible bucket; credentials and endpoint come from `AWS_*` variables.
    S3 { bucket: String, prefix: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported store URL {0:?}: use memory://, file:///path or s3://bucket/prefix")]
    UnsupportedUrl(String),
    // `error`, not `source`: the message carries it, so a chain printed with `{:#}` names it once.
    #[error("cannot use data folder {path}: {error}")]
    Folder {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "cannot reach s3://{bucket}/{prefix}: {error}; check AWS_ENDPOINT (and \
         AWS_ALLOW_HTTP=true for an http:// one), AWS_REGION, the credentials and the bucket"
    )]
    Unreachable {
        bucket: String,
        prefix: String,
        error: String,
    },
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("SlateDB: {0}")]
    Slate(#[from] slatedb::Error),
}

impl StoreLocation {
    /// `store` (a URL) wins over `data_dir` when both are given.
    pub fn parse(store: Option<&str>, data_dir: &std::path::Path) -> Result<Self, StorageError> {
        let Some(store) = store else {
            return Ok(StoreLocation::Folder(data_dir.to_path_buf()));
        };
        let unsupported = || StorageError::UnsupportedUrl(store.to_string());
        let url = url::Url::parse(store).map_err(|_| unsupported())?;
        match url.scheme() {
            "memory" => Ok(StoreLocation::Memory),
            "file" => Ok(StoreLocation::Folder(
                url.to_file_path().map_err(|_| unsupported())?,
            )),
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(unsupported)?;
                Ok(StoreLocation::S3 {
                    bucket: bucket.to_string(),
                    prefix: url.path().trim_matches('/').to_string(),
                })
            }
            _ => Err(unsupported()),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Folder(path) => write!(f, "local folder {}", path.display()),
            StoreLocation::Memory => write!(f, "memory (not persisted)"),
            StoreLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// SlateDB tunables Shale exposes.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// How often SlateDB writes its WAL to the object store. Acks with acks=all wait for
    /// the next WAL write, so this bounds produce latency; shorter means more, smaller objects.
    pub flush_interval: Duration,
    /// How long after compaction (or a segment drain) SlateDB's garbage collector deletes
    /// the files no longer needed: retention reclaims space this much later.
    pub reclaim_delay: Duration,
    /// Bytes of recently written batch objects kept in memory for readers at the tail;
    /// `None` picks by store (see [`OpenedStore::recent_objects_bytes`]).
    pub recent_objects_bytes: Option<usize>,
    /// Batch objects in a local folder use direct I/O where the file system allows it.
    pub direct_io: bool,
    /// Appends of one partition from this size on go to batch objects; `None` picks by
    /// store (see [`OpenedStore::object_min_bytes`]).
    pub object_min_bytes: Option<usize>,
}

/// Recently written batch objects kept in memory on a remote store, unless configured:
/// there a tail reader would otherwise pay a GET per object. A local folder has the OS page
/// cache and the memory store is memory already, so they keep none.
const REMOTE_RECENT_OBJECTS_BYTES: usize = 64 << 20;

/// Appends of one partition from this size on go to batch objects in a local folder. Lower
/// than on a remote store because there the memtable's flushes stall the WAL: a 64 MiB table
/// written to the same disk holds up the small WAL writes queued behind it (10k msgs/s of
/// 1 KiB records: e2e p99.9 41-45 ms with 256 KiB, 9 ms with 16 KiB; docs/performance.md).
/// Not lower: each object is a write and a sync of its own before the append's WAL write
/// (a journal entry, or a file and two syncs), and the ~5 KB appends of 1k msgs/s (1 MB/s)
/// fill a memtable only about once a minute.
const LOCAL_OBJECT_MIN_BYTES: usize = 16 << 10;

/// The folder of batch objects, beside SlateDB's.
const BATCH_FOLDER: &str = "batches";

/// SlateDB's memtable is flushed to an L0 table of about this size.
const L0_TABLE_BYTES: usize = 32 << 20;

/// Writes wait once SlateDB holds this many bytes not yet in L0 tables (its count, which
/// the memtables' memory exceeds 4-5 times).
const MAX_UNFLUSHED_BYTES: usize = 64 << 20;

/// How long after SlateDB stops needing a WAL object in the journal it is deleted.
const JOURNALED_WAL_RECLAIM_DELAY: Duration = Duration::from_secs(2);

/// Appends of one partition from this size on go to batch objects on a remote store, where
/// each object is a PUT (paid for, and tens of ms) before the append's WAL write, and in
/// memory, where there is no disk to stall.
const REMOTE_OBJECT_MIN_BYTES: usize = 256 << 10;

/// How far a consumer's sequential read loads batch objects ahead of itself on a remote
/// store: a GET takes tens of ms, so one at a time caps a partition's backlog read at one
/// object per round trip (40-60 MB/s with 20 ms GETs; docs/performance.md). A local folder
/// reads at the disk's rate one read at a time (reads in parallel are no faster there), and
/// memory needs no waiting, so they load none ahead.
const REMOTE_OBJECT_PREFETCH_BYTES: usize = 8 << 20;

/// An opened store: the database, and the admin handle retention uses to drain dropped
/// segments.
pub struct OpenedStore {
    pub db: Db,
    pub admin: Admin,
    /// Where batch objects go: the same object store, beside SlateDB's files.
    pub objects: Arc<dyn ObjectStore>,
    pub objects_root: object_store::path::Path,
    /// Bytes of recently written batch objects to keep in memory.
    pub recent_objects_bytes: usize,
    /// Appends of one partition from this size on go to batch objects.
    pub object_min_bytes: usize,
    /// Bytes of batch objects a sequential reader loads ahead, several requests at once.
    pub object_prefetch_bytes: usize,
    /// Direct I/O for batch objects, in a local folder that allows it.
    pub direct: Option<DirectFolder>,
}

/// Routes every key to its segment (the first 4 bytes), so retention can drop whole segments.
struct SegmentExtractor;

impl PrefixExtractor for SegmentExtractor {
    /// Stable: SlateDB requires the same extractor for the life of the database.
    fn name(&self) -> &str {
        "shale-segment-u32be-v1"
    }

    fn prefix_len(&self, target: &PrefixTarget) -> Option<usize> {
        let (PrefixTarget::Point(bytes) | PrefixTarget::Prefix(bytes)) = target;
        (bytes.len() >= keys::segment_prefix_len()).then_some(keys::segment_prefix_len())
    }
}

/// How long a start waits for the bucket's first answer.
const S3_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Lists the store's prefix once, with few retries, so that a wrong endpoint, bucket or
/// credentials stop the start with a message naming the settings to check. Without it the
/// broker only logged SlateDB retrying its first request, for minutes.
async fn probe_bucket(bucket: &str, prefix: &str) -> Result<(), StorageError> {
    let unreachable = |error: String| StorageError::Unreachable {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        error,
    };
    let probe = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: S3_PROBE_TIMEOUT,
            ..object_store::RetryConfig::default()
        })
        .build()?;
    let prefix_path = object_store::path::Path::from(prefix);
    match tokio::time::timeout(
        S3_PROBE_TIMEOUT,
        probe.list_with_delimiter(Some(&prefix_path)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer in {} s",
            S3_PROBE_TIMEOUT.as_secs()
        ))),
    }
}

/// Opens (creating if needed) the database at `location`. A local folder is locked, and
/// fails to open while another broker holds it; elsewhere, opening fences any other broker
/// writing to the same location: its next write fails and it shuts down.
pub async fn open(
    location: &StoreLocation,
    settings: &StorageSettings,
) -> Result<OpenedStore, StorageError> {
    let mut direct = None;
    let (store, path): (Arc<dyn ObjectStore>, String) = match location {
        StoreLocation::Folder(dir) => {
            let in_folder = |error| StorageError::Folder {
                path: dir.clone(),
                error,
            };
            std::fs::create_dir_all(dir).map_err(in_folder)?;
            // Locked first: nothing, not even the probe, touches a folder another broker uses.
            let lock = journal::lock_folder(dir).map_err(in_folder)?;
            if settings.direct_io {
                direct = DirectFolder::probe(dir);
            }
            let journaled = Journaled {
                wal: object_store::path::Path::from("shale/wal"),
                moved: object_store::path::Path::from("shale").join(BATCH_FOLDER),
            };
            let folder =
                LocalFolder::open(dir, lock, journaled, direct.is_some()).map_err(in_folder)?;
            direct = direct.map(|d| d.with_journal(folder.journal()));
            (Arc::new(folder), "shale".to_string())
        }
        StoreLocation::Memory => (Arc::new(InMemory::new()), "shale".to_string()),
        StoreLocation::S3 { bucket, prefix } => {
            let store = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()?;
            let path = if prefix.is_empty() {
                "shale".to_string()
            } else {
                prefix.clone()
            };
            probe_bucket(bucket, &path).await?;
            (Arc::new(store), path)
        }
    };
    let reclaim = GarbageCollectorDirectoryOptions {
        interval: Some((settings.reclaim_delay / 2).max(Duration::from_millis(100))),
        min_age: settings.reclaim_delay,
        dry_run: false,
    };
    // The journal is read at every start, so its WAL objects go soon after SlateDB no
    // longer needs them (their data is in an L0 table): within seconds, not the delay
    // readers of compacted files get. One broker uses a locked folder; no other reader
    // follows its WAL.
    let wal_reclaim = if direct.is_some() {
        GarbageCollectorDirectoryOptions {
            interval: Some(JOURNALED_WAL_RECLAIM_DELAY / 2),
            min_age: JOURNALED_WAL_RECLAIM_DELAY,
            dry_run: false,
        }
    } else {
        reclaim
    };
    let slate_settings = Settings {
        flush_interval: Some(settings.flush_interval),
        // What is not flushed yet is held in memtables, at 4-5 times the bytes SlateDB
        // counts for it (skiplist nodes, a key and a value allocation per entry). Under
        // keyed produce (a key index entry per record) SlateDB's own bounds (64 MiB tables,
        // 1 GiB unflushed) let the broker grow by ~110 MB a second, to 2.1 GB after 6M
        // records and on; with these the benchmark's keyed run peaks at 0.35-0.4 GB, the
        // appends waiting on flushes instead (docs/performance.md). Batch objects keep record data out of
        // SlateDB, so unkeyed produce does not come near these bounds.
        l0_sst_size_bytes: L0_TABLE_BYTES,
        max_unflushed_bytes: MAX_UNFLUSHED_BYTES,
        // The compactor pins the files a compaction replaces for this long (for scans still
        // reading them); only then can the garbage collector delete them.
        compactor_options: Some(CompactorOptions {
            checkpoint_lifetime: settings.reclaim_delay,
            ..CompactorOptions::default()
        }),
        garbage_collector_options: Some(GarbageCollectorOptions {
            compacted_options: Some(reclaim),
            wal_options: Some(wal_reclaim),
            // Boundary files guard old manifests and compaction records against a stalled
            // second writer; they need a conditional overwrite, which a local folder cannot
            // do. With them on there, every collection after the first failed and the
            // manifests (one per memtable flush, ~1 a second under a trickle of small
            // appends) piled up for good. One broker writes a folder; it fences others.
            boundary_files_enabled: !matches!(location, StoreLocation::Folder(_)),
            ..GarbageCollectorOptions::default()
        }),
        ..Settings::default()
    };
    // Any SlateDB setting can be overridden with a `SLATEDB_` variable, for tuning.
    let slate_settings = Settings::from_env_with_default("SLATEDB_", slate_settings)?;
    let admin = AdminBuilder::new(path.clone(), store.clone()).build();
    let objects_root = object_store::path::Path::from(path.as_str()).join(BATCH_FOLDER);
    // Freshly flushed data blocks stay out of the block cache: under produce they only
    // displaced what readers had cached, and held RSS near the cache's 512 MiB for data
    // that tail consumers had already read from the memtable. Measured: peak RSS under
    // produce 1.12 GB -> 0.59 GB, produce unchanged, consume from the beginning of a
    // just-written log 25% slower (its blocks now come from disk, not from the cache).
    let cache_policy =
        BlockCachePolicy::default().with_flush_targets(&[CacheTarget::Index, CacheTarget::Filters]);
    let db = Db::builder(path, store.clone())
        .with_settings(slate_settings)
        .with_block_cache_policy(cache_policy)
        .with_segment_extractor(Arc::new(SegmentExtractor))
        .build()
        .await?;
    let recent_objects_bytes = settings.recent_objects_bytes.unwrap_or(match location {
        StoreLocation::S3 { .. } => REMOTE_RECENT_OBJECTS_BYTES,
        StoreLocation::Folder(_) | StoreLocation::Memory => 0,
    });
    let object_min_bytes = settings.object_min_bytes.unwrap_or(match location {
        StoreLocation::Folder(_) => LOCAL_OBJECT_MIN_BYTES,
        StoreLocation::S3 { .. } | StoreLocation::Memory => REMOTE_OBJECT_MIN_BYTES,
    });
    let object_prefetch_bytes = match location {
        StoreLocation::S3 { .. } => REMOTE_OBJECT_PREFETCH_BYTES,
        StoreLocation::Folder(_) | StoreLocation::Memory => 0,
    };
    Ok(OpenedStore {
        db,
        admin,
        objects: store,
        objects_root,
        recent_objects_bytes,
        object_min_bytes,
        object_prefetch_bytes,
        direct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn store_urls_parse_to_locations() {
        let dir = Path::new("./shale-data");
        assert_eq!(
            StoreLocation::parse(None, dir).unwrap(),
            StoreLocation::Folder(dir.to_path_buf())
        );
        assert_eq!(
            StoreLocation::parse(Some("memory://"), dir).unwrap(),
            StoreLocation::Memory
        );
        assert_eq!(
            StoreLocation::parse(Some("file:///var/lib/shale"), dir).unwrap(),
            StoreLocation::Folder(PathBuf::from("/var/lib/shale"))
        );
        assert_eq!(
            StoreLocation::parse(Some("s3://bucket/a/b/"), dir).unwrap(),
            StoreLocation::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        for bad in ["gs://bucket", "not a url", "s3:///nobucket"] {
            assert!(StoreLocation::parse(Some(bad), dir).is_err(), "{bad}");
        }
    }
}
