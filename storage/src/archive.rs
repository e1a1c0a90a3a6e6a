//! The embedded store's message archive: append-only files that hold the message chunks, written by the indexer,
//! while fjall keeps only a small reference to each chunk (file, offset, length, CRC) under the chunk's key.
//!
//! Why: with the chunks themselves in fjall, every message's bytes went to disk three more times after the
//! commit log (fjall's journal, the blob file at memtable flush, and the CPU of both), and at five times the
//! seed's peak that background work is what made the acknowledgement tail (see the crate docs for the figures).
//! Here the indexer appends each log record's chunks to the archive with one write and inserts references of
//! [`REF_BYTES`] bytes: fjall's journal, memtables, flushes and compactions then handle a few dozen bytes per
//! chunk instead of kilobytes.
//!
//! Durability: the archive is not synced per write, but the writer starts the write-back of every
//! [`WRITEBACK_STEP_BYTES`] it has written (`sync_file_range`, not waited for), so that the disk takes the
//! archive's bytes as they come rather than as one burst at the next sync. The indexer's periodic persist syncs it first, then records
//! how far it is durable (an [`ArchiveMark`]) together with the last log record it holds, and only then persists
//! fjall and lets the commit log drop the records so covered. Opening cuts the archive back to the recorded mark
//! (bytes after it may be torn) and the store replays every log record after the mark's record, which writes
//! those chunks again and replaces any reference fjall kept to the cut bytes: the keys are the chunks' own.
//!
//! File format: `NNNNNNNN.chunks` (decimal file number), the chunk bytes back to back; a reference's CRC covers
//! its chunk, so a read of damaged bytes is an error, not a wrong message.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::commit_log::{numbered_files, open_or_create, sync_dir};
use crate::error::{Result, StorageError};

/// An archive file is closed (synced) and the next one started once it holds this many bytes.
pub const ARCHIVE_FILE_BYTES_MAX: u64 = 256 << 20;
/// Bytes of an encoded [`ChunkLocation`].
pub const REF_BYTES: usize = 21;
/// First byte of an encoded reference. A chunk stored inline (stores written before the archive) is an rkyv
/// archive of at least one message, longer than a reference, so the length alone tells them apart.
const REF_TAG: u8 = 0xA7;
/// Open read handles kept, at most (the oldest are dropped beyond it).
const READ_HANDLES_MAX: usize = 64;
/// Written bytes after which the writer starts their write-back (`sync_file_range`), without waiting for it: the
/// periodic sync then has little left to write, instead of tens of megabytes at once that the commit log's
/// `fdatasync` (and the device cache flush it ends with) would queue behind.
pub const WRITEBACK_STEP_BYTES: u64 = 1 << 20;

/// Where a chunk is in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub file: u32,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

impl ChunkLocation {
    pub fn encode(&self) -> [u8; REF_BYTES] {
        let mut out = [0u8; REF_BYTES];
        out[0] = REF_TAG;
        out[1..5].copy_from_slice(&self.file.to_be_bytes());
        out[5..13].copy_from_slice(&self.offset.to_be_bytes());
        out[13..17].copy_from_slice(&self.len.to_be_bytes());
        out[17..21].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// The reference a stored value holds, or `None` when the value is a chunk stored inline.
    pub fn decode(value: &[u8]) -> Option<ChunkLocation> {
        if value.len() != REF_BYTES || value[0] != REF_TAG {
            return None;
        }
        let u32_at = |at: usize| u32::from_be_bytes(value[at..at + 4].try_into().expect("4 bytes"));
        Some(ChunkLocation {
            file: u32_at(1),
            offset: u64::from_be_bytes(value[5..13].try_into().expect("8 bytes")),
            len: u32_at(13),
            crc: u32_at(17),
        })
    }
}

/// How far the archive is durable: every byte of files before `file`, and `len` bytes of `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveMark {
    pub file: u32,
    pub len: u64,
}

impl ArchiveMark {
    pub fn encode(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.file.to_be_bytes());
        out[4..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ArchiveMark> {
        if bytes.len() != 12 {
            return Err(StorageError::Corrupt("archive mark is not 12 bytes".into()));
        }
        Ok(ArchiveMark {
            file: u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")),
            len: u64::from_be_bytes(bytes[4..].try_into().expect("8 bytes")),
        })
    }
}

fn io_at(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("archive: {what} {}: {e}", path.display()))
}

fn file_path(dir: &Path, file: u32) -> PathBuf {
    dir.join(format!("{file:08}.chunks"))
}

fn file_numbers(dir: &Path) -> Result<Vec<u32>> {
    Ok(numbered_files(dir, ".chunks")?
        .into_iter()
        .filter_map(|n| u32::try_from(n).ok())
        .collect())
}

/// The writing end (the indexer's): chunks are staged, then written with one positioned write per log record.
pub struct ArchiveWriter {
    dir: PathBuf,
    file: File,
    number: u32,
    /// Bytes written to the current file.
    len: u64,
    /// Bytes of the current file whose write-back has been started.
    writeback_started: u64,
    staged: Vec<u8>,
}

impl ArchiveWriter {
    /// Opens the archive in `dir`, cut back to `mark`: files after it are deleted and its file is truncated to
    /// the mark's length. `None` (nothing recorded yet) empties it.
    pub fn open(dir: &Path, mark: Option<ArchiveMark>) -> Result<ArchiveWriter> {
        std::fs::create_dir_all(dir).map_err(|e| io_at(dir, "creating", e))?;
        let mark = mark.unwrap_or(ArchiveMark { file: 0, len: 0 });
        for n in file_numbers(dir)? {
            if n > mark.file {
                let path = file_path(dir, n);
                std::fs::remove_file(&path).map_err(|e| io_at(&path, "removing", e))?;
            }
        }
        let path = file_path(dir, mark.file);
        let file = open_or_create(&path).map_err(|e| io_at(&path, "opening", e))?;
        let on_disk = file
            .metadata()
            .map_err(|e| io_at(&path, "reading", e))?
            .len();
        if on_disk < mark.len {
            return Err(StorageError::Corrupt(format!(
                "archive: {} holds {on_disk} bytes, {} were recorded as durable",
                path.display(),
                mark.len
            )));
        }
        file.set_len(mark.len)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_at(&path, "cutting back", e))?;
        sync_dir(dir)?;
        Ok(ArchiveWriter {
            dir: dir.to_owned(),
            file,
            number: mark.file,
            len: mark.len,
            writeback_started: mark.len,
            staged: Vec::new(),
        })
    }

    /// Stages a chunk; its reference is valid once [`ArchiveWriter::write_staged`] returned `Ok`.
    pub fn stage(&mut self, chunk: &[u8]) -> ChunkLocation {
        let offset = self.len + self.staged.len() as u64;
        self.staged.extend_from_slice(chunk);
        ChunkLocation {
            file: self.number,
            offset,
            len: chunk.len() as u32,
            crc: crc32fast::hash(chunk),
        }
    }

    /// Writes what was staged (not synced), and moves to a new file once this one is full.
    pub fn write_staged(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let path = file_path(&self.dir, self.number);
        let result = self.file.write_all_at(&self.staged, self.len);
        // A failed write stages nothing more: the index is reopened, which cuts the archive back to its mark.
        let written = self.staged.len() as u64;
        self.staged.clear();
        result.map_err(|e| io_at(&path, "writing", e))?;
        self.len += written;
        if self.len - self.writeback_started >= WRITEBACK_STEP_BYTES {
            self.start_writeback();
        }
        if self.len >= ARCHIVE_FILE_BYTES_MAX {
            self.file
                .sync_data()
                .map_err(|e| io_at(&path, "syncing", e))?;
            let next = file_path(&self.dir, self.number + 1);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&next)
                .map_err(|e| io_at(&next, "creating", e))?;
            sync_dir(&self.dir)?;
            self.file = file;
            self.number += 1;
            self.len = 0;
            self.writeback_started = 0;
        }
        Ok(())
    }

    /// Starts the write-back of what was written since the last start, without waiting for it. A hint only: its
    /// failure changes nothing, and the next sync writes and checks everything.
    fn start_writeback(&mut self) {
        let (from, len) = (self.writeback_started, self.len - self.writeback_started);
        // SAFETY: a plain syscall on a file descriptor this writer owns, with no memory passed.
        let result = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if result != 0 {
            log::debug!(
                "archive: starting write-back: {}",
                std::io::Error::last_os_error()
            );
        }
        self.writeback_started = self.len;
    }

    /// Makes everything written durable and says how far that is.
    pub fn sync(&mut self) -> Result<ArchiveMark> {
        self.file
            .sync_data()
            .map_err(|e| io_at(&file_path(&self.dir, self.number), "syncing", e))?;
        Ok(ArchiveMark {
            file: self.number,
            len: self.len,
        })
    }
}

/// The reading end: chunks by reference, with a few open handles kept.
pub struct ArchiveReader {
    dir: PathBuf,
    handles: Mutex<HashMap<u32, Arc<File>>>,
}

impl ArchiveReader {
    pub fn new(dir: &Path) -> ArchiveReader {
        ArchiveReader {
            dir: dir.to_owned(),
            handles: Mutex::new(HashMap::new()),
        }
    }

    fn handle(&self, file: u32) -> Result<Arc<File>> {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = handles.get(&file) {
            return Ok(Arc::clone(h));
        }
        let path = file_path(&self.dir, file);
        let opened = Arc::new(File::open(&path).map_err(|e| io_at(&path, "opening", e))?);
        if handles.len() >= READ_HANDLES_MAX
            && let Some(oldest) = handles.keys().min().copied()
        {
            handles.remove(&oldest);
        }
        handles.insert(file, Arc::clone(&opened));
        Ok(opened)
    }

    /// Reads the chunk `r` points to into `out` (replacing its contents), checking its CRC.
    pub fn read(&self, r: &ChunkLocation, out: &mut rkyv::util::AlignedVec<16>) -> Result<()> {
        let file = self.handle(r.file)?;
        out.clear();
        out.resize(r.len as usize, 0);
        file.read_exact_at(out.as_mut_slice(), r.offset)
            .map_err(|e| io_at(&file_path(&self.dir, r.file), "reading", e))?;
        if crc32fast::hash(out.as_slice()) != r.crc {
            return Err(StorageError::Corrupt(format!(
                "archive: chunk at {}:{} fails its checksum",
                r.file, r.offset
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_inline_chunks_are_not_references() {
        let r = ChunkLocation {
            file: 7,
            offset: 1 << 40,
            len: 4096,
            crc: 0xdead_beef,
        };
        assert_eq!(ChunkLocation::decode(&r.encode()), Some(r));
        assert_eq!(ChunkLocation::decode(&[0u8; 64]), None);
        let mut wrong_tag = r.encode();
        wrong_tag[0] = 0;
        assert_eq!(ChunkLocation::decode(&wrong_tag), None);
        let mark = ArchiveMark { file: 3, len: 99 };
        assert_eq!(ArchiveMark::decode(&mark.encode()).unwrap(), mark);
        assert!(ArchiveMark::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn chunks_read_back_a_torn_tail_is_cut_to_the_mark_and_damage_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("archive");
        let mut w = ArchiveWriter::open(&dir, None).unwrap();
        let a = w.stage(b"first chunk");
        let b = w.stage(b"second");
        w.write_staged().unwrap();
        let mark = w.sync().unwrap();
        assert_eq!(mark, ArchiveMark { file: 0, len: 17 });
        let after = w.stage(b"written after the mark");
        w.write_staged().unwrap();
        let reader = ArchiveReader::new(&dir);
        let mut out = rkyv::util::AlignedVec::<16>::new();
        reader.read(&b, &mut out).unwrap();
        assert_eq!(out.as_slice(), b"second");
        reader.read(&after, &mut out).unwrap();
        assert_eq!(out.as_slice(), b"written after the mark");
        drop(w);

        // Reopened at the mark: what came after is gone, and the next chunk goes where it was.
        let mut w = ArchiveWriter::open(&dir, Some(mark)).unwrap();
        let again = w.stage(b"replayed");
        assert_eq!(again.offset, 17);
        w.write_staged().unwrap();
        let reader = ArchiveReader::new(&dir);
        reader.read(&a, &mut out).unwrap();
        assert_eq!(out.as_slice(), b"first chunk");
        reader.read(&again, &mut out).unwrap();
        assert_eq!(out.as_slice(), b"replayed");
        assert!(
            reader.read(&after, &mut out).is_err(),
            "the old reference no longer matches"
        );

        // A damaged byte fails the checksum; a mark past the file's end is corruption, not silence.
        let path = file_path(&dir, 0);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", a.offset).unwrap();
        assert!(matches!(
            reader.read(&a, &mut out),
            Err(StorageError::Corrupt(_))
        ));
        drop(w);
        assert!(matches!(
            ArchiveWriter::open(
                &dir,
                Some(ArchiveMark {
                    file: 0,
                    len: 1 << 20
                })
            ),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn a_full_file_is_synced_and_the_next_one_started() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("archive");
        let mut w = ArchiveWriter::open(&dir, None).unwrap();
        // One write past the limit (sparse: set the length instead of writing 256 MiB).
        w.file.set_len(ARCHIVE_FILE_BYTES_MAX - 4).unwrap();
        w.len = ARCHIVE_FILE_BYTES_MAX - 4;
        let last = w.stage(b"crosses the limit");
        w.write_staged().unwrap();
        let next = w.stage(b"in the next file");
        w.write_staged().unwrap();
        assert_eq!((last.file, next.file, next.offset), (0, 1, 0));
        assert_eq!(w.sync().unwrap(), ArchiveMark { file: 1, len: 16 });
        let reader = ArchiveReader::new(&dir);
        let mut out = rkyv::util::AlignedVec::<16>::new();
        reader.read(&last, &mut out).unwrap();
        assert_eq!(out.as_slice(), b"crosses the limit");
        reader.read(&next, &mut out).unwrap();
        assert_eq!(out.as_slice(), b"in the next file");
        drop(w);
        // Cut back to a mark in the first file: the second is deleted.
        ArchiveWriter::open(&dir, Some(ArchiveMark { file: 0, len: 8 })).unwrap();
        assert_eq!(file_numbers(&dir).unwrap(), vec![0]);
    }

    /// Dirty pages of the first `len` bytes of `file` (`cachestat(2)`, Linux 6.5 and later); `None` where the
    /// kernel does not have the call.
    fn dirty_pages(file: &File, len: u64) -> Option<u64> {
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct CacheStat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        // The same number on every architecture (system calls added since 5.1 share one table).
        const SYS_CACHESTAT: libc::c_long = 451;
        let range = Range { off: 0, len };
        let mut stat = CacheStat::default();
        // SAFETY: the call reads `range` and writes `stat`, both live for its duration and laid out as the
        // kernel's `struct cachestat_range` and `struct cachestat`.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const Range,
                &mut stat as *mut CacheStat,
                0,
            )
        };
        (rc == 0).then_some(stat.nr_dirty)
    }

    #[test]
    fn written_chunks_start_their_write_back_once_a_step_has_accumulated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("archive");
        let mut w = ArchiveWriter::open(&dir, None).unwrap();
        let chunk = vec![7u8; 64 << 10];
        // Below one step the pages stay dirty: the kernel's own write-back waits for them to age (30 s by
        // default).
        w.stage(&chunk);
        w.write_staged().unwrap();
        assert_eq!(w.writeback_started, 0);
        match dirty_pages(&w.file, w.len) {
            None => {
                println!("skipped: this kernel has no cachestat");
                return;
            }
            Some(0) => {
                println!("skipped: these pages were written back already, or are never dirty");
                return;
            }
            Some(_) => {}
        }
        // Past one step, the write-back of everything written so far is started at once.
        while w.len < WRITEBACK_STEP_BYTES {
            w.stage(&chunk);
            w.write_staged().unwrap();
        }
        assert_eq!(w.writeback_started, w.len);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while dirty_pages(&w.file, w.len) != Some(0) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?} pages still dirty",
                dirty_pages(&w.file, w.len)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // A new file starts counting again.
        w.file.set_len(ARCHIVE_FILE_BYTES_MAX - 4).unwrap();
        w.len = ARCHIVE_FILE_BYTES_MAX - 4;
        w.writeback_started = w.len;
        w.stage(b"crosses the limit");
        w.write_staged().unwrap();
        assert_eq!((w.number, w.len, w.writeback_started), (1, 0, 0));
    }
}
