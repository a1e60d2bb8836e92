//! An initramfs file: an optional uncompressed early archive (CPU microcode
//! must be found by the kernel before anything is decompressed), then the main
//! archive, zstd- or LZ4-compressed or plain.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::newc::{write_newc, NewcSummary};
use crate::tree::ArchiveTree;
use crate::ArchiveError;

/// The zstd level used when none is given: high enough that the image the
/// firmware downloads is small, below the "ultra" levels (20+) whose large
/// windows need more memory to decompress at boot.
pub const DEFAULT_ZSTD_LEVEL: i32 = 19;

/// zstd settings. Compression always runs in zstd's multi-threaded mode with
/// at least one worker: that mode's output is the same for any worker count,
/// while the single-threaded mode (zero workers) produces different bytes.
/// So the worker count is a speed knob only, never part of an output's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdSettings {
    pub level: i32,
    pub workers: u32,
}

impl ZstdSettings {
    pub fn new(level: i32, workers: u32) -> Result<Self, ArchiveError> {
        let range = zstd::compression_level_range();
        if !range.contains(&level) || level < 1 {
            return Err(ArchiveError::InvalidLevel {
                level,
                max: *range.end(),
            });
        }
        Ok(Self {
            level,
            workers: workers.max(1),
        })
    }

    /// The default level with one worker per available core.
    pub fn default_for_host() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |count| count.get());
        Self {
            level: DEFAULT_ZSTD_LEVEL,
            workers: u32::try_from(workers).unwrap_or(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd(ZstdSettings),
    /// The LZ4 legacy stream the kernel reads ([`crate::lz4`]); no settings: the level is
    /// fixed and it is single-threaded.
    Lz4,
}

#[derive(Debug, Clone)]
pub struct InitramfsOptions<'a> {
    /// Every member's mtime: the build's `SOURCE_DATE_EPOCH`.
    pub mtime: u32,
    pub compression: Compression,
    /// Packed uncompressed in front of the main archive (e.g. a tree holding
    /// `kernel/x86/microcode/GenuineIntel.bin`).
    pub early: Option<&'a ArchiveTree>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InitramfsSummary {
    pub early: Option<NewcSummary>,
    pub main: NewcSummary,
    /// Bytes of the whole file as written.
    pub output_bytes: u64,
}

/// Writes an initramfs to `out`.
pub fn write_initramfs<W: Write>(
    tree: &ArchiveTree,
    options: &InitramfsOptions<'_>,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<InitramfsSummary, ArchiveError> {
    let mut counted = CountingOutput {
        inner: out,
        written: 0,
    };
    let mut summary = InitramfsSummary::default();
    if let Some(early) = options.early {
        summary.early = Some(write_newc(early, options.mtime, &mut counted, &mut |_| {})?);
    }
    match options.compression {
        Compression::None => {
            let mut buffered = BufWriter::with_capacity(1 << 20, &mut counted);
            summary.main = write_newc(tree, options.mtime, &mut buffered, progress)?;
            buffered.flush().map_err(ArchiveError::output)?;
        }
        Compression::Zstd(settings) => {
            let mut encoder = zstd_encoder(&mut counted, settings).map_err(ArchiveError::output)?;
            // Never flush mid-stream: a flush ends a zstd job early, and where
            // jobs end is part of the compressed bytes.
            let mut buffered = BufWriter::with_capacity(1 << 20, &mut encoder);
            summary.main = write_newc(tree, options.mtime, &mut buffered, progress)?;
            buffered
                .into_inner()
                .map_err(|error| ArchiveError::output(error.into_error()))?;
            encoder.finish().map_err(ArchiveError::output)?;
        }
        Compression::Lz4 => {
            let mut encoder =
                crate::lz4::Lz4LegacyWriter::new(&mut counted).map_err(ArchiveError::output)?;
            summary.main = write_newc(tree, options.mtime, &mut encoder, progress)?;
            encoder.finish().map_err(ArchiveError::output)?;
        }
    }
    counted.flush().map_err(ArchiveError::output)?;
    summary.output_bytes = counted.written;
    Ok(summary)
}

/// A zstd stream encoder with kiln's fixed frame parameters: checksummed
/// (the kernel verifies it while unpacking), multi-threaded mode.
pub fn zstd_encoder<W: Write>(
    out: W,
    settings: ZstdSettings,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(out, settings.level)?;
    encoder.multithread(settings.workers.max(1))?;
    encoder.include_checksum(true)?;
    encoder.include_contentsize(false)?;
    Ok(encoder)
}

/// Writes an initramfs to `path` atomically: into a temporary file beside it,
/// fsynced, given mode 0644 (never whatever the umask says), renamed over
/// `path`, and the directory fsynced. On any error the temporary file is
/// removed and `path` is untouched.
pub fn write_initramfs_file(
    tree: &ArchiveTree,
    options: &InitramfsOptions<'_>,
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<InitramfsSummary, ArchiveError> {
    write_file_atomically(path, |file| write_initramfs(tree, options, file, progress))
}

/// Runs `write` against a temporary file next to `path`, then publishes it.
pub fn write_file_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> Result<T, ArchiveError>,
) -> Result<T, ArchiveError> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut temporary = tempfile::Builder::new()
        .prefix(".kiln-partial-")
        .tempfile_in(&directory)
        .map_err(|source| ArchiveError::io(&directory, "creating a temporary file in", source))?;
    let result = write(temporary.as_file_mut())?;
    let file = temporary.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(|source| ArchiveError::io(temporary.path(), "setting the mode of", source))?;
    file.sync_all()
        .map_err(|source| ArchiveError::io(temporary.path(), "syncing", source))?;
    temporary
        .persist(path)
        .map_err(|error| ArchiveError::io(path, "renaming the finished archive to", error.error))?;
    if let Ok(handle) = fs::File::open(&directory) {
        // Makes the rename durable; a failure here loses nothing already visible.
        let _ = handle.sync_all();
    }
    Ok(result)
}

struct CountingOutput<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingOutput<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let count = self.inner.write(buffer)?;
        self.written += count as u64;
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
