//! The LZ4 "legacy" stream, the only LZ4 format the kernel unpacks an initramfs from
//! (`lib/decompress_unlz4.c`, `CONFIG_RD_LZ4`; what `lz4 -l` writes): the magic
//! `02 21 4c 18`, then chunks of at most 8 MiB of input, each a little-endian u32 of its
//! compressed length followed by one LZ4 block. There is no checksum.
//!
//! The format has no end marker either: `lz4 -l` output runs to the end of the file, and a
//! cpio appended after it (a second initrd, the smoke tests' fault injection) is read by
//! the kernel as one more chunk and refused, so the appended archive is lost. kiln ends
//! its stream with a chunk length of zero, which the kernel takes as the end
//! (`if (!fill && chunksize == 0) goto exit_3`, in 6.1) and then skips as padding before
//! the next archive. (`lz4 -d` 1.9 calls a zero length corrupt: the kernel is the reader
//! that matters, and `tests/archive_boot.rs` boots an appended archive behind it.)
//!
//! Why it exists next to zstd: under emulation (QEMU TCG, where CI and most smoke boots
//! run) the kernel decodes LZ4 about three times faster than zstd, for ~10-45% larger files.
//!
//! Chunk boundaries are fixed offsets of the uncompressed stream and the block compressor
//! is LZ4HC at a fixed level from the liblz4 that Cargo.lock pins (lz4-sys, built from its
//! vendored source), so the bytes depend on the input only.

use std::io::{self, Write};

use crate::ArchiveError;

/// The legacy frame's magic number, as stored (little-endian 0x184C2102).
pub const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// Uncompressed bytes per chunk: the kernel's `LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE`; a chunk
/// that decodes to more is refused at boot.
pub const LZ4_LEGACY_CHUNK: usize = 8 << 20;

/// Ends the stream: a chunk length of zero.
pub const LZ4_LEGACY_END: [u8; 4] = [0; 4];

/// LZ4HC level: liblz4's default high-compression level (`lz4 -9`). Level 12 saves 0.3% for
/// four times the compression time; decoding speed does not depend on the level.
pub const LZ4_HC_LEVEL: i32 = 9;

/// The largest compressed chunk the kernel accepts: `LZ4_compressBound(8 MiB)`.
fn max_compressed_chunk() -> usize {
    LZ4_LEGACY_CHUNK + LZ4_LEGACY_CHUNK / 255 + 16
}

/// Writes an LZ4 legacy stream of everything written to it. Call [`Lz4LegacyWriter::finish`]:
/// dropping it loses the last chunk.
#[derive(Debug)]
pub struct Lz4LegacyWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> Lz4LegacyWriter<W> {
    pub fn new(mut inner: W) -> io::Result<Self> {
        inner.write_all(&LZ4_LEGACY_MAGIC)?;
        Ok(Self {
            inner,
            pending: Vec::with_capacity(LZ4_LEGACY_CHUNK),
        })
    }

    fn write_chunk(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let block = lz4::block::compress(
            &self.pending,
            Some(lz4::block::CompressionMode::HIGHCOMPRESSION(LZ4_HC_LEVEL)),
            false,
        )?;
        let length = u32::try_from(block.len())
            .map_err(|_| io::Error::other("an LZ4 block longer than 4 GiB"))?;
        self.inner.write_all(&length.to_le_bytes())?;
        self.inner.write_all(&block)?;
        self.pending.clear();
        Ok(())
    }

    /// Compresses what is buffered, writes the end mark and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_chunk()?;
        self.inner.write_all(&LZ4_LEGACY_END)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Lz4LegacyWriter<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let room = LZ4_LEGACY_CHUNK - self.pending.len();
        let taken = buffer.len().min(room);
        self.pending.extend_from_slice(&buffer[..taken]);
        if self.pending.len() == LZ4_LEGACY_CHUNK {
            self.write_chunk()?;
        }
        Ok(taken)
    }

    /// Flushes the inner writer only: ending a chunk early would change the bytes.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decodes the legacy stream that starts at `bytes[0]` (its magic), as the kernel does: a
/// repeated magic is skipped; a zero chunk length ends it (the 4 bytes are consumed), and
/// so does the end of `bytes` or fewer than 4 zero bytes before it. Returns the output and
/// the bytes consumed.
pub fn decompress_lz4_legacy(
    bytes: &[u8],
    file_offset: u64,
) -> Result<(Vec<u8>, usize), ArchiveError> {
    let malformed = |at: usize, reason: String| ArchiveError::Malformed {
        offset: file_offset + at as u64,
        reason,
    };
    if !bytes.starts_with(&LZ4_LEGACY_MAGIC) {
        return Err(malformed(0, "not an LZ4 legacy stream".to_string()));
    }
    let mut position = LZ4_LEGACY_MAGIC.len();
    let mut output = Vec::new();
    while position < bytes.len() {
        let Some(header) = bytes.get(position..position + 4) else {
            let rest = &bytes[position..];
            if rest.iter().all(|byte| *byte == 0) {
                position = bytes.len();
                break;
            }
            return Err(malformed(
                position,
                format!(
                    "the LZ4 stream ends {} byte(s) into a chunk header (truncated file?)",
                    rest.len()
                ),
            ));
        };
        if header == LZ4_LEGACY_MAGIC {
            position += 4;
            continue;
        }
        let length = u32::from_le_bytes(header.try_into().expect("four bytes")) as usize;
        if length == 0 {
            position += 4;
            break;
        }
        if length > max_compressed_chunk() {
            return Err(malformed(
                position,
                format!(
                    "LZ4 chunk length {length} is over {} (the kernel refuses it too); \
                     an archive appended to an LZ4 stream needs a zero chunk length before it",
                    max_compressed_chunk()
                ),
            ));
        }
        let start = position + 4;
        let Some(block) = bytes.get(start..start + length) else {
            return Err(malformed(
                position,
                format!(
                    "the LZ4 chunk says {length} bytes but only {} remain (truncated file?)",
                    bytes.len() - start
                ),
            ));
        };
        let capacity = i32::try_from(LZ4_LEGACY_CHUNK).expect("8 MiB fits i32");
        let decoded = lz4::block::decompress(block, Some(capacity))
            .map_err(|error| malformed(start, format!("LZ4 block does not decode: {error}")))?;
        output.extend_from_slice(&decoded);
        position = start + length;
    }
    Ok((output, position))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8], piece: usize) -> Vec<u8> {
        let mut writer = Lz4LegacyWriter::new(Vec::new()).unwrap();
        for part in data.chunks(piece.max(1)) {
            writer.write_all(part).unwrap();
        }
        writer.finish().unwrap()
    }

    fn sample(length: usize) -> Vec<u8> {
        // Compressible but not trivial: a counter's text with a changing stride.
        let mut data = Vec::with_capacity(length);
        let mut counter = 0u64;
        while data.len() < length {
            data.extend_from_slice(format!("{counter:x} ").as_bytes());
            counter = counter.wrapping_mul(6364136223846793005).wrapping_add(1) % 100_000;
        }
        data.truncate(length);
        data
    }

    #[test]
    fn round_trips_across_chunk_boundaries_whatever_the_write_sizes() {
        let data = sample(LZ4_LEGACY_CHUNK * 2 + 12_345);
        let one = compress(&data, 1 << 20);
        let other = compress(&data, 777);
        assert_eq!(one, other, "the write sizes reached the bytes");
        let (decoded, consumed) = decompress_lz4_legacy(&one, 0).unwrap();
        assert_eq!(consumed, one.len());
        assert!(decoded == data, "round trip changed the data");
        // Three chunks: two full ones and the rest, each no larger than the kernel allows.
        let first = u32::from_le_bytes(one[4..8].try_into().unwrap()) as usize;
        assert!(first > 0 && first <= max_compressed_chunk());
    }

    #[test]
    fn empty_input_is_the_magic_and_the_end_mark() {
        let bytes = compress(&[], 1);
        assert_eq!(bytes, [LZ4_LEGACY_MAGIC, LZ4_LEGACY_END].concat());
        assert_eq!(decompress_lz4_legacy(&bytes, 0).unwrap(), (Vec::new(), 8));
        // What `lz4 -l` writes (no end mark) is read to the end of the input.
        assert_eq!(
            decompress_lz4_legacy(&LZ4_LEGACY_MAGIC, 0).unwrap(),
            (Vec::new(), 4)
        );
    }

    #[test]
    fn the_end_mark_stops_decoding_before_what_follows_and_truncation_is_named() {
        let data = sample(100_000);
        let mut bytes = compress(&data, 4096);
        let length = bytes.len();
        assert_eq!(bytes[length - 4..], LZ4_LEGACY_END);
        bytes.extend_from_slice(b"070701 an appended archive");
        let (decoded, consumed) = decompress_lz4_legacy(&bytes, 0).unwrap();
        assert!(decoded == data);
        assert_eq!(
            consumed, length,
            "the bytes after the end mark are not the stream's"
        );

        let truncated = &bytes[..length - 4 - 10];
        let error = decompress_lz4_legacy(truncated, 100)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("at byte 104") && error.contains("remain (truncated file?)"),
            "{error}"
        );
    }

    #[test]
    fn the_lz4_tool_decodes_what_the_writer_wrote() {
        // The reference decoder, when the host has it (`cargo xtask test` installs lz4).
        let Ok(output) = std::process::Command::new("lz4").arg("--version").output() else {
            panic!("the lz4 tool is missing: apt-get install lz4 (cargo xtask test installs it)");
        };
        assert!(output.status.success());
        let data = sample(LZ4_LEGACY_CHUNK + 4321);
        let directory = tempfile::tempdir().unwrap();
        let compressed = directory.path().join("data.lz4");
        // Without kiln's end mark, which the tool (unlike the kernel) does not know.
        let bytes = compress(&data, 65536);
        std::fs::write(&compressed, &bytes[..bytes.len() - LZ4_LEGACY_END.len()]).unwrap();
        let decoded = std::process::Command::new("lz4")
            .args(["-d", "-c"])
            .arg(&compressed)
            .output()
            .unwrap();
        assert!(
            decoded.status.success(),
            "{}",
            String::from_utf8_lossy(&decoded.stderr)
        );
        assert!(decoded.stdout == data, "lz4 -d decoded other bytes");
    }
}
