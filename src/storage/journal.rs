//! A local folder as an object store, with SlateDB's WAL objects and small batch objects
//! kept in a journal.
//!
//! SlateDB makes a write durable by putting a new WAL object, and `object_store`'s local
//! folder turns each put into new files: a staging file written and fsynced, linked into
//! place, then the folder fsynced. On ext4 that is two journal commits per put, each a chance
//! to queue behind other metadata; on this machine 1.4-2.8 ms at the p50, 4-9 ms at the
//! p99. Overwriting blocks of a file that already exists, with direct I/O, changes no
//! metadata: one `fdatasync`, 0.35 ms at the p50 (docs/performance.md). So WAL objects go
//! into journal segments, files written full of zeros ahead of time, and the folder serves
//! them from an index it rebuilds at start by reading the segments.
//!
//! Each object is one entry starting at a block boundary: a header (magic, checksum, the
//! segment's salt, write time, lengths), its path and its bytes. Puts are committed in
//! rounds (group commit): one task takes every put queued since its last round, writes
//! their entries, one write per segment, then `fdatasync`s each segment it wrote once, and
//! only then answers them. A round starts after the previous one is durable, so when a put
//! is answered every entry before it in its segment is whole, and a start reads a
//! segment's entries from its start up to the first that is not whole (a put a crash
//! interrupted, or never written) without losing an acknowledged one. Concurrent puts (the
//! partitions of one produce, several producers, WAL objects) share a sync instead of
//! queueing for one each.
//! A segment whose objects are all deleted has its first block zeroed, so a start reads
//! nothing from it, and is then reused under a new random salt, so entries left from its
//! previous use end that read as well. A lane's current segment is not cleared while the
//! lane writes to it, so objects deleted from it may come back after a restart: SlateDB
//! only replays WAL objects newer than its manifest names and its collector deletes the
//! old ones again; batch objects are moved to their files again and the orphan sweep at
//! start deletes those no log segment registers.
//!
//! Batch objects (see `log::batch_objects`) live as long as their log segment, so the
//! journal only holds the small ones until they are files: a produce waits for one
//! `fdatasync` of the journal rather than a new file's, and a task in the background writes
//! each such object to the file it would have had, durably, before forgetting its entry.
//! One it could not write (a full disk, an I/O error) stays in the journal and is tried
//! again, after a second and then longer. At start, the entries found are moved the same
//! way. The journal can hold an object and its file at once (reads take either); deleting
//! the object drops both.
//!
//! Objects the journal does not take go to the folder as files: everything else outside
//! the WAL folder, WAL objects larger than a quarter segment, batch objects larger than
//! [`MOVED_OBJECT_MAX_BYTES`] or while [`MOVE_BACKLOG_MAX_BYTES`] wait to move, and any put
//! while no segment has room. Reads, listings and deletes look in both, so a folder written
//! before the journal existed opens as it did.
//!
//! The folder is locked while a broker uses it: another broker on the same folder would not
//! see this one's journal, so it refuses to start instead of fencing this one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attributes, CopyMode, CopyOptions, Extensions, GetOptions, GetResult, GetResultPayload,
    ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, Result,
};

use tokio::sync::{mpsc, oneshot};

use super::direct::{
    align_up, copy_parts, create_file, positional, sync_file_system, sync_folder, Aligned, ALIGN,
};

/// Bytes per segment file. Small, because a start reads every segment that still holds
/// objects; SlateDB deletes WAL objects once their data is in an L0 table.
const SEGMENT_BYTES: usize = 4 << 20;

/// How many segments a start reads at once.
const SCANS_AT_ONCE: usize = 4;

/// Larger WAL objects are files: a segment should hold several.
const ENTRY_MAX_BYTES: usize = SEGMENT_BYTES / 4;

/// At most this many segments (64 MiB of disk); past them, WAL objects are files until
/// some are free again. 10 s of 8 committers and a 1k msgs/s producer kept 21-25 MB live.
const SEGMENTS_MAX: usize = 16;

/// Larger batch objects are written as files at once. They are written twice through the
/// journal, and the 1 MB appends of a producer at full speed would pay that in throughput;
/// the ~50 KB appends of 10k msgs/s are the ones whose latency the file's syncs set.
const MOVED_OBJECT_MAX_BYTES: usize = 256 << 10;

/// Bytes of batch objects waiting to become files (kept in memory for that) past which new
/// ones are written as files at once.
const MOVE_BACKLOG_MAX_BYTES: usize = 32 << 20;

/// Batch objects become files this often, many at a time: one sync of the file system then
/// makes all of them durable, where each file on its own costs two syncs (its data, its
/// folder) competing with the journal's for the disk.
const MOVE_INTERVAL: Duration = Duration::from_millis(100);

/// At most this many objects are moved per sync.
const MOVE_BATCH_MAX: usize = 512;

/// How long the mover waits before trying again the objects a round could not move (a full
/// disk, an I/O error): this after the first failed round, doubling after each one that
/// follows up to [`MOVE_RETRY_MAX`]. Until they move their entries pin their segments, so
/// without retries a passing error (a disk full until retention frees space) would leave
/// fewer segments for the journal until the next start.
const MOVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const MOVE_RETRY_MAX: Duration = Duration::from_secs(30);

/// At most this many puts are committed per round: a round's entries are copied into one
/// buffer per segment, at most a segment's bytes each.
const COMMIT_ROUND_MAX: usize = 64;

const MAGIC: [u8; 4] = *b"SHJ1";

/// Magic, checksum, salt, write time in ms, payload length, path length.
const HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 4 + 4;

/// No segment is written until this long after the journal opened: a start makes its own
/// WAL and manifest writes before it listens, and 4 MiB of zeros ahead of them on the disk
/// made it ~4 ms slower. Until then WAL objects are files.
const FIRST_SEGMENT_DELAY: Duration = Duration::from_millis(500);

/// Name of the lock file in the data folder (as Kafka's `log.dirs` have one).
const LOCK_FILE: &str = ".lock";

/// A local folder, locked for this process, with a journal for WAL objects and small batch
/// objects when the folder allows direct I/O.
#[derive(Debug)]
pub struct LocalFolder {
    files: Arc<LocalFileSystem>,
    journal: Option<Arc<Journal>>,
    /// Held (`flock`) until the process ends.
    _lock: File,
}

/// The folders whose objects the journal takes.
#[derive(Debug, Clone)]
pub struct Journaled {
    /// SlateDB's WAL.
    pub wal: Path,
    /// Batch objects, which move on to files.
    pub moved: Path,
}

impl LocalFolder {
    /// Opens `dir`, locked by `lock` (see [`lock_folder`]); with `journal`, reads the
    /// journal of the objects in `journaled`'s folders (direct I/O must have been probed to
    /// work in `dir`). Must be called within a Tokio runtime.
    pub fn open(dir: &FsPath, lock: File, journaled: Journaled, journal: bool) -> io::Result<Self> {
        let files = LocalFileSystem::new_with_prefix(dir).map_err(io::Error::other)?;
        let files = Arc::new(files.with_fsync(true));
        let journal = if journal {
            Some(Journal::open(
                &dir.join("journal"),
                journaled,
                files.clone(),
            )?)
        } else {
            None
        };
        Ok(LocalFolder {
            files,
            journal,
            _lock: lock,
        })
    }

    /// The journal, for writing and reading batch objects directly.
    pub(super) fn journal(&self) -> Option<Arc<Journal>> {
        self.journal.clone()
    }

    fn journal_for(&self, location: &Path) -> Option<&Arc<Journal>> {
        self.journal.as_ref().filter(|j| j.takes(location))
    }
}

/// Takes an exclusive `flock` on `dir`'s lock file, failing at once if another process has
/// it. The kernel releases it when the process ends, however it ends.
pub fn lock_folder(dir: &FsPath) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = io::Error::last_os_error();
            return Err(if error.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("another Shale broker is using it (it holds {LOCK_FILE})"),
                )
            } else {
                error
            });
        }
    }
    Ok(file)
}

impl std::fmt::Display for LocalFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalFolder({})", self.files)
    }
}

#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
    journaled: Journaled,
    /// Where moved objects' files go.
    files: Arc<LocalFileSystem>,
    opened: Instant,
    state: Mutex<State>,
    /// Puts for the committer (see the module's doc). Once queued, a put is written even if
    /// its caller stops waiting: a later entry must not be acknowledged behind one that
    /// may never be whole.
    commits: mpsc::UnboundedSender<Pending>,
    /// Batch objects to write to their files, in the order written.
    moves: mpsc::UnboundedSender<Move>,
    /// Bytes of the objects in `moves` kept in memory.
    backlog: AtomicUsize,
}

/// A put waiting for its round.
#[derive(Debug)]
struct Pending {
    location: Path,
    payload: PutPayload,
    /// Fails if the object exists (`PutMode::Create`).
    create: bool,
    /// `None` if no segment had room (the caller writes a file instead).
    done: oneshot::Sender<Option<Result<PutResult>>>,
}

/// The entries a round writes to one segment: contiguous, from `start`.
#[derive(Debug)]
struct Run {
    segment: usize,
    file: Arc<File>,
    salt: u64,
    start: usize,
    len: usize,
    entries: Vec<Pending>,
}

/// A batch object in the journal, to become a file.
#[derive(Debug)]
struct Move {
    location: Path,
    placed: Placed,
    /// Its bytes, when the put that wrote it left them; else they are read back.
    payload: Option<PutPayload>,
}

/// Which segments an entry goes to. Batch objects are moved out within about
/// [`MOVE_INTERVAL`], WAL objects are deleted seconds later; kept apart, a segment of batch
/// objects is free again soon after it is full, not when the last WAL object in it goes.
#[derive(Debug, Clone, Copy)]
enum Lane {
    Wal = 0,
    Moved = 1,
}

#[derive(Debug)]
struct State {
    segments: Vec<Segment>,
    /// The segment puts go to, by lane ([`Lane`]).
    current: [Option<usize>; 2],
    /// Segments holding no objects, to be (re)used.
    ready: Vec<usize>,
    /// Segments whose objects are all gone, to [`clear_emptied`] before they are ready.
    emptied: mpsc::UnboundedSender<usize>,
    /// A new segment file is being written.
    preparing: bool,
    next_file: u64,
    objects: BTreeMap<Path, Placed>,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    salt: u64,
    /// Where the next entry goes.
    end: usize,
    /// Objects in it, plus a put in progress.
    live: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Placed {
    segment: usize,
    /// Where the object's bytes start in the segment file.
    pub at: u64,
    pub size: u64,
    written: DateTime<Utc>,
}

impl Placed {
    fn meta(&self, location: &Path) -> ObjectMeta {
        ObjectMeta {
            location: location.clone(),
            last_modified: self.written,
            size: self.size,
            e_tag: None,
            version: None,
        }
    }
}

impl Journal {
    /// Reads the segments in `dir` (creating it if needed), indexes their objects and
    /// starts moving the batch objects among them to files.
    fn open(
        dir: &FsPath,
        journaled: Journaled,
        files: Arc<LocalFileSystem>,
    ) -> io::Result<Arc<Self>> {
        // Made durable with the first segment, off the start's path (see `create_segment`).
        std::fs::create_dir_all(dir)?;
        let mut numbered = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let number = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(number) = number {
                numbered.push((number, path));
            }
        }
        numbered.sort();
        let (emptied, to_clear) = mpsc::unbounded_channel();
        let mut state = State {
            segments: Vec::new(),
            current: [None; 2],
            ready: Vec::new(),
            emptied,
            preparing: false,
            next_file: numbered.last().map_or(0, |(n, _)| n + 1),
            objects: BTreeMap::new(),
        };
        let mut segment_files = Vec::with_capacity(numbered.len());
        let mut segment_paths = Vec::with_capacity(numbered.len());
        for (_, path) in numbered {
            let file = positional::direct(std::fs::OpenOptions::new().read(true).write(true))
                .open(&path)?;
            if file.metadata()?.len() != SEGMENT_BYTES as u64 {
                // A crash while it was being written: it never held an object.
                drop(file);
                std::fs::remove_file(&path)?;
                continue;
            }
            segment_files.push(file);
            segment_paths.push(path);
        }
        let scans = scan_segments(&segment_files);
        for ((file, path), scanned) in segment_files.into_iter().zip(segment_paths).zip(scans) {
            let index = state.segments.len();
            let Scanned {
                salt,
                end,
                objects,
                cut,
            } = scanned?;
            match cut {
                Some(Cut { at, whole_after: 0 }) => tracing::warn!(
                    segment = %path.display(),
                    at,
                    "a WAL journal entry is not whole, most likely a write a crash of the \
                     host interrupted (never acknowledged); the segment's objects end before it"
                ),
                Some(Cut { at, whole_after }) => tracing::error!(
                    segment = %path.display(),
                    at,
                    whole_after,
                    "a WAL journal entry is not whole and whole entries follow it; the \
                     segment's objects end before it and those entries are dropped. After a \
                     crash of the host they were never acknowledged; otherwise the segment \
                     was damaged and acknowledged writes in them are lost"
                ),
                None => {}
            }
            for (location, mut placed) in objects {
                placed.segment = index;
                let newer = state
                    .objects
                    .get(&location)
                    .is_none_or(|known| known.written <= placed.written);
                if newer {
                    state.objects.insert(location, placed);
                }
            }
            state.segments.push(Segment {
                file: Arc::new(file),
                salt,
                end,
                live: 0,
            });
        }
        // Objects found twice count once, in the segment that holds the newer copy.
        for placed in state.objects.values() {
            state.segments[placed.segment].live += 1;
        }
        state.ready = (0..state.segments.len())
            .filter(|&index| state.segments[index].live == 0)
            .collect();
        let found: Vec<Move> = state
            .objects
            .iter()
            .filter(|(location, _)| location.prefix_matches(&journaled.moved))
            .map(|(location, placed)| Move {
                location: location.clone(),
                placed: placed.clone(),
                payload: None,
            })
            .collect();
        if !state.objects.is_empty() {
            tracing::info!(
                objects = state.objects.len(),
                batch_objects = found.len(),
                segments = state.segments.len(),
                "WAL journal read"
            );
        }
        let (moves, to_move) = mpsc::unbounded_channel();
        for found in found {
            // The receiver is right here.
            let _ = moves.send(found);
        }
        let (commits, to_commit) = mpsc::unbounded_channel();
        let journal = Arc::new(Journal {
            dir: dir.to_path_buf(),
            journaled,
            files,
            opened: Instant::now(),
            state: Mutex::new(state),
            commits,
            moves,
            backlog: AtomicUsize::new(0),
        });
        tokio::spawn(move_objects(Arc::downgrade(&journal), to_move));
        tokio::spawn(commit_puts(Arc::downgrade(&journal), to_commit));
        tokio::spawn(clear_emptied(Arc::downgrade(&journal), to_clear));
        Ok(journal)
    }

    /// Whether `location` is in a folder whose objects the journal takes.
    fn takes(&self, location: &Path) -> bool {
        location.prefix_matches(&self.journaled.wal) || self.moves_on(location)
    }

    /// Whether `location` is a batch object, to be moved to a file.
    fn moves_on(&self, location: &Path) -> bool {
        location.prefix_matches(&self.journaled.moved)
    }

    /// Writes `parts` as the batch object at `location`, durably; `None` if the journal
    /// does not take it (the caller writes a file instead).
    pub(super) async fn put_object(
        &self,
        location: &Path,
        parts: &[Bytes],
    ) -> Option<io::Result<()>> {
        // Checked before the parts are collected: large objects are the throughput path.
        if !self.has_room_to_move(parts.iter().map(Bytes::len).sum()) {
            return None;
        }
        let payload: PutPayload = parts.iter().cloned().collect();
        let put = self.put(location, payload, &PutMode::Overwrite).await?;
        Some(put.map(|_| ()).map_err(io::Error::other))
    }

    /// Whether a batch object of `size` bytes goes through the journal (see
    /// [`MOVED_OBJECT_MAX_BYTES`] and [`MOVE_BACKLOG_MAX_BYTES`]).
    fn has_room_to_move(&self, size: usize) -> bool {
        size <= MOVED_OBJECT_MAX_BYTES
            && self.backlog.load(Ordering::Acquire) + size <= MOVE_BACKLOG_MAX_BYTES
    }

    /// Where the object at `location` is, if the journal holds it: its segment file, to be
    /// read with direct I/O, and its place there, for [`Journal::holds`] once read.
    pub(super) fn locate(&self, location: &Path) -> Option<(Arc<File>, Placed)> {
        let state = self.lock();
        let placed = state.objects.get(location)?.clone();
        Some((state.segments[placed.segment].file.clone(), placed))
    }

    /// Whether the object at `location` is still where `placed` says: not deleted or moved
    /// (and so its segment not reused) since [`Journal::locate`].
    pub(super) fn holds(&self, location: &Path, placed: &Placed) -> bool {
        self.lock().objects.get(location) == Some(placed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change to the state is made whole under the lock, between awaits.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `payload` as the object at `location`, durably; `None` if the journal does
    /// not take it or no segment has room for it (the caller writes a file instead).
    async fn put(
        &self,
        location: &Path,
        payload: PutPayload,
        mode: &PutMode,
    ) -> Option<Result<PutResult>> {
        let size = payload.content_length();
        let fits = if self.moves_on(location) {
            self.has_room_to_move(size)
        } else {
            size <= ENTRY_MAX_BYTES
        };
        if !fits || matches!(mode, PutMode::Update(_)) {
            return None;
        }
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            location: location.clone(),
            payload,
            create: matches!(mode, PutMode::Create),
            done,
        };
        // No committer: the runtime is shutting down.
        self.commits.send(pending).ok()?;
        match answer.await {
            Ok(answer) => answer,
            Err(_) => Some(Err(store_error(io::Error::other(
                "the WAL journal's round failed",
            )))),
        }
    }

    /// Commits one round of puts (see the module's doc).
    async fn commit(self: &Arc<Self>, round: Vec<Pending>) {
        let written = Utc::now();
        let runs = self.reserve(round);
        if runs.is_empty() {
            return;
        }
        let reserved: Vec<(usize, usize)> =
            runs.iter().map(|r| (r.segment, r.entries.len())).collect();
        let written_ms = written.timestamp_millis();
        let committed = tokio::task::spawn_blocking(move || {
            let writes: Vec<io::Result<()>> =
                runs.iter().map(|run| run.write(written_ms)).collect();
            let synced: Vec<io::Result<()>> = runs
                .iter()
                .zip(writes)
                .map(|(run, write)| write.and_then(|()| run.file.sync_data()))
                .collect();
            (runs, synced)
        })
        .await;
        let mut state = self.lock();
        let (runs, synced) = match committed {
            Ok(committed) => committed,
            Err(e) => {
                // The round's answers are gone with it, so its puts fail; whatever follows
                // them in their segments would not be found at start.
                tracing::error!(error = %e, "a WAL journal round failed");
                for (segment, entries) in reserved {
                    state.detach(segment);
                    for _ in 0..entries {
                        state.release(segment);
                    }
                }
                return;
            }
        };
        for (run, synced) in runs.into_iter().zip(synced) {
            if let Err(e) = synced {
                state.detach(run.segment);
                for pending in run.entries {
                    state.release(run.segment);
                    let failed = io::Error::new(e.kind(), e.to_string());
                    let _ = pending.done.send(Some(Err(store_error(failed))));
                }
                continue;
            }
            let mut at = run.start;
            for pending in run.entries {
                let Pending {
                    location,
                    payload,
                    done,
                    ..
                } = pending;
                let size = payload.content_length();
                let placed = Placed {
                    segment: run.segment,
                    at: (at + HEADER_BYTES + location.as_ref().len()) as u64,
                    size: size as u64,
                    written,
                };
                at += padded_len(location.as_ref(), size);
                state.objects.insert(location.clone(), placed.clone());
                if self.moves_on(&location) {
                    self.backlog.fetch_add(size, Ordering::AcqRel);
                    let queued = self.moves.send(Move {
                        location,
                        placed,
                        payload: Some(payload),
                    });
                    if queued.is_err() {
                        // No mover (the runtime is shutting down): the next start moves it.
                        self.backlog.fetch_sub(size, Ordering::AcqRel);
                    }
                }
                let _ = done.send(Some(Ok(PutResult {
                    e_tag: None,
                    version: None,
                    extensions: Extensions::default(),
                })));
            }
        }
    }

    /// Places a round's puts in segments, in the order they came, grouped by segment;
    /// answers at once those that exist already (`create`) or find no room.
    fn reserve(self: &Arc<Self>, round: Vec<Pending>) -> Vec<Run> {
        let mut state = self.lock();
        let mut runs: Vec<Run> = Vec::new();
        for pending in round {
            let location = &pending.location;
            if pending.create {
                let on_disk = self
                    .files
                    .path_to_filesystem(location)
                    .is_ok_and(|path| path.exists());
                let in_round = runs
                    .iter()
                    .flat_map(|run| &run.entries)
                    .any(|other| other.location == *location);
                if on_disk || in_round || state.objects.contains_key(location) {
                    let _ = pending
                        .done
                        .send(Some(Err(object_store::Error::AlreadyExists {
                            path: location.to_string(),
                            source: "the WAL object exists".into(),
                        })));
                    continue;
                }
            }
            let padded = padded_len(location.as_ref(), pending.payload.content_length());
            let lane = if self.moves_on(location) {
                Lane::Moved
            } else {
                Lane::Wal
            };
            let room = state.room_for(lane, padded);
            self.prepare_if_short(&mut state);
            let Some(segment) = room else {
                let _ = pending.done.send(None);
                continue;
            };
            let room = &mut state.segments[segment];
            let at = room.end;
            room.end += padded;
            room.live += 1;
            let run = match runs.iter().position(|run| run.segment == segment) {
                Some(index) => &mut runs[index],
                None => {
                    runs.push(Run {
                        segment,
                        file: room.file.clone(),
                        salt: room.salt,
                        start: at,
                        len: 0,
                        entries: Vec::new(),
                    });
                    runs.last_mut().expect("just pushed")
                }
            };
            // Nothing else places entries while the state is locked.
            debug_assert_eq!(run.start + run.len, at);
            run.len += padded;
            run.entries.push(pending);
        }
        runs
    }

    /// Starts writing a new segment file if none is ready and the cap allows one.
    fn prepare_if_short(self: &Arc<Self>, state: &mut State) {
        if !state.ready.is_empty() || state.preparing || state.segments.len() >= SEGMENTS_MAX {
            return;
        }
        state.preparing = true;
        let number = state.next_file;
        state.next_file += 1;
        let journal = self.clone();
        let wait = (self.opened + FIRST_SEGMENT_DELAY).saturating_duration_since(Instant::now());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let dir = journal.dir.clone();
            let prepared = tokio::task::spawn_blocking(move || create_segment(&dir, number))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
            let mut state = journal.lock();
            state.preparing = false;
            match prepared {
                Ok(file) => {
                    let index = state.segments.len();
                    state.segments.push(Segment {
                        file: Arc::new(file),
                        salt: 0,
                        end: 0,
                        live: 0,
                    });
                    state.ready.push(index);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not add a WAL journal segment; WAL objects are files meanwhile")
                }
            }
        });
    }

    /// Forgets the object at `location`; false if the journal does not hold it.
    fn delete(&self, location: &Path) -> bool {
        let mut state = self.lock();
        match state.objects.remove(location) {
            Some(placed) => {
                state.release(placed.segment);
                true
            }
            None => false,
        }
    }

    async fn get(&self, location: &Path, options: &GetOptions) -> Option<Result<GetResult>> {
        let (placed, file) = {
            let state = self.lock();
            let placed = state.objects.get(location)?.clone();
            let file = state.segments[placed.segment].file.clone();
            (placed, file)
        };
        let conditional = options.if_match.is_some()
            || options.if_none_match.is_some()
            || options.if_modified_since.is_some()
            || options.if_unmodified_since.is_some()
            || options.version.is_some();
        if conditional {
            return Some(Err(object_store::Error::NotImplemented {
                operation: "conditional get of a WAL object".into(),
                implementer: "the WAL journal".into(),
            }));
        }
        let meta = placed.meta(location);
        let range = match &options.range {
            Some(range) => match range.as_range(placed.size) {
                Ok(range) => range,
                Err(e) => return Some(Err(store_error(io::Error::other(e)))),
            },
            None => 0..placed.size,
        };
        let bytes = if options.head || range.is_empty() {
            Bytes::new()
        } else {
            let start = placed.at + range.start;
            let len = (range.end - range.start) as usize;
            match tokio::task::spawn_blocking(move || read_span(&file, start, len)).await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => return Some(Err(store_error(e))),
                Err(e) => return Some(Err(store_error(io::Error::other(e)))),
            }
        };
        // Deleted while it was read: its segment may have been reused under the read.
        if self.lock().objects.get(location) != Some(&placed) {
            return Some(Err(not_found(location)));
        }
        Some(Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes: Attributes::default(),
            extensions: Extensions::default(),
        }))
    }

    /// The objects whose path starts with `prefix`.
    fn list(&self, prefix: Option<&Path>) -> Vec<ObjectMeta> {
        self.lock()
            .objects
            .iter()
            .filter(|(location, _)| prefix.is_none_or(|p| location.prefix_matches(p)))
            .map(|(location, placed)| placed.meta(location))
            .collect()
    }

    /// Writes batch objects from the journal to their files, makes them durable with one
    /// sync of the file system, then forgets their entries. Objects deleted meanwhile have
    /// their files removed again. Returns the jobs that failed, to try again, their bytes
    /// left in the journal to read back from.
    async fn move_out(&self, jobs: Vec<Move>) -> Vec<Move> {
        let mut writes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Some((segment, _)) = self.locate(&job.location).filter(|(_, p)| *p == job.placed)
            else {
                continue;
            };
            match self.files.path_to_filesystem(&job.location) {
                Ok(path) => writes.push((job, segment, path)),
                Err(e) => {
                    tracing::error!(error = %e, location = %job.location, "a batch object in the journal has no file path; it stays there")
                }
            }
        }
        if writes.is_empty() {
            return Vec::new();
        }
        let folder = self.dir.clone();
        let moved = tokio::task::spawn_blocking(move || {
            let mut written = Vec::with_capacity(writes.len());
            let mut failed = Vec::new();
            for (job, segment, path) in writes {
                match write_moved(&job, &segment, &path) {
                    Ok(()) => written.push((job, path)),
                    // The first failure of a round is enough to see why; the mover counts them.
                    Err(e) if failed.is_empty() => {
                        tracing::warn!(error = %e, location = %job.location, "could not move a batch object from the journal to its file");
                        failed.push(job);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, location = %job.location, "could not move a batch object from the journal to its file");
                        failed.push(job);
                    }
                }
            }
            match sync_file_system(&folder) {
                Ok(()) => (written, failed),
                Err(e) => {
                    tracing::warn!(error = %e, "could not sync the batch objects moved from the journal");
                    failed.extend(written.into_iter().map(|(job, _)| job));
                    (Vec::new(), failed)
                }
            }
        })
        .await;
        let (written, failed) = match moved {
            Ok(moved) => moved,
            Err(e) => {
                // The jobs went with the task; a start moves their entries.
                tracing::error!(error = %e, "a round of moves from the journal failed");
                return Vec::new();
            }
        };
        let failed = failed
            .into_iter()
            .map(|job| Move {
                payload: None,
                ..job
            })
            .collect();
        let deleted: Vec<PathBuf> = {
            let mut state = self.lock();
            written
                .into_iter()
                .filter_map(|(job, path)| {
                    if state.objects.get(&job.location) != Some(&job.placed) {
                        return Some(path);
                    }
                    state.objects.remove(&job.location);
                    state.release(job.placed.segment);
                    None
                })
                .collect()
        };
        if !deleted.is_empty() {
            let removed = tokio::task::spawn_blocking(move || {
                for path in deleted {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(error = %e, path = %path.display(), "could not remove the file of a deleted batch object");
                    }
                }
            })
            .await;
            if let Err(e) = removed {
                tracing::warn!(error = %e, "could not remove the files of deleted batch objects; the orphan sweep at start does");
            }
        }
        failed
    }
}

impl Run {
    /// Writes the run's entries, with one write, not yet durable.
    fn write(&self, written_ms: i64) -> io::Result<()> {
        let mut buffer = Aligned::with_capacity(ALIGN, self.len);
        buffer.resize(self.len, 0);
        let mut at = 0;
        for pending in &self.entries {
            let path = pending.location.as_ref();
            at += encode_entry(
                &mut buffer[at..],
                self.salt,
                written_ms,
                path,
                &pending.payload,
            );
        }
        positional::write_all_at(&self.file, &buffer, self.start as u64)
    }
}

/// Writes `job`'s object to a new file at `path`, not yet durable; its bytes come from the
/// job or else from `segment`.
fn write_moved(job: &Move, segment: &File, path: &FsPath) -> io::Result<()> {
    let size = job.placed.size as usize;
    let mut buffer = Aligned::with_capacity(ALIGN, align_up(size));
    buffer.resize(align_up(size), 0);
    match &job.payload {
        Some(payload) => copy_parts(&mut buffer, payload.iter()),
        None => buffer[..size].copy_from_slice(&read_span(segment, job.placed.at, size)?),
    }
    match create_file(path, &mut buffer, size, false) {
        // A file left by a move a crash cut short, or by one made before a restart brought
        // the entry back (see the module's doc). Removed only when found: looking for it
        // first was an `unlink` per object, in a folder of thousands.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            create_file(path, &mut buffer, size, false)
        }
        created => created,
    }
}

/// Commits puts as they come, a round at a time (see the module's doc), until the journal
/// is dropped.
async fn commit_puts(journal: Weak<Journal>, mut puts: mpsc::UnboundedReceiver<Pending>) {
    let mut round = Vec::new();
    while puts.recv_many(&mut round, COMMIT_ROUND_MAX).await > 0 {
        let Some(journal) = journal.upgrade() else {
            return;
        };
        journal.commit(std::mem::take(&mut round)).await;
    }
}

/// Moves batch objects out of the journal as they come, a batch every [`MOVE_INTERVAL`]
/// (after a failed round, the ones that failed again after [`MOVE_RETRY_FIRST`] or
/// longer), until the journal is dropped.
async fn move_objects(journal: Weak<Journal>, mut moves: mpsc::UnboundedReceiver<Move>) {
    let mut jobs = Vec::new();
    let mut retry_in = MOVE_RETRY_FIRST;
    loop {
        if jobs.is_empty() {
            if moves.recv_many(&mut jobs, MOVE_BATCH_MAX).await == 0 {
                return;
            }
        } else {
            // Jobs to try again go first, with whatever came meanwhile.
            while jobs.len() < MOVE_BATCH_MAX {
                let Ok(job) = moves.try_recv() else {
                    break;
                };
                jobs.push(job);
            }
        }
        let Some(journal) = journal.upgrade() else {
            return;
        };
        let kept: usize = jobs
            .iter()
            .filter_map(|job| job.payload.as_ref().map(PutPayload::content_length))
            .sum();
        jobs = journal.move_out(std::mem::take(&mut jobs)).await;
        journal.backlog.fetch_sub(kept, Ordering::AcqRel);
        drop(journal);
        if jobs.is_empty() {
            retry_in = MOVE_RETRY_FIRST;
            tokio::time::sleep(MOVE_INTERVAL).await;
        } else {
            tracing::warn!(objects = jobs.len(), retry_in = ?retry_in, "batch objects could not move from the journal to their files; trying again");
            tokio::time::sleep(retry_in).await;
            retry_in = (retry_in * 2).min(MOVE_RETRY_MAX);
        }
    }
}

impl State {
    /// The segment the next entry of `padded` bytes in `lane` goes to, moving on to a ready
    /// one when the lane's current one is full.
    fn room_for(&mut self, lane: Lane, padded: usize) -> Option<usize> {
        let lane = lane as usize;
        if let Some(current) = self.current[lane] {
            if self.segments[current].end + padded <= SEGMENT_BYTES {
                return Some(current);
            }
            self.current[lane] = None;
            if self.segments[current].live == 0 {
                self.empty(current);
            }
        }
        let next = self.ready.pop()?;
        let segment = &mut self.segments[next];
        segment.salt = new_salt();
        segment.end = 0;
        self.current[lane] = Some(next);
        Some(next)
    }

    /// Stops writing to `segment`: an entry in it failed, and what follows it would not
    /// be found at start.
    fn detach(&mut self, segment: usize) {
        for current in &mut self.current {
            if *current == Some(segment) {
                *current = None;
            }
        }
    }

    /// One object (or put) fewer in `segment`; an empty segment that no lane writes to is
    /// cleared for reuse.
    fn release(&mut self, segment: usize) {
        let held = &mut self.segments[segment];
        held.live -= 1;
        if held.live == 0 && !self.current.contains(&Some(segment)) {
            self.empty(segment);
        }
    }

    /// Hands `segment`, which holds no objects and takes no puts, to [`clear_emptied`].
    fn empty(&mut self, segment: usize) {
        // The receiver lives as long as the journal.
        let _ = self.emptied.send(segment);
    }
}

/// Zeroes the first block of each segment whose objects are all gone, then makes it ready
/// for reuse. Without that a start read the segment's entries again and found its deleted
/// objects: WAL objects SlateDB had to delete a second time, and batch objects moved back
/// to files for the orphan sweep to delete. Cleared, it reads as empty, and a restart
/// reads only the segments that hold objects, and the lanes' current ones (a lane keeps
/// writing to its segment after the objects in it are gone, so those stay until it moves
/// on). Not synced: a crash before the block reaches the disk leaves the segment as it was
/// before (the reuse that follows writes and syncs its own entries over it).
async fn clear_emptied(journal: Weak<Journal>, mut emptied: mpsc::UnboundedReceiver<usize>) {
    let zeros = Arc::new(Aligned::from_slice(ALIGN, &[0; ALIGN]));
    while let Some(segment) = emptied.recv().await {
        let Some(journal) = journal.upgrade() else {
            return;
        };
        let file = journal.lock().segments[segment].file.clone();
        let zeros = zeros.clone();
        let cleared =
            tokio::task::spawn_blocking(move || positional::write_all_at(&file, &zeros, 0))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
        if let Err(e) = cleared {
            tracing::warn!(error = %e, segment, "could not clear an emptied WAL journal segment; a start reads its deleted objects again");
        }
        journal.lock().ready.push(segment);
    }
}

fn new_salt() -> u64 {
    let mut salt = [0; 8];
    // A salt only has to differ from the segment's previous one; the clock is a fallback.
    if getrandom::fill(&mut salt).is_err() {
        salt = (Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64).to_le_bytes();
    }
    u64::from_le_bytes(salt) | 1
}

/// Writes one entry at the start of `entry` (zeroed, at least its padded length); returns
/// that length, whole blocks.
fn encode_entry(
    entry: &mut [u8],
    salt: u64,
    written_ms: i64,
    path: &str,
    payload: &PutPayload,
) -> usize {
    let size = payload.content_length();
    let end = HEADER_BYTES + path.len() + size;
    entry[0..4].copy_from_slice(&MAGIC);
    entry[8..16].copy_from_slice(&salt.to_le_bytes());
    entry[16..24].copy_from_slice(&written_ms.to_le_bytes());
    entry[24..28].copy_from_slice(&(size as u32).to_le_bytes());
    entry[28..32].copy_from_slice(&(path.len() as u32).to_le_bytes());
    entry[HEADER_BYTES..HEADER_BYTES + path.len()].copy_from_slice(path.as_bytes());
    copy_parts(&mut entry[HEADER_BYTES + path.len()..], payload.iter());
    let checksum = crc32c::crc32c(&entry[8..end]);
    entry[4..8].copy_from_slice(&checksum.to_le_bytes());
    padded_len(path, size)
}

/// The bytes an entry of `size` bytes at `path` takes in its segment: whole blocks.
fn padded_len(path: &str, size: usize) -> usize {
    align_up(HEADER_BYTES + path.len() + size)
}

/// An entry read back: where its object's bytes are in `bytes`, and how far the next entry
/// starts.
struct Decoded {
    salt: u64,
    written_ms: i64,
    path: Path,
    payload: Range<usize>,
    padded: usize,
}

/// The whole, uncorrupted entry at the start of `bytes`, of salt `salt` if given.
fn decode_entry(bytes: &[u8], salt: Option<u64>) -> Option<Decoded> {
    let end = entry_len(bytes).filter(|&end| end <= bytes.len())?;
    let field = |range: Range<usize>| &bytes[range];
    let entry_salt = u64::from_le_bytes(field(8..16).try_into().ok()?);
    if salt.is_some_and(|s| s != entry_salt) {
        return None;
    }
    let path_len = u32::from_le_bytes(field(28..32).try_into().ok()?) as usize;
    let checksum = u32::from_le_bytes(field(4..8).try_into().ok()?);
    if crc32c::crc32c(&bytes[8..end]) != checksum {
        return None;
    }
    let path = std::str::from_utf8(&bytes[HEADER_BYTES..HEADER_BYTES + path_len]).ok()?;
    Some(Decoded {
        salt: entry_salt,
        written_ms: i64::from_le_bytes(field(16..24).try_into().ok()?),
        path: Path::parse(path).ok()?,
        payload: HEADER_BYTES + path_len..end,
        padded: align_up(end),
    })
}

/// What a segment file holds, read from its start up to the first entry that is not whole.
struct Scanned {
    salt: u64,
    /// Where the next entry would go.
    end: usize,
    objects: Vec<(Path, Placed)>,
    /// Set when the read ended at an entry of the segment's current use that is not whole,
    /// rather than where nothing more was written.
    cut: Option<Cut>,
}

/// An entry of a segment's current use (its magic and salt) that is not whole: the read
/// stops there, as Kafka's recovery truncates a log at its first invalid batch.
#[derive(Debug, PartialEq, Eq)]
struct Cut {
    /// Where in the segment the entry starts.
    at: usize,
    /// Whole entries of the same use after it, which the read leaves out. A crash of the
    /// host in the middle of a round's write leaves them unacknowledged (the round's sync
    /// never returned); otherwise the segment was damaged after it was written, and they
    /// held acknowledged objects.
    whole_after: usize,
}

/// Scans `segments` ([`scan_segment`]), [`SCANS_AT_ONCE`] at a time, and gives their
/// results in the same order. A start reads every segment, up to 64 MiB. Each scan reuses
/// one buffer for its segments, since on this VM the first touch of memory new to the
/// process is slow. 16 full segments took 118-150 ms one after another with a fresh buffer
/// each; 87-91 ms with one buffer; 63-86 ms four at a time, each with one.
fn scan_segments(segments: &[File]) -> Vec<io::Result<Scanned>> {
    if segments.is_empty() {
        return Vec::new();
    }
    let scan = |some: &[File]| {
        let mut bytes = Aligned::with_capacity(ALIGN, SEGMENT_BYTES);
        some.iter()
            .map(|file| scan_segment(file, &mut bytes))
            .collect::<Vec<_>>()
    };
    let per_scan = segments.len().div_ceil(SCANS_AT_ONCE);
    if segments.len() <= per_scan {
        return scan(segments);
    }
    std::thread::scope(|scope| {
        let scans: Vec<_> = segments
            .chunks(per_scan)
            .map(|some| scope.spawn(move || scan(some)))
            .collect();
        scans
            .into_iter()
            .flat_map(|scan| match scan.join() {
                Ok(scanned) => scanned,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Reads a segment file's entries into `bytes`; only what they cover is read, a chunk at
/// a time.
fn scan_segment(file: &File, bytes: &mut Aligned) -> io::Result<Scanned> {
    const CHUNK: usize = 256 << 10;
    bytes.clear();
    // Makes `bytes` hold the file up to `len` (rounded up to a chunk); false past its end.
    let read_to = |bytes: &mut Aligned, len: usize| -> io::Result<bool> {
        while bytes.len() < len.min(SEGMENT_BYTES) {
            let from = bytes.len();
            bytes.resize((from + CHUNK).min(SEGMENT_BYTES), 0);
            let mut filled = from;
            while filled < bytes.len() {
                match positional::read_at(file, &mut bytes[filled..], filled as u64)? {
                    0 => break,
                    read => filled += read,
                }
            }
            bytes.truncate(filled);
            if filled == from {
                break;
            }
        }
        Ok(bytes.len() >= len)
    };
    let mut found = Vec::new();
    let mut salt = None;
    let mut end = 0;
    while read_to(bytes, end + HEADER_BYTES)? {
        let Some(len) = entry_len(&bytes[end..]) else {
            break;
        };
        if !read_to(bytes, end + len)? {
            break;
        }
        let Some(entry) = decode_entry(&bytes[end..end + len], salt) else {
            break;
        };
        salt = Some(entry.salt);
        let placed = Placed {
            segment: 0,
            at: (end + entry.payload.start) as u64,
            size: entry.payload.len() as u64,
            written: DateTime::from_timestamp_millis(entry.written_ms).unwrap_or_default(),
        };
        found.push((entry.path, placed));
        end += entry.padded;
    }
    // Why the read ended: nothing more was written there (zeros, the file's end, or an
    // entry of the segment's previous use), or an entry of this use is not whole.
    let mut cut = None;
    if read_to(bytes, end + HEADER_BYTES)? {
        let this_use = entry_salt(&bytes[end..]).filter(|&s| salt.is_none_or(|salt| salt == s));
        if let Some(this_use) = this_use {
            read_to(bytes, SEGMENT_BYTES)?;
            let after = &bytes[(end + ALIGN).min(bytes.len())..];
            cut = Some(Cut {
                at: end,
                whole_after: count_whole(after, this_use),
            });
        }
    }
    Ok(Scanned {
        salt: salt.unwrap_or(0),
        end,
        objects: found,
        cut,
    })
}

/// The salt in the entry header that starts `bytes`, if it has the magic.
fn entry_salt(bytes: &[u8]) -> Option<u64> {
    let header = bytes.get(..HEADER_BYTES)?;
    (header[0..4] == MAGIC).then(|| u64::from_le_bytes(header[8..16].try_into().unwrap()))
}

/// How many whole entries of salt `salt` start at block boundaries in `bytes`.
fn count_whole(bytes: &[u8], salt: u64) -> usize {
    let mut count = 0;
    let mut at = 0;
    while at < bytes.len() {
        match decode_entry(&bytes[at..], Some(salt)) {
            Some(entry) => {
                count += 1;
                at += entry.padded;
            }
            None => at += ALIGN,
        }
    }
    count
}

/// The length of the entry whose header starts `bytes`, if it has the magic and fits a
/// segment.
fn entry_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..HEADER_BYTES)?;
    if header[0..4] != MAGIC {
        return None;
    }
    let size = u32::from_le_bytes(header[24..28].try_into().ok()?) as usize;
    let path_len = u32::from_le_bytes(header[28..32].try_into().ok()?) as usize;
    Some(HEADER_BYTES + path_len + size).filter(|&len| len <= SEGMENT_BYTES)
}

/// Writes a segment file full of zeros, durably (its entry in `dir`, and `dir`'s in its
/// parent), so later writes into it change no metadata.
fn create_segment(dir: &FsPath, number: u64) -> io::Result<File> {
    let path = dir.join(format!("{number:08}.seg"));
    let file = positional::direct(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true),
    )
    .open(&path)?;
    const CHUNK: usize = 1 << 20;
    let mut zeros = Aligned::with_capacity(ALIGN, CHUNK);
    zeros.resize(CHUNK, 0);
    let written = (0..SEGMENT_BYTES / CHUNK)
        .try_for_each(|i| positional::write_all_at(&file, &zeros, (i * CHUNK) as u64))
        .and_then(|()| file.sync_data())
        .and_then(|()| sync_folder(&path))
        .and_then(|()| sync_folder(dir));
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// `len` bytes from `start` of a file opened for direct I/O.
fn read_span(file: &File, start: u64, len: usize) -> io::Result<Bytes> {
    let from = start & !(ALIGN as u64 - 1);
    let skip = (start - from) as usize;
    let mut buffer = Aligned::with_capacity(ALIGN, align_up(skip + len));
    buffer.resize(align_up(skip + len), 0);
    let mut filled = 0;
    while filled < skip + len {
        match positional::read_at(file, &mut buffer[filled..], from + filled as u64)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            read => filled += read,
        }
    }
    Ok(Bytes::copy_from_slice(&buffer[skip..skip + len]))
}

fn store_error(e: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFolder",
        source: Box::new(e),
    }
}

fn not_found(location: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: location.to_string(),
        source: "no such object".into(),
    }
}

#[async_trait]
impl ObjectStore for LocalFolder {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if let Some(journal) = self.journal_for(location) {
            if let Some(put) = journal.put(location, payload.clone(), &opts.mode).await {
                return put;
            }
        }
        self.files.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.files.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if let Some(journal) = self.journal_for(location) {
            if let Some(got) = journal.get(location, &options).await {
                return got;
            }
        }
        self.files.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let journal = self.journal.clone();
        let files = self.files.clone();
        locations
            .then(move |location| {
                let journal = journal.clone().filter(|journal| {
                    location
                        .as_ref()
                        .is_ok_and(|location| journal.takes(location))
                });
                let files = files.clone();
                async move {
                    let location = location?;
                    if journal.is_some_and(|journal| journal.delete(&location)) {
                        return Ok(location);
                    }
                    let mut deleted =
                        files.delete_stream(stream::once(async move { Ok(location) }).boxed());
                    deleted
                        .next()
                        .await
                        .unwrap_or_else(|| Err(store_error(io::ErrorKind::NotFound.into())))
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let journaled = self
            .journal
            .as_ref()
            .map(|journal| journal.list(prefix))
            .unwrap_or_default();
        self.files
            .list(prefix)
            .chain(stream::iter(journaled.into_iter().map(Ok)))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut listed = self.files.list_with_delimiter(prefix).await?;
        let Some(journal) = &self.journal else {
            return Ok(listed);
        };
        let depth = prefix.map_or(0, Path::parts_count);
        for meta in journal.list(prefix) {
            if meta.location.parts_count() == depth + 1 {
                listed.objects.push(meta);
            } else {
                let folder: Path = meta.location.parts().take(depth + 1).collect();
                if !listed.common_prefixes.contains(&folder) {
                    listed.common_prefixes.push(folder);
                }
            }
        }
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let journaled = match self.journal_for(from) {
            Some(journal) => journal.get(from, &GetOptions::default()).await,
            None => None,
        };
        let Some(got) = journaled else {
            return self.files.copy_opts(from, to, options).await;
        };
        let bytes = got?.bytes().await?;
        let mode = match options.mode {
            CopyMode::Overwrite => PutMode::Overwrite,
            CopyMode::Create => PutMode::Create,
        };
        self.put_opts(to, bytes.into(), mode.into()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::{GetRange, ObjectStoreExt};

    use super::super::direct::DirectFolder;

    fn wal(id: u64) -> Path {
        Path::from(format!("shale/wal/{id:020}.sst"))
    }

    /// The folder in `dir`, locked and with its journal, as a start opens it.
    fn journaled(dir: &FsPath) -> LocalFolder {
        let journaled = Journaled {
            wal: Path::from("shale/wal"),
            moved: Path::from("shale/batches"),
        };
        LocalFolder::open(dir, lock_folder(dir).unwrap(), journaled, true).unwrap()
    }

    /// A journaled folder in `dir`, once its first segment is ready; `None` where the
    /// temp folder refuses direct I/O.
    async fn open(dir: &FsPath) -> Option<LocalFolder> {
        DirectFolder::probe(dir)?;
        let folder = journaled(dir);
        // The first put finds no segment and starts one; wait until it is there.
        let journal = folder.journal.clone().unwrap();
        journal.prepare_if_short(&mut journal.lock());
        while journal.lock().ready.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Some(folder)
    }

    /// The folder in `dir` opened again, as by a restart, and the WAL objects it lists.
    async fn reopen(dir: &FsPath) -> (LocalFolder, Vec<Path>) {
        let folder = journaled(dir);
        let listed: Vec<ObjectMeta> = folder
            .list(Some(&Path::from("shale/wal")))
            .try_collect()
            .await
            .unwrap();
        let mut locations: Vec<Path> = listed.into_iter().map(|m| m.location).collect();
        locations.sort();
        (folder, locations)
    }

    #[tokio::test]
    async fn wal_objects_go_to_the_journal_and_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let Some(folder) = open(dir.path()).await else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        let bodies: Vec<Bytes> = (0..20u8)
            .map(|i| Bytes::from(vec![i; 100 + 997 * i as usize]))
            .collect();
        for (id, body) in bodies.iter().enumerate() {
            let put = folder
                .put_opts(&wal(id as u64), body.clone().into(), PutMode::Create.into())
                .await;
            put.unwrap();
        }
        assert!(
            !dir.path().join("shale/wal").exists(),
            "no WAL object became a file"
        );
        let again = folder
            .put_opts(
                &wal(3),
                Bytes::from_static(b"x").into(),
                PutMode::Create.into(),
            )
            .await;
        assert!(matches!(
            again,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        folder
            .put(
                &Path::from("shale/manifest/1"),
                Bytes::from_static(b"m").into(),
            )
            .await
            .unwrap();
        folder.delete(&wal(5)).await.unwrap();
        drop(folder);

        let (folder, listed) = reopen(dir.path()).await;
        assert_eq!(listed.len(), 20, "19 objects, and the deleted one back");
        for (id, body) in bodies.iter().enumerate() {
            let got = folder.get(&wal(id as u64)).await.unwrap();
            assert_eq!(got.meta.size, body.len() as u64);
            assert_eq!(got.bytes().await.unwrap(), body, "object {id}");
        }
        let tail = folder
            .get_opts(
                &wal(19),
                GetOptions {
                    range: Some(GetRange::Suffix(10)),
                    ..GetOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            tail.bytes().await.unwrap(),
            bodies[19].slice(bodies[19].len() - 10..)
        );
        let head = folder.head(&wal(7)).await.unwrap();
        assert_eq!(head.size, bodies[7].len() as u64);
        assert_eq!(
            folder
                .get(&Path::from("shale/manifest/1"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            Bytes::from_static(b"m")
        );
        let top = folder
            .list_with_delimiter(Some(&Path::from("shale")))
            .await
            .unwrap();
        assert!(top.common_prefixes.contains(&Path::from("shale/wal")));
        assert!(top.common_prefixes.contains(&Path::from("shale/manifest")));
    }

    #[tokio::test]
    async fn objects_in_many_segments_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let Some(folder) = open(dir.path()).await else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        // Four entries of 0.7-0.9 MB fill a segment; segments are added one at a time, so the
        // puts leave them time to come. Objects that find no room become files, and come
        // back as well.
        let bodies: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; 700_000 + 4099 * i as usize]))
            .collect();
        for (id, body) in bodies.iter().enumerate() {
            folder
                .put_opts(&wal(id as u64), body.clone().into(), PutMode::Create.into())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(folder);
        let segments = std::fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
            .count();
        assert!(
            segments > SCANS_AT_ONCE,
            "only {segments} segments were written"
        );

        let (folder, listed) = reopen(dir.path()).await;
        assert_eq!(listed.len(), bodies.len());
        for (id, body) in bodies.iter().enumerate() {
            let got = folder.get(&wal(id as u64)).await.unwrap();
            assert_eq!(got.bytes().await.unwrap(), body, "object {id}");
        }
    }

    #[tokio::test]
    async fn a_torn_entry_ends_its_segment_and_reused_segments_forget_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let Some(folder) = journal_of_entries(dir.path(), 4).await else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        drop(folder);
        // Tear the third entry: a crash in the middle of its write.
        overwrite_first_segment(dir.path(), 2 * 8192 + 3000, &[0xff; 16]);
        // The read says where it stopped, and that a whole entry follows (an operator is
        // told, as this may be damage to acknowledged data, not a crash's torn write).
        let cut = scan_first_segment(dir.path()).cut;
        assert_eq!(
            cut,
            Some(Cut {
                at: 2 * 8192,
                whole_after: 1
            })
        );
        let (folder, listed) = reopen(dir.path()).await;
        assert_eq!(listed, [wal(0), wal(1)]);

        // Emptied, the segment is reused; what it held before is gone after a restart.
        folder.delete(&wal(0)).await.unwrap();
        folder.delete(&wal(1)).await.unwrap();
        cleared(&folder).await;
        folder
            .put(&wal(9), Bytes::from_static(b"new").into())
            .await
            .unwrap();
        drop(folder);
        let (_, listed) = reopen(dir.path()).await;
        assert_eq!(listed, [wal(9)]);
        // The previous use's entries after it end the read without a cut.
        let scanned = scan_first_segment(dir.path());
        assert_eq!((scanned.objects.len(), scanned.cut), (1, None));
    }

    #[tokio::test]
    async fn a_torn_last_entry_is_a_cut_with_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let Some(folder) = journal_of_entries(dir.path(), 3).await else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        drop(folder);
        let whole = scan_first_segment(dir.path());
        assert_eq!(
            (whole.objects.len(), whole.end, whole.cut),
            (3, 3 * 8192, None)
        );
        overwrite_first_segment(dir.path(), 2 * 8192 + 4096, &[0; 16]);
        let torn = scan_first_segment(dir.path());
        assert_eq!(torn.objects.len(), 2);
        assert_eq!(
            torn.cut,
            Some(Cut {
                at: 2 * 8192,
                whole_after: 0
            })
        );
    }

    #[tokio::test]
    async fn an_emptied_segment_is_cleared_and_its_deleted_objects_stay_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let Some(folder) = journal_of_entries(dir.path(), 3).await else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        drop(folder);
        // After a start no lane writes to the segment, so emptying it clears it.
        let (folder, listed) = reopen(dir.path()).await;
        assert_eq!(listed, [wal(0), wal(1), wal(2)]);
        for id in 0..3 {
            folder.delete(&wal(id)).await.unwrap();
        }
        cleared(&folder).await;
        drop(folder);
        let scanned = scan_first_segment(dir.path());
        assert_eq!((scanned.objects.len(), scanned.end), (0, 0));
        let (folder, listed) = reopen(dir.path()).await;
        assert!(listed.is_empty(), "deleted objects came back: {listed:?}");
        // The cleared segment is taken again.
        folder
            .put(&wal(7), Bytes::from_static(b"again").into())
            .await
            .unwrap();
        drop(folder);
        let (_, listed) = reopen(dir.path()).await;
        assert_eq!(listed, [wal(7)]);
    }

    /// Waits until the first segment of `folder`'s journal, emptied, is cleared and ready.
    async fn cleared(folder: &LocalFolder) {
        let journal = folder.journal.clone().unwrap();
        while !journal.lock().ready.contains(&0) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A journaled folder in `dir` whose first segment holds `count` WAL objects of 5000
    /// bytes, an entry of two blocks each; `None` where the temp folder refuses direct I/O.
    async fn journal_of_entries(dir: &FsPath, count: u64) -> Option<LocalFolder> {
        let folder = open(dir).await?;
        for id in 0..count {
            folder
                .put(&wal(id), Bytes::from(vec![id as u8; 5000]).into())
                .await
                .unwrap();
        }
        Some(folder)
    }

    /// Writes `bytes` at `at` in the first segment of the journal in `dir`, as a crash in
    /// the middle of a write, or damage, would leave it.
    fn overwrite_first_segment(dir: &FsPath, at: u64, bytes: &[u8]) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("journal/00000000.seg"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, bytes, at).unwrap();
    }

    /// What a start reads from the first segment of the journal in `dir`.
    fn scan_first_segment(dir: &FsPath) -> Scanned {
        let file = positional::direct(std::fs::OpenOptions::new().read(true))
            .open(dir.join("journal/00000000.seg"))
            .unwrap();
        scan_segment(&file, &mut Aligned::with_capacity(ALIGN, SEGMENT_BYTES)).unwrap()
    }

    #[tokio::test]
    async fn concurrent_puts_share_rounds_and_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let Some(folder) = open(dir.path()).await else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        let body = |id: u64| Bytes::from(vec![id as u8; 1000 + (id as usize * 7919) % 150_000]);
        // All queued before the committer runs: rounds of many entries, over more than one
        // segment, and a second create of one object in the same round.
        let mut puts: Vec<(u64, Bytes)> = (0..80).map(|id| (id, body(id))).collect();
        puts.insert(10, (5, Bytes::from_static(b"again")));
        let locations: Vec<Path> = puts.iter().map(|(id, _)| wal(*id)).collect();
        let results =
            futures::future::join_all(puts.iter().zip(&locations).map(|((_, body), location)| {
                folder.put_opts(location, body.clone().into(), PutMode::Create.into())
            }))
            .await;
        let mut bodies = BTreeMap::new();
        let mut refused = 0;
        for ((id, body), result) in puts.into_iter().zip(results) {
            match result {
                Ok(_) => assert!(bodies.insert(id, body).is_none(), "object {id} put twice"),
                Err(object_store::Error::AlreadyExists { .. }) if id == 5 => refused += 1,
                Err(e) => panic!("object {id}: {e}"),
            }
        }
        assert_eq!(refused, 1, "one of the two creates of object 5 fails");
        drop(folder);

        let (folder, listed) = reopen(dir.path()).await;
        assert_eq!(listed, (0..80).map(wal).collect::<Vec<_>>());
        for (id, body) in bodies {
            let got = folder.get(&wal(id)).await.unwrap().bytes().await.unwrap();
            assert_eq!(got, body, "object {id}");
        }
    }

    fn batch(id: u64) -> Path {
        Path::from(format!("shale/batches/t/0/{id:016x}"))
    }

    /// The file batch object `id` moves to.
    fn batch_file(dir: &FsPath, id: u64) -> PathBuf {
        dir.join(format!("shale/batches/t/0/{id:016x}"))
    }

    /// [`open`], and batch objects written and read as the log does.
    async fn open_with_direct(dir: &FsPath) -> Option<(LocalFolder, DirectFolder)> {
        let folder = open(dir).await?;
        let direct = DirectFolder::probe(dir)?.with_journal(folder.journal());
        Some((folder, direct))
    }

    /// Waits until the journal holds none of the batch objects, each then a file.
    /// Whether a batch object's file holds `body`, then zeros to the block size.
    fn assert_padded(file: &[u8], body: &[u8]) {
        assert_eq!(file.len(), align_up(body.len()), "whole blocks");
        assert_eq!(&file[..body.len()], body);
        assert!(file[body.len()..].iter().all(|b| *b == 0), "then zeros");
    }

    async fn moved(folder: &LocalFolder, dir: &FsPath, ids: std::ops::Range<u64>) {
        let journal = folder.journal().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ids.clone().any(|id| journal.locate(&batch(id)).is_some()) {
            assert!(
                Instant::now() < deadline,
                "batch objects stayed in the journal"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for id in ids {
            assert!(batch_file(dir, id).exists(), "batch object {id} is a file");
        }
    }

    #[tokio::test]
    async fn small_batch_objects_go_to_the_journal_then_to_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let Some((folder, direct)) = open_with_direct(dir.path()).await else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        let body = |id: u64| Bytes::from(vec![id as u8; 40_000 + id as usize]);
        let journal = folder.journal().unwrap();
        let mut from_journal = 0;
        for id in 0..20 {
            direct.put(&batch(id), &[body(id)]).await.unwrap();
            from_journal += usize::from(journal.locate(&batch(id)).is_some());
            let span = direct.get_range(&batch(id), 100..30_000).await.unwrap();
            assert_eq!(span.freeze(), body(id).slice(100..30_000), "object {id}");
        }
        // The first is moved at once, the rest wait for the mover's next round.
        assert!(
            from_journal > 10,
            "only {from_journal} went through the journal"
        );
        let large = Bytes::from(vec![9; MOVED_OBJECT_MAX_BYTES + 1]);
        direct.put(&batch(99), &[large]).await.unwrap();
        assert!(
            journal.locate(&batch(99)).is_none(),
            "too large for the journal"
        );
        moved(&folder, dir.path(), 0..20).await;
        for id in 0..20 {
            let span = direct.get_range(&batch(id), 0..body(id).len() as u64).await;
            assert_eq!(span.unwrap().freeze(), body(id), "object {id} as a file");
        }
        folder.delete(&batch(3)).await.unwrap();
        assert!(!batch_file(dir.path(), 3).exists());

        // Deleted while in the journal: no file is left behind once the mover comes by.
        direct.put(&batch(40), &[body(40)]).await.unwrap();
        direct.put(&batch(41), &[body(41)]).await.unwrap();
        folder.delete(&batch(41)).await.unwrap();
        moved(&folder, dir.path(), 40..41).await;
        tokio::time::sleep(MOVE_INTERVAL * 3).await;
        assert!(!batch_file(dir.path(), 41).exists());
    }

    #[tokio::test]
    async fn a_batch_object_that_could_not_move_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let Some((folder, direct)) = open_with_direct(dir.path()).await else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        // A file where the object's folder goes: its move fails until the file is gone.
        let in_the_way = batch_file(dir.path(), 0).parent().unwrap().to_path_buf();
        std::fs::create_dir_all(in_the_way.parent().unwrap()).unwrap();
        std::fs::write(&in_the_way, b"in the way").unwrap();
        let body = Bytes::from(vec![7; 30_000]);
        direct
            .put(&batch(0), std::slice::from_ref(&body))
            .await
            .unwrap();
        let journal = folder.journal().unwrap();
        tokio::time::sleep(MOVE_INTERVAL * 5).await;
        assert!(
            journal.locate(&batch(0)).is_some(),
            "an object that could not move stays in the journal"
        );
        let got = folder.get(&batch(0)).await.unwrap().bytes().await.unwrap();
        assert_eq!(got, body, "and is read from there");

        std::fs::remove_file(&in_the_way).unwrap();
        moved(&folder, dir.path(), 0..1).await;
        let file = std::fs::read(batch_file(dir.path(), 0)).unwrap();
        assert_padded(&file, &body);
    }

    #[tokio::test]
    async fn batch_objects_found_in_the_journal_at_start_are_moved_again() {
        let dir = tempfile::tempdir().unwrap();
        let Some((folder, direct)) = open_with_direct(dir.path()).await else {
            eprintln!("skipped: the temp folder refuses direct I/O");
            return;
        };
        let body = |id: u64| Bytes::from(vec![id as u8; 30_000]);
        for id in 0..5 {
            direct.put(&batch(id), &[body(id)]).await.unwrap();
        }
        moved(&folder, dir.path(), 0..5).await;
        drop((direct, folder));
        // As if a crash had come before the files were durable: the segment still has the
        // entries, and a start moves them again, from the segment, over what the cut-short
        // moves left (no file, or part of one).
        for id in 0..5 {
            std::fs::remove_file(batch_file(dir.path(), id)).unwrap();
        }
        for id in 3..5 {
            std::fs::write(batch_file(dir.path(), id), b"part of a move").unwrap();
        }
        let folder = journaled(dir.path());
        moved(&folder, dir.path(), 0..5).await;
        for id in 0..5 {
            let got = folder.get(&batch(id)).await.unwrap().bytes().await.unwrap();
            assert_padded(&got, &body(id));
        }
    }

    #[test]
    fn a_second_process_cannot_open_a_locked_folder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = lock_folder(dir.path()).unwrap();
        // flock locks belong to open file descriptions: a second open conflicts like a
        // second process would.
        let second = lock_folder(dir.path()).unwrap_err();
        assert!(second
            .to_string()
            .contains("another Shale broker is using it"));
    }

    #[test]
    fn entries_decode_only_whole_and_with_their_salt() {
        let payload =
            PutPayload::from_iter([Bytes::from_static(b"abc"), Bytes::from_static(b"de")]);
        let mut entry = vec![0; 2 * ALIGN];
        assert_eq!(
            encode_entry(&mut entry, 42, 7, "shale/wal/1.sst", &payload),
            ALIGN
        );
        let decoded = decode_entry(&entry, Some(42)).unwrap();
        assert_eq!(&entry[decoded.payload.clone()], b"abcde");
        assert_eq!(decoded.path, Path::from("shale/wal/1.sst"));
        assert_eq!((decoded.written_ms, decoded.padded), (7, ALIGN));
        assert!(decode_entry(&entry, Some(43)).is_none(), "another salt");
        let mut torn = entry.to_vec();
        torn[decoded.payload.end - 1] ^= 1;
        assert!(decode_entry(&torn, Some(42)).is_none(), "a changed byte");
        assert!(decode_entry(&entry[..40], None).is_none(), "cut short");
    }
}
