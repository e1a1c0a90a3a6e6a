//! The embedded store's commit log: append-only segment files, one CRC-checked record per durable batch, one
//! `fdatasync` per record (group commit happens above, in the coalescer), recovery by scanning.
//!
//! # Format
//!
//! A segment is `NNNNNNNNNNNNNNNNNNNN.log` (the segment number, 20 digits) in the log directory. It holds records
//! back to back, each:
//!
//! ```text
//! payload_len u32 LE | crc32 u32 LE (of kind, seq and payload) | kind u8 | seq u64 LE | payload
//! ```
//!
//! `seq` numbers records from 1 without gaps across segments. A record is written with one positioned write at
//! the end of the durable bytes and made durable with `fdatasync`; only then does [`CommitLog::append`] return.
//!
//! # Failure
//!
//! If the write or the `fdatasync` fails (disk full, EIO), the segment is cut back to its last durable length
//! (`ftruncate`, which needs no free space) and that is made durable before the error is returned, so the failed
//! record can never be found by a later scan: a message whose write failed never reappears. If even the cut fails,
//! the log refuses every further append ([`CommitLog::fatal`]) and the process must be restarted by its
//! supervisor; recovery then treats whatever is on disk past the last good record as a torn tail only if it fails
//! its checksum, which is why the engine must exit rather than keep running in that state.
//!
//! # Recovery
//!
//! Opening scans every segment; a record that is short or fails its checksum ends the segment, and the file is cut
//! there (a crash mid-append leaves exactly such a torn tail in the newest segment). Segments are deleted by the
//! owner once everything in them is durable elsewhere ([`SealedSegments::delete_through`]).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Result, StorageError};

/// Bytes in a record header: payload length, checksum, kind, sequence number.
pub const RECORD_HEADER_BYTES: usize = 4 + 4 + 1 + 8;
/// Largest payload accepted, in bytes. A coalesced batch is at most a few MiB.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 256 << 20;
/// A segment is sealed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES_MAX: u64 = 16 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A durable batch of the store.
    Batch = 1,
    /// A write that only checks that the disk takes writes again; skipped by readers.
    Probe = 2,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Batch),
            2 => Some(RecordKind::Probe),
            _ => None,
        }
    }
}

/// One record read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord<'a> {
    pub kind: RecordKind,
    pub seq: u64,
    pub payload: &'a [u8],
}

fn io_at(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("{what} {}: {e}", path.display()))
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.log"))
}

/// The segment numbers in `dir`, ascending.
fn segment_numbers(dir: &Path) -> Result<Vec<u64>> {
    numbered_files(dir, ".log")
}

/// The numbers of the files in `dir` named `<decimal number><suffix>`, ascending.
pub(crate) fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_at(dir, "listing", e))? {
        let entry = entry.map_err(|e| io_at(dir, "listing", e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        if let Ok(n) = stem.parse::<u64>() {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Retired segments kept for reuse.
fn free_segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_at(dir, "listing", e))? {
        let entry = entry.map_err(|e| io_at(dir, "listing", e))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".free"))
        {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Opens `path` for reading and writing, creating it empty if it does not exist; an existing file keeps its
/// contents.
pub(crate) fn open_or_create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_at(dir, "syncing directory", e))
}

/// Encodes a record's header for `payload`.
fn header(kind: RecordKind, seq: u64, payload: &[u8]) -> [u8; RECORD_HEADER_BYTES] {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8] = kind as u8;
    h[9..17].copy_from_slice(&seq.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[8..17]);
    crc.update(payload);
    h[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// Walks the valid records of one segment's bytes; returns the length of the valid prefix. Records in a segment
/// have consecutive sequence numbers, the first one at least `first_seq_min`: whatever follows that is either zeros,
/// a torn record, or the older content of a recycled segment (lower numbers), and ends the segment.
pub fn scan(bytes: &[u8], first_seq_min: u64, mut each: impl FnMut(LogRecord<'_>)) -> usize {
    let mut at = 0;
    let mut previous: Option<u64> = None;
    while let Some(h) = bytes.get(at..at + RECORD_HEADER_BYTES) {
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        let Some(kind) = RecordKind::from_u8(h[8]) else {
            break;
        };
        let seq = u64::from_le_bytes(h[9..17].try_into().expect("8 bytes"));
        if len > RECORD_PAYLOAD_BYTES_MAX {
            break;
        }
        let start = at + RECORD_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&h[8..17]);
        hasher.update(payload);
        if hasher.finalize() != crc {
            break;
        }
        let in_order = match previous {
            None => seq >= first_seq_min,
            Some(p) => seq == p + 1,
        };
        if !in_order {
            break;
        }
        previous = Some(seq);
        each(LogRecord { kind, seq, payload });
        at = start + len;
    }
    at
}

/// A sealed (full, no longer written) segment and the last sequence number in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sealed {
    number: u64,
    last_seq: u64,
}

/// The sealed segments, shared between the log's writer (which seals) and the owner that deletes them once their
/// records are durable elsewhere.
#[derive(Debug, Clone)]
pub struct SealedSegments {
    dir: PathBuf,
    segments: Arc<Mutex<VecDeque<Sealed>>>,
}

impl SealedSegments {
    /// Deletes every sealed segment whose records all have `seq <= seq`. Returns how many were deleted.
    pub fn delete_through(&self, seq: u64) -> Result<usize> {
        let mut deleted = 0;
        loop {
            let next = {
                let segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
                segments.front().copied()
            };
            let Some(s) = next.filter(|s| s.last_seq <= seq) else {
                return Ok(deleted);
            };
            let path = segment_path(&self.dir, s.number);
            // Keep a few for reuse; a crash before the rename is durable only brings back a segment whose records
            // are all indexed, which replay skips.
            let free = free_segments(&self.dir)?;
            let retired = if free.len() < FREE_SEGMENTS_MAX {
                std::fs::rename(&path, self.dir.join(format!("{:020}.free", s.number)))
            } else {
                std::fs::remove_file(&path)
            };
            match retired {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&path, "retiring", e)),
            }
            self.segments
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            deleted += 1;
        }
    }

    /// Sealed segments not yet deleted.
    pub fn len(&self) -> usize {
        self.segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Calls `each` for every batch record with `after < seq <= through`, in order, reading the segments in `dir`.
/// Safe while the log is being appended to: only records up to `through`, which are durable, are read.
pub fn replay(
    dir: &Path,
    after: u64,
    through: u64,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    if through <= after {
        return Ok(());
    }
    let mut expected = after + 1;
    for number in segment_numbers(dir)? {
        let path = segment_path(dir, number);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // Deleted meanwhile: it held only records that were already durable elsewhere.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_at(&path, "reading", e)),
        };
        let mut result = Ok(());
        scan(&bytes, 0, |r| {
            if result.is_err() || r.seq <= after || r.seq > through {
                return;
            }
            if r.seq < expected {
                return;
            }
            if r.seq != expected {
                result = Err(StorageError::Corrupt(format!(
                    "commit log: record {} missing (found {})",
                    expected, r.seq
                )));
                return;
            }
            expected += 1;
            if r.kind == RecordKind::Batch {
                result = each(r.seq, r.payload);
            }
        });
        result?;
        if expected > through {
            return Ok(());
        }
    }
    Err(StorageError::Corrupt(format!(
        "commit log: records {expected}..={through} missing"
    )))
}

/// Writes `len` zero bytes at `at` and makes them durable.
fn zero_range(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(len as usize).max(1)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at + done)?;
        done += n as u64;
    }
    file.sync_data()
}

/// Creates segment `number` at its full size, filled with zeros and durable (directory entry included), so that
/// appending to it later changes no file metadata: `fdatasync` then flushes only the record's blocks and needs no
/// file-system journal commit, which on ext4 (`data=ordered`) would also have to write out every other file's
/// pending data first, fjall's memtable flushes included.
fn prepare_segment(dir: &Path, number: u64, bytes: u64) -> Result<File> {
    let path = segment_path(dir, number);
    // Reuse a retired segment when there is one: its blocks are allocated and written, so only its start needs
    // zeroing (its old records have lower numbers than anything written to it from now on).
    if let Some(free) = free_segments(dir)?.into_iter().next() {
        let reused = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&free)
            .and_then(|f| {
                let len = f.metadata()?.len();
                zero_range(&f, 0, REUSE_ZERO_BYTES.min(len))?;
                Ok((f, len))
            });
        match reused {
            Ok((file, len)) if len >= bytes => {
                std::fs::rename(&free, &path).map_err(|e| io_at(&free, "reusing", e))?;
                sync_dir(dir)?;
                return Ok(file);
            }
            _ => {
                let _ = std::fs::remove_file(&free);
            }
        }
    }
    let file = open_or_create(&path).map_err(|e| io_at(&path, "creating", e))?;
    // In steps, each made durable before the next: one large flush would make the log's own fsyncs wait behind
    // it in the device queue.
    let mut prepared = Ok(());
    let mut at = 0;
    while at < bytes && prepared.is_ok() {
        let step = (bytes - at).min(ZERO_CHUNK_BYTES as u64);
        prepared = zero_range(&file, at, step);
        at += step;
    }
    let prepared = prepared.and_then(|()| file.sync_all());
    if let Err(e) = prepared {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(io_at(&path, "preparing", e));
    }
    if let Err(e) = sync_dir(dir) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// A thread that keeps the next segment prepared, off the append path, and retries (with back-off) while the disk
/// cannot hold it.
#[derive(Debug)]
struct Preparer {
    requests: Option<flume::Sender<u64>>,
    ready: flume::Receiver<(u64, File)>,
    /// Why the next segment cannot be prepared, while it cannot.
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Back-off between attempts to prepare a segment, first and longest, in milliseconds.
const PREPARE_BACKOFF_MS_MIN: u64 = 50;
const PREPARE_BACKOFF_MS_MAX: u64 = 1_000;
/// How long an append waits for the next segment when the preparer is behind.
const PREPARE_WAIT_MS_MAX: u64 = 2_000;
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Bytes after the valid records of a segment that are zeroed on open. Not needed for correctness (checksums and
/// consecutive numbers end a segment), it keeps a torn record from lingering right where the next one goes.
const TORN_TAIL_ZERO_BYTES_MAX: usize = 64 << 10;
/// Retired segments kept for reuse: reusing one costs a small write instead of zero-filling a new one.
const FREE_SEGMENTS_MAX: usize = 2;
/// Bytes zeroed at the start of a reused segment, so that it reads as empty until written.
const REUSE_ZERO_BYTES: u64 = 4096;

impl Preparer {
    fn start(dir: &Path, bytes: u64, nice: Option<i32>) -> Result<Preparer> {
        let (requests, request_rx) = flume::unbounded::<u64>();
        let (ready_tx, ready) = flume::bounded(1);
        let failure = Arc::new(Mutex::new(None));
        let thread_failure = Arc::clone(&failure);
        let dir = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("storage-log-prep".into())
            .spawn(move || {
                if let Some(nice) = nice {
                    crate::embedded::set_thread_nice(nice);
                    crate::embedded::set_thread_io_priority(2, 7);
                }
                let set = |reason: Option<String>| {
                    *thread_failure.lock().unwrap_or_else(|p| p.into_inner()) = reason;
                };
                while let Ok(number) = request_rx.recv() {
                    let mut backoff_ms = PREPARE_BACKOFF_MS_MIN;
                    loop {
                        match prepare_segment(&dir, number, bytes) {
                            Ok(file) => {
                                set(None);
                                let _ = ready_tx.send((number, file));
                                break;
                            }
                            Err(e) => {
                                log::error!("commit log: {e}");
                                set(Some(format!("cannot prepare the next log segment: {e}")));
                                // Stop trying once the log is closed.
                                if request_rx.is_disconnected() {
                                    return;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(backoff_ms));
                                backoff_ms = (backoff_ms * 2).min(PREPARE_BACKOFF_MS_MAX);
                            }
                        }
                    }
                }
            })
            .map_err(|e| StorageError::Io(format!("spawning the log preparer: {e}")))?;
        Ok(Preparer {
            requests: Some(requests),
            ready,
            failure,
            thread: Some(thread),
        })
    }

    fn request(&self, number: u64) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(number);
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.requests = None;
        // A prepared but unused segment is harmless: on open it is an empty newest segment.
        while self.ready.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writing end of the log. Single writer: every method takes `&mut self`.
#[derive(Debug)]
pub struct CommitLog {
    dir: PathBuf,
    active: File,
    active_number: u64,
    /// Durable bytes of the active segment; the next record goes here.
    active_bytes: u64,
    /// Allocated (zero-filled) size of the active segment.
    active_capacity: u64,
    last_seq: u64,
    segment_bytes_max: u64,
    sealed: SealedSegments,
    preparer: Preparer,
    /// Set when a failed append could not be cut back out of the segment; every later append is refused.
    fatal: Option<String>,
    /// How long the last append's write and `fdatasync` took.
    last_write: Duration,
    last_sync: Duration,
}

impl CommitLog {
    /// Opens the log in `dir` (created if missing), zeroing a torn tail in every segment, and starts preparing the
    /// next segment. `prepare_nice` is the niceness of the preparing thread.
    pub fn open(
        dir: &Path,
        segment_bytes_max: u64,
        prepare_nice: Option<i32>,
    ) -> Result<CommitLog> {
        std::fs::create_dir_all(dir).map_err(|e| io_at(dir, "creating", e))?;
        let segment_bytes_max = segment_bytes_max.max(RECORD_HEADER_BYTES as u64 + 1);
        let numbers = segment_numbers(dir)?;
        let mut sealed = VecDeque::new();
        let mut last_seq = 0;
        // (file, number, valid bytes, allocated bytes, last sequence number) of each segment, oldest first.
        let mut scanned = Vec::new();
        for (i, &number) in numbers.iter().enumerate() {
            let path = segment_path(dir, number);
            let bytes = std::fs::read(&path).map_err(|e| io_at(&path, "reading", e))?;
            let mut segment_last = last_seq;
            let first_seq_min = if i == 0 { 0 } else { last_seq + 1 };
            let valid = scan(&bytes, first_seq_min, |r| {
                if r.seq > segment_last {
                    segment_last = r.seq;
                }
            });
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_at(&path, "opening", e))?;
            // A torn record (a crash mid-append) is followed by zeros: zero it too, so that no later record
            // written here can be mistaken for its continuation.
            let tail = &bytes[valid..bytes.len().min(valid + TORN_TAIL_ZERO_BYTES_MAX)];
            if let Some(last_nonzero) = tail.iter().rposition(|&b| b != 0) {
                log::warn!(
                    "commit log: zeroing {} bytes of torn tail in {}",
                    last_nonzero + 1,
                    path.display()
                );
                zero_range(&f, valid as u64, last_nonzero as u64 + 1)
                    .map_err(|e| io_at(&path, "zeroing the torn tail of", e))?;
            }
            last_seq = segment_last;
            scanned.push((f, number, valid as u64, bytes.len() as u64, segment_last));
        }
        // A newest segment that was prepared but never written goes back to the free ones, so that appends go on
        // where they stopped.
        if scanned.len() >= 2 && scanned.last().is_some_and(|s| s.2 == 0) {
            let (_, number, ..) = scanned.pop().expect("two or more");
            let path = segment_path(dir, number);
            std::fs::rename(&path, dir.join(format!("{number:020}.free")))
                .map_err(|e| io_at(&path, "retiring", e))?;
        }
        let active = scanned
            .pop()
            .map(|(f, number, valid, len, _)| (f, number, valid, len));
        for (_, number, _, _, segment_last) in scanned {
            sealed.push_back(Sealed {
                number,
                last_seq: segment_last,
            });
        }
        let (active, active_number, active_bytes, active_capacity) = match active {
            Some(a) => a,
            None => (
                prepare_segment(dir, 1, segment_bytes_max)?,
                1,
                0,
                segment_bytes_max,
            ),
        };
        let preparer = Preparer::start(dir, segment_bytes_max, prepare_nice)?;
        preparer.request(active_number + 1);
        Ok(CommitLog {
            dir: dir.to_owned(),
            active,
            active_number,
            active_bytes,
            active_capacity,
            last_seq,
            segment_bytes_max,
            sealed: SealedSegments {
                dir: dir.to_owned(),
                segments: Arc::new(Mutex::new(sealed)),
            },
            preparer,
            fatal: None,
            last_write: Duration::ZERO,
            last_sync: Duration::ZERO,
        })
    }

    /// The sequence number of the last durable record (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the next record's number at least `seq + 1`: numbering continues past records that were in segments
    /// already deleted (the owner knows how far it got).
    pub fn advance_to(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// How long the last successful append spent writing and in `fdatasync`.
    pub fn last_append_durations(&self) -> (Duration, Duration) {
        (self.last_write, self.last_sync)
    }

    /// The sealed segments, for deleting them once they are durable elsewhere.
    pub fn sealed(&self) -> SealedSegments {
        self.sealed.clone()
    }

    /// Why the log refuses appends for good, if it does.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Why the next segment cannot be prepared (the disk is full, most likely), while it cannot. Appends still
    /// succeed until the active segment is full.
    pub fn preparer_failure(&self) -> Option<String> {
        self.preparer.failure()
    }

    /// A shared view of [`preparer_failure`](Self::preparer_failure) that does not need the log.
    pub fn preparer_failure_handle(&self) -> Arc<Mutex<Option<String>>> {
        Arc::clone(&self.preparer.failure)
    }

    /// Appends one record with the next sequence number and makes it durable; returns that number. On error
    /// nothing of the record remains in the log.
    pub fn append(&mut self, kind: RecordKind, payload: &[u8]) -> Result<u64> {
        if let Some(reason) = &self.fatal {
            return Err(StorageError::Unavailable(reason.clone()));
        }
        if payload.len() > RECORD_PAYLOAD_BYTES_MAX {
            return Err(StorageError::Invalid(format!(
                "commit log record of {} bytes is over {RECORD_PAYLOAD_BYTES_MAX}",
                payload.len()
            )));
        }
        let record_bytes = (RECORD_HEADER_BYTES + payload.len()) as u64;
        // Rotation counts as write time: when the next segment is not ready, this is where the batch waits.
        let started = Instant::now();
        if self.active_bytes + record_bytes > self.active_capacity && self.active_bytes > 0 {
            self.rotate()?;
        }
        let seq = self.last_seq + 1;
        let head = header(kind, seq, payload);
        let at = self.active_bytes;
        let mut synced = started;
        let written = self
            .active
            .write_all_at(&head, at)
            .and_then(|()| {
                self.active
                    .write_all_at(payload, at + RECORD_HEADER_BYTES as u64)
            })
            .and_then(|()| {
                synced = Instant::now();
                self.active.sync_data()
            });
        if let Err(e) = written {
            let path = segment_path(&self.dir, self.active_number);
            // Zero the failed record's header before anyone can see it, and make that durable: a scan stops at a
            // zero header, so the record can never reappear, and the next append overwrites it. Overwriting
            // allocated blocks needs no free space. The rest of the record is zeroed too where that works; it can
            // fail for the reason the append did (a write past the process's file size limit fails even inside the
            // file), which is harmless once the header is gone.
            let header_bytes = (RECORD_HEADER_BYTES as u64).min(record_bytes);
            let cut = zero_range(&self.active, at, header_bytes);
            if cut.is_ok() {
                let _ = zero_range(&self.active, at + header_bytes, record_bytes - header_bytes);
            }
            if let Err(cut) = cut {
                let reason = format!(
                    "commit log {}: a failed append ({e}) could not be cut back out ({cut}); restart the process",
                    path.display()
                );
                log::error!("{reason}");
                self.fatal = Some(reason);
            }
            return Err(io_at(&path, "appending to", e));
        }
        self.active_bytes = at + record_bytes;
        self.active_capacity = self.active_capacity.max(self.active_bytes);
        self.last_seq = seq;
        self.last_write = synced - started;
        self.last_sync = synced.elapsed();
        Ok(seq)
    }

    /// Seals the active segment and continues in the prepared next one.
    fn rotate(&mut self) -> Result<()> {
        let number = self.active_number + 1;
        let ready = match self.preparer.ready.try_recv() {
            Ok(ready) => Some(ready),
            Err(_) => {
                if let Some(failure) = self.preparer.failure() {
                    return Err(StorageError::Io(failure));
                }
                log::warn!("commit log: waiting for segment {number} to be prepared");
                self.preparer
                    .ready
                    .recv_timeout(Duration::from_millis(PREPARE_WAIT_MS_MAX))
                    .ok()
            }
        };
        let Some((prepared, file)) = ready else {
            return Err(StorageError::Unavailable(
                self.preparer
                    .failure()
                    .unwrap_or_else(|| "the next log segment is not ready".into()),
            ));
        };
        assert_eq!(prepared, number, "segments are prepared in order");
        self.sealed
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Sealed {
                number: self.active_number,
                last_seq: self.last_seq,
            });
        self.active = file;
        self.active_number = number;
        self.active_bytes = 0;
        self.active_capacity = self.segment_bytes_max;
        self.preparer.request(number + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(dir: &Path) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        replay(dir, 0, u64::MAX, |seq, p| {
            out.push((seq, p.to_vec()));
            Ok(())
        })
        .unwrap_err();
        out
    }

    #[test]
    fn append_scan_rotate_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CommitLog::open(dir.path(), 100, None).unwrap();
        for i in 0..10u8 {
            assert_eq!(
                log.append(RecordKind::Batch, &[i; 40]).unwrap(),
                u64::from(i) + 1
            );
        }
        log.append(RecordKind::Probe, b"").unwrap();
        assert_eq!(log.last_seq(), 11);
        let sealed = log.sealed();
        assert!(sealed.len() >= 4, "small segments rotate");
        let got = records(dir.path());
        assert_eq!(got.len(), 10, "probes are skipped");
        for (i, (seq, p)) in got.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(p, &vec![i as u8; 40]);
        }
        let mut some = Vec::new();
        replay(dir.path(), 3, 5, |seq, _| {
            some.push(seq);
            Ok(())
        })
        .unwrap();
        assert_eq!(some, [4, 5]);
        drop(log);
        let log = CommitLog::open(dir.path(), 100, None).unwrap();
        assert_eq!(log.last_seq(), 11);
        let before = log.sealed().len();
        assert!(log.sealed().delete_through(4).unwrap() >= 1);
        assert!(log.sealed().len() < before);
        let mut rest = Vec::new();
        replay(dir.path(), 6, 10, |seq, _| {
            rest.push(seq);
            Ok(())
        })
        .unwrap();
        assert_eq!(rest, [7, 8, 9, 10]);
    }

    #[test]
    fn torn_and_damaged_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CommitLog::open(dir.path(), 1 << 20, None).unwrap();
        log.append(RecordKind::Batch, b"first").unwrap();
        log.append(RecordKind::Batch, b"second").unwrap();
        drop(log);
        let path = segment_path(dir.path(), 1);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size, 1 << 20, "segments are allocated whole");
        // A torn third record right after the second: a header and part of its payload.
        let end = 2 * RECORD_HEADER_BYTES + b"first".len() + b"second".len();
        let mut bytes = std::fs::read(&path).unwrap();
        let mut torn = header(RecordKind::Batch, 3, b"third record").to_vec();
        torn.extend_from_slice(b"thi");
        bytes[end..end + torn.len()].copy_from_slice(&torn);
        std::fs::write(&path, &bytes).unwrap();
        let mut log = CommitLog::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(log.last_seq(), 2);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert!(
            bytes[end..].iter().all(|&b| b == 0),
            "the torn tail is zeroed"
        );
        assert_eq!(log.append(RecordKind::Batch, b"third").unwrap(), 3);
        drop(log);
        // A flipped payload byte fails the checksum: the record and everything after it are cut.
        let mut bytes = std::fs::read(&path).unwrap();
        let second_payload = RECORD_HEADER_BYTES + 5 + RECORD_HEADER_BYTES;
        bytes[second_payload] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let log = CommitLog::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(log.last_seq(), 1);
        assert_eq!(records(dir.path()), vec![(1, b"first".to_vec())]);
    }
}
