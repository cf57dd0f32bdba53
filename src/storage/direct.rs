//! Batch objects in a local folder, written and read with direct I/O.
//!
//! Data written through the page cache lands in pages the kernel takes from free memory.
//! On a VM whose host backs guest memory on first touch and takes back free pages (a
//! Firecracker guest with free page reporting, as measured in docs/performance.md), that
//! runs at ~0.2 GB/s, while the disk itself takes 1.3 GB/s. Direct I/O writes large batch
//! objects from the produce request's own memory, and reads them into a few recycled
//! buffers, so neither a produce nor a backlog read needs new memory or a copy.
//!
//! The files are the ones `object_store`'s [`LocalFileSystem`] keeps at the same paths, so
//! listing and deleting them still go through the object store.
//!
//! Small objects are made durable in the folder's journal first and become files in the
//! background (see `journal`): a new file costs two syncs and file-system metadata before
//! the append it holds can be written, an entry in the journal one `fdatasync`.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use aligned_vec::{AVec, ConstAlign};
use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use super::journal::Journal;

/// Offsets, lengths and buffer addresses of direct I/O are multiples of this: the largest
/// logical block size in common use, so one value fits every disk.
pub(super) const ALIGN: usize = 4096;

/// Objects from this size on are written from the request's memory ([`write_in_place`]);
/// smaller ones are copied, which costs little, and costs them no leading zeros.
const IN_PLACE_MIN_BYTES: usize = 64 << 10;

/// Buffers are allocated in multiples of this, so objects of similar sizes share them.
const BUFFER_GRANULE: usize = 64 << 10;

/// Idle buffers kept for reuse, in bytes; more are freed.
const IDLE_BUFFER_BYTES: usize = 64 << 20;

pub(super) type Aligned = AVec<u8, ConstAlign<ALIGN>>;

/// The open flag for direct I/O. Other systems than Linux spell it differently or not at
/// all; there the probe refuses and objects go through the object store.
#[cfg(target_os = "linux")]
const O_DIRECT: Option<i32> = Some(libc::O_DIRECT);
#[cfg(not(target_os = "linux"))]
const O_DIRECT: Option<i32> = None;

/// A folder whose batch objects are written and read with `O_DIRECT`.
pub struct DirectFolder {
    /// Maps object paths to file paths exactly as the object store does.
    files: LocalFileSystem,
    buffers: Arc<BufferPool>,
    /// The folder's journal, which takes small objects first.
    journal: Option<Arc<Journal>>,
}

impl DirectFolder {
    /// A direct-I/O view of `dir`, or `None` if its file system refuses direct I/O (some FUSE
    /// file systems, tmpfs before Linux 6.6) or this is not Linux.
    pub fn probe(dir: &FsPath) -> Option<Self> {
        O_DIRECT?;
        let probe = dir.join(".shale-direct-io-probe");
        // A probe file left by a crash would fail the exclusive create below.
        let _ = std::fs::remove_file(&probe);
        let block = Aligned::from_slice(ALIGN, &[0; ALIGN]);
        let supported = write_direct(&probe, &[io::IoSlice::new(&block)], true);
        let _ = std::fs::remove_file(&probe);
        if let Err(e) = supported {
            tracing::info!(error = %e, "the data folder refuses direct I/O; batch objects go through the page cache");
            return None;
        }
        tracing::info!("batch objects are written and read with direct I/O");
        Some(DirectFolder {
            files: LocalFileSystem::new_with_prefix(dir).ok()?,
            buffers: Arc::new(BufferPool::default()),
            journal: None,
        })
    }

    /// Writes small objects to `journal` first.
    pub(super) fn with_journal(mut self, journal: Option<Arc<Journal>>) -> Self {
        self.journal = journal;
        self
    }

    /// Writes `parts`, one after the other, as the object at `path`; returns once it is
    /// durable, in the journal or as a new file (creating its folders). Returns where in the
    /// object the parts start: a file written in place from the request's memory starts
    /// with zeros (see [`write_in_place`]).
    pub async fn put(&self, path: &Path, parts: &[Bytes]) -> io::Result<u64> {
        if let Some(journal) = &self.journal {
            if let Some(put) = journal.put_object(path, parts).await {
                return put.map(|()| 0);
            }
        }
        let path = self.file_path(path)?;
        if let [whole] = parts {
            if whole.len() >= IN_PLACE_MIN_BYTES {
                let whole = whole.clone();
                return tokio::task::spawn_blocking(move || write_in_place(&path, &whole))
                    .await
                    .map_err(io::Error::other)?;
            }
        }
        let len: usize = parts.iter().map(Bytes::len).sum();
        let mut buffer = self.buffers.take(len);
        let parts = parts.to_vec();
        // The copy is done off the runtime's threads too: an object can be megabytes.
        tokio::task::spawn_blocking(move || {
            copy_parts(&mut buffer.bytes, &parts);
            write_new_file(&path, &mut buffer.bytes, len).map(|()| 0)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Reads `range` of the object at `path` into a buffer of its own, to be changed by the
    /// caller and then shared as [`Bytes`] with [`DirectSpan::freeze`].
    pub async fn get_range(&self, path: &Path, range: Range<u64>) -> io::Result<DirectSpan> {
        // The journal first: an object leaves it only once its file is durable.
        if let Some((segment, placed)) = self.journal.as_ref().and_then(|j| j.locate(path)) {
            if range.end > placed.size {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let at = placed.at;
            let read = self.read_span(move || Ok(segment), at + range.start..at + range.end);
            let span = read.await?;
            // Moved or deleted while it was read: its segment may have been reused under it.
            if self
                .journal
                .as_ref()
                .is_some_and(|j| j.holds(path, &placed))
            {
                return Ok(span);
            }
        }
        let path = self.file_path(path)?;
        let open = move || {
            positional::direct(std::fs::OpenOptions::new().read(true))
                .open(&path)
                .map(Arc::new)
        };
        self.read_span(open, range).await
    }

    /// Reads `range` of the file `open` gives, with a pooled buffer, off the runtime.
    async fn read_span(
        &self,
        open: impl FnOnce() -> io::Result<Arc<File>> + Send + 'static,
        range: Range<u64>,
    ) -> io::Result<DirectSpan> {
        let start = range.start & !(ALIGN as u64 - 1);
        let len = align_up((range.end - start) as usize);
        let mut buffer = self.buffers.take(len);
        let wanted = (range.end - start) as usize;
        tokio::task::spawn_blocking(move || {
            let file = open()?;
            let mut filled = 0;
            while filled < wanted {
                let read = positional::read_at(
                    &file,
                    &mut buffer.bytes[filled..len],
                    start + filled as u64,
                )?;
                filled += read;
                // Short of a whole block: the end of the file (a direct read could not go
                // on from there anyway).
                if read == 0 || filled % ALIGN != 0 {
                    break;
                }
            }
            if filled < wanted {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let skip = (range.start - start) as usize;
            Ok(DirectSpan {
                buffer,
                range: skip..wanted,
            })
        })
        .await
        .map_err(io::Error::other)?
    }

    fn file_path(&self, path: &Path) -> io::Result<PathBuf> {
        self.files
            .path_to_filesystem(path)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}

/// Part of a file read with direct I/O, in a pooled buffer.
pub struct DirectSpan {
    buffer: PooledBuffer,
    range: Range<usize>,
}

impl DirectSpan {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buffer.bytes[self.range.clone()]
    }

    /// Shares the span; its buffer goes back to the pool when the last clone is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for DirectSpan {
    fn as_ref(&self) -> &[u8] {
        &self.buffer.bytes[self.range.clone()]
    }
}

/// Copies `parts`, one after the other, to the start of `buffer`.
pub(super) fn copy_parts<'a>(buffer: &mut [u8], parts: impl IntoIterator<Item = &'a Bytes>) {
    let mut at = 0;
    for part in parts {
        buffer[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
}

pub(super) fn align_up(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// Writes the first `len` bytes of `buffer` to a new file at `path`, creating its folders,
/// and makes the file and its entry in its folder durable. `buffer` must have room for
/// `len` rounded up to the block size; the padding is zeroed and stays in the file (see
/// [`write_direct`]).
pub(super) fn write_new_file(path: &FsPath, buffer: &mut [u8], len: usize) -> io::Result<()> {
    create_file(path, buffer, len, true)?;
    sync_folder(path)
}

/// Writes `bytes` to a new file at `path` from where they are in memory, and makes the file
/// and its entry in its folder durable; returns where in the file they start.
///
/// Direct I/O needs the memory it writes from and the file offsets it writes to aligned
/// alike, so the whole blocks of memory `bytes` covers are written from where they are, to
/// the file offsets with the same alignment: `bytes` starts at their address modulo
/// [`ALIGN`], after that many zeros, and is followed by zeros to the end of its last block.
/// Only the partial blocks at either end are copied, into two blocks of their own,
/// zero-filled around. Copying a ~1 MB produce request's batch into an aligned buffer
/// instead took ~9% of the broker's time under produce (docs/performance.md).
fn write_in_place(path: &FsPath, bytes: &[u8]) -> io::Result<u64> {
    let lead = bytes.as_ptr() as usize % ALIGN;
    let head_len = (ALIGN - lead).min(bytes.len());
    let middle_len = (bytes.len() - head_len) / ALIGN * ALIGN;
    let (head, rest) = bytes.split_at(head_len);
    let (middle, tail) = rest.split_at(middle_len);
    // Zeroed. Small enough to come from memory the process has touched before, unlike the
    // pool's buffers (made in larger steps, for whole objects).
    let mut edges = Aligned::with_capacity(ALIGN, 2 * ALIGN);
    edges.resize(2 * ALIGN, 0);
    let (head_block, tail_block) = edges.split_at_mut(ALIGN);
    head_block[lead..lead + head.len()].copy_from_slice(head);
    tail_block[..tail.len()].copy_from_slice(tail);
    let mut blocks = vec![io::IoSlice::new(head_block), io::IoSlice::new(middle)];
    if !tail.is_empty() {
        blocks.push(io::IoSlice::new(tail_block));
    }
    create_file_from(path, &blocks, true)?;
    sync_folder(path)?;
    Ok(lead as u64)
}

/// Writes the first `len` bytes of `buffer` (with room for padding, as for
/// [`write_new_file`]) to a new file at `path`, creating its folders durably. The file is
/// durable only with `sync`; else that is the caller's to do (one [`sync_file_system`] for
/// many files).
pub(super) fn create_file(
    path: &FsPath,
    buffer: &mut [u8],
    len: usize,
    sync: bool,
) -> io::Result<()> {
    let padded = align_up(len);
    buffer[len..padded].fill(0);
    create_file_from(path, &[io::IoSlice::new(&buffer[..padded])], sync)
}

/// Writes `blocks` (aligned for direct I/O), one after the other, to a new file at `path`,
/// creating its folders durably; durable only with `sync`.
fn create_file_from(path: &FsPath, blocks: &[io::IoSlice<'_>], sync: bool) -> io::Result<()> {
    match write_direct(path, blocks, sync) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_folders(path.parent().unwrap_or(FsPath::new("/")))?;
            write_direct(path, blocks, sync)
        }
        written => written,
    }
}

/// Makes everything written to the file system that holds `dir` durable: file data and
/// metadata alike, in one commit of its journal.
#[cfg(target_os = "linux")]
pub(super) fn sync_file_system(dir: &FsPath) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let folder = File::open(dir)?;
    // SAFETY: syncfs on a descriptor this function owns; no memory is passed.
    match unsafe { libc::syncfs(folder.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Without Linux there is no direct I/O here, so no journal to call this.
#[cfg(not(target_os = "linux"))]
pub(super) fn sync_file_system(_: &FsPath) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Writes `blocks` (aligned for direct I/O) to a new file at `path`, and with `sync` makes
/// them durable. A file it created and could not finish (a full disk) is removed.
///
/// The zeros that pad an object to the block size stay in its file: readers read the ranges
/// its batches' locations give. Cutting them off made ext4 read the file's last block back
/// into the page cache to zero its tail, and write that page again at the sync: a read and a
/// write more per object, and `memset` at 1.6% of the broker's samples with small appends
/// (docs/performance.md).
fn write_direct(path: &FsPath, blocks: &[io::IoSlice<'_>], sync: bool) -> io::Result<()> {
    let file =
        positional::direct(std::fs::OpenOptions::new().write(true).create_new(true)).open(path)?;
    let written = positional::write_blocks_at(&file, &mut blocks.to_vec(), 0).and_then(|()| {
        if sync {
            file.sync_data()?;
        }
        Ok(())
    });
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Opening with `O_DIRECT` and positional reads and writes, in the form Unix has them. Other
/// systems compile the same calls, refusing them; the probe never gets that far there.
#[cfg(unix)]
pub(super) mod positional {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};

    pub fn direct(options: &mut OpenOptions) -> &mut OpenOptions {
        options.custom_flags(super::O_DIRECT.unwrap_or(0))
    }

    pub fn write_all_at(file: &File, buffer: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buffer, offset)
    }

    /// Writes `blocks`, one after the other, from `offset` on, in as few calls as the
    /// kernel takes them.
    pub fn write_blocks_at(
        file: &File,
        mut blocks: &mut [io::IoSlice<'_>],
        mut offset: u64,
    ) -> io::Result<()> {
        while !blocks.is_empty() {
            let written = rustix::io::pwritev(file, blocks, offset)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            offset += written as u64;
            io::IoSlice::advance_slices(&mut blocks, written);
        }
        Ok(())
    }

    pub fn read_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        file.read_at(buffer, offset)
    }
}

#[cfg(not(unix))]
pub(super) mod positional {
    use std::fs::{File, OpenOptions};
    use std::io;

    pub fn direct(options: &mut OpenOptions) -> &mut OpenOptions {
        options
    }

    pub fn write_all_at(_: &File, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub fn write_blocks_at(_: &File, _: &mut [io::IoSlice<'_>], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub fn read_at(_: &File, _: &mut [u8], _: u64) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Creates `dir` and the folders above it that are missing, each made durable in its
/// parent.
fn create_folders(dir: &FsPath) -> io::Result<()> {
    let missing: Vec<&FsPath> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        sync_folder(created)?;
    }
    Ok(())
}

/// Makes the entry of `path` in its folder durable.
pub(super) fn sync_folder(path: &FsPath) -> io::Result<()> {
    match path.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Aligned buffers, reused: a buffer the process has touched once costs nothing to touch
/// again, where a new one may cost a fault per page.
#[derive(Default)]
struct BufferPool {
    idle: Mutex<IdleBuffers>,
}

#[derive(Default)]
struct IdleBuffers {
    buffers: Vec<Aligned>,
    bytes: usize,
}

/// A buffer taken from the pool, given back when dropped. All of it is initialized, so
/// reads can fill it without clearing it first.
struct PooledBuffer {
    bytes: Aligned,
    pool: Arc<BufferPool>,
}

impl BufferPool {
    /// A buffer of at least `len` bytes rounded up to the block size: the smallest idle
    /// one that is not more than twice that, or a new one.
    fn take(self: &Arc<Self>, len: usize) -> PooledBuffer {
        let len = align_up(len.max(1));
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let best = idle
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= len && b.len() <= 2 * len)
                .min_by_key(|(_, b)| b.len())
                .map(|(index, _)| index);
            best.map(|index| {
                let buffer = idle.buffers.swap_remove(index);
                idle.bytes -= buffer.len();
                buffer
            })
        };
        let bytes = reused.unwrap_or_else(|| {
            let size = len.div_ceil(BUFFER_GRANULE) * BUFFER_GRANULE;
            let mut buffer = Aligned::with_capacity(ALIGN, size);
            buffer.resize(size, 0);
            buffer
        });
        PooledBuffer {
            bytes,
            pool: self.clone(),
        }
    }

    fn give_back(&self, buffer: Aligned) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.bytes + buffer.len() <= IDLE_BUFFER_BYTES {
            idle.bytes += buffer.len();
            idle.buffers.push(buffer);
        }
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        self.pool
            .give_back(std::mem::replace(&mut self.bytes, Aligned::new(ALIGN)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_of_any_length_read_back_from_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let Some(folder) = DirectFolder::probe(dir.path()) else {
            // Some FUSE file systems, tmpfs before Linux 6.6: the broker uses the page cache.
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        let parts = [
            Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<_>>()),
            Bytes::from(vec![7u8; 10_001]),
        ];
        let whole: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let path = Path::from("shale/batches/t/0/1");
        folder.put(&path, &parts).await.unwrap();
        let on_disk = std::fs::read(dir.path().join("shale/batches/t/0/1")).unwrap();
        assert_eq!(on_disk.len(), 16_384, "padded to the block size");
        assert_eq!(&on_disk[..15_001], whole, "the file holds the parts");
        assert!(on_disk[15_001..].iter().all(|b| *b == 0), "then zeros");
        for range in [
            0..15_001u64,
            4095..4097,
            4096..8192,
            5000..15_001,
            14_000..15_001,
        ] {
            let mut span = folder.get_range(&path, range.clone()).await.unwrap();
            span.as_mut_slice()[0] ^= 1;
            let read = span.freeze();
            let mut expected = whole[range.start as usize..range.end as usize].to_vec();
            expected[0] ^= 1;
            assert_eq!(read.as_ref(), expected.as_slice(), "{range:?}");
        }
        let past_end = folder.get_range(&path, 16_383..16_385).await;
        assert_eq!(
            past_end.err().map(|e| e.kind()),
            Some(io::ErrorKind::UnexpectedEof)
        );
        let again = folder.put(&path, &parts).await;
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists),
            "an object is written once"
        );
    }
}
