//! Reads initramfs files the way the kernel does: a sequence of newc
//! archives, plain or compressed, with zero padding between them.
//!
//! The reader keeps every header field as written (inode numbers, link
//! counts, mtimes), because `diff` has to explain why two archives differ.

use sha2::{Digest, Sha256};

use crate::lz4::{decompress_lz4_legacy, LZ4_LEGACY_MAGIC};
use crate::newc::{HEADER_LENGTH, NEWC_CRC_MAGIC, NEWC_MAGIC, TRAILER_NAME};
use crate::ArchiveError;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How a segment of an initramfs file was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEncoding {
    Plain,
    Zstd,
    Lz4,
}

impl SegmentEncoding {
    pub fn name(self) -> &'static str {
        match self {
            SegmentEncoding::Plain => "uncompressed",
            SegmentEncoding::Zstd => "zstd",
            SegmentEncoding::Lz4 => "lz4",
        }
    }
}

/// One stretch of the file: an uncompressed archive, or one compressed
/// stream (which may itself hold several archives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub encoding: SegmentEncoding,
    /// Where the segment starts and how many bytes of the file it spans.
    pub file_offset: u64,
    pub file_length: u64,
    /// sha256 of the uncompressed cpio bytes, to tell a difference in
    /// compression from a difference in contents.
    pub cpio_sha256: [u8; 32],
    pub members: Vec<RawMember>,
}

/// One archive member, every header field as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct RawMember {
    pub name: Vec<u8>,
    pub inode: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub link_count: u32,
    pub mtime: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub check: u32,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RawMember {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RawMember")
            .field("name", &String::from_utf8_lossy(&self.name))
            .field("inode", &self.inode)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("link_count", &self.link_count)
            .field("mtime", &self.mtime)
            .field("rdev", &(self.rdev_major, self.rdev_minor))
            .field("data_length", &self.data.len())
            .finish()
    }
}

/// Parses a whole initramfs file.
pub fn read_initramfs(bytes: &[u8]) -> Result<Vec<Segment>, ArchiveError> {
    let mut segments = Vec::new();
    let mut position = 0usize;
    loop {
        while position < bytes.len() && bytes[position] == 0 {
            position += 1;
        }
        if position >= bytes.len() {
            break;
        }
        let rest = &bytes[position..];
        if rest.starts_with(b"07070") {
            let (members, consumed) = read_one_archive(rest, position as u64)?;
            segments.push(Segment {
                encoding: SegmentEncoding::Plain,
                file_offset: position as u64,
                file_length: consumed as u64,
                cpio_sha256: Sha256::digest(&rest[..consumed]).into(),
                members,
            });
            position += consumed;
        } else if rest.starts_with(&ZSTD_MAGIC) || rest.starts_with(&LZ4_LEGACY_MAGIC) {
            let encoding = if rest.starts_with(&ZSTD_MAGIC) {
                SegmentEncoding::Zstd
            } else {
                SegmentEncoding::Lz4
            };
            let (decompressed, consumed) = match encoding {
                SegmentEncoding::Zstd => decompress_zstd_frames(rest, position as u64)?,
                _ => decompress_lz4_legacy(rest, position as u64)?,
            };
            let mut members = Vec::new();
            let mut inner = 0usize;
            loop {
                while inner < decompressed.len() && decompressed[inner] == 0 {
                    inner += 1;
                }
                if inner >= decompressed.len() {
                    break;
                }
                let (more, used) =
                    read_one_archive(&decompressed[inner..], inner as u64).map_err(|error| {
                        ArchiveError::Malformed {
                            offset: position as u64,
                            reason: format!(
                                "inside the {} stream that starts here: {error}",
                                encoding.name()
                            ),
                        }
                    })?;
                members.extend(more);
                inner += used;
            }
            segments.push(Segment {
                encoding,
                file_offset: position as u64,
                file_length: consumed as u64,
                cpio_sha256: Sha256::digest(&decompressed).into(),
                members,
            });
            position += consumed;
        } else {
            return Err(ArchiveError::Malformed {
                offset: position as u64,
                reason: format!(
                    "expected a newc header (070701), a zstd stream or an LZ4 legacy stream, found {}",
                    describe_magic(rest)
                ),
            });
        }
    }
    if segments.is_empty() {
        return Err(ArchiveError::Malformed {
            offset: 0,
            reason: "the file holds no archive".to_string(),
        });
    }
    Ok(segments)
}

fn describe_magic(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(6)];
    let known = if head.starts_with(&[0x1f, 0x8b]) {
        " (gzip: not supported, recompress with zstd or lz4 -l)"
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
        " (xz: not supported, recompress with zstd or lz4 -l)"
    } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        " (LZ4 frame format: the kernel reads only the legacy format, recompress with lz4 -l)"
    } else if head.starts_with(b"070707") {
        " (old binary/odc cpio: only newc is supported)"
    } else {
        ""
    };
    format!("bytes {}{known}", hex::encode(head))
}

/// Decompresses consecutive zstd frames starting at `bytes[0]`; returns the
/// output and how many input bytes the frames spanned.
fn decompress_zstd_frames(
    bytes: &[u8],
    file_offset: u64,
) -> Result<(Vec<u8>, usize), ArchiveError> {
    let mut consumed = 0usize;
    let mut output = Vec::new();
    while bytes[consumed..].starts_with(&ZSTD_MAGIC) {
        let frame_length = zstd::zstd_safe::find_frame_compressed_size(&bytes[consumed..])
            .map_err(|code| ArchiveError::Malformed {
                offset: file_offset + consumed as u64,
                reason: format!(
                    "broken zstd frame: {}",
                    zstd::zstd_safe::get_error_name(code)
                ),
            })?;
        let frame = &bytes[consumed..consumed + frame_length];
        let decoded = zstd::stream::decode_all(frame).map_err(|error| ArchiveError::Malformed {
            offset: file_offset + consumed as u64,
            reason: format!("zstd frame does not decompress: {error}"),
        })?;
        output.extend_from_slice(&decoded);
        consumed += frame_length;
    }
    Ok((output, consumed))
}

/// Reads members until the trailer; returns them (without the trailer) and
/// the bytes consumed including padding after the trailer up to 4 bytes.
pub fn read_one_archive(
    bytes: &[u8],
    base_offset: u64,
) -> Result<(Vec<RawMember>, usize), ArchiveError> {
    let mut members = Vec::new();
    let mut position = 0usize;
    loop {
        let offset = base_offset + position as u64;
        let malformed = |reason: String| ArchiveError::Malformed { offset, reason };
        let Some(header) = bytes.get(position..position + HEADER_LENGTH) else {
            return Err(malformed(
                "truncated newc header (the archive ends before its trailer)".to_string(),
            ));
        };
        if &header[..6] != NEWC_MAGIC && &header[..6] != NEWC_CRC_MAGIC {
            return Err(malformed(format!(
                "bad newc magic {:?}",
                String::from_utf8_lossy(&header[..6])
            )));
        }
        let mut fields = [0u32; 13];
        for (index, field) in fields.iter_mut().enumerate() {
            let text = &header[6 + index * 8..6 + (index + 1) * 8];
            *field = parse_hex_field(text).ok_or_else(|| {
                malformed(format!(
                    "header field {} is not 8 hex digits: {:?}",
                    FIELD_NAMES[index],
                    String::from_utf8_lossy(text)
                ))
            })?;
        }
        let [inode, mode, uid, gid, link_count, mtime, file_size, dev_major, dev_minor, rdev_major, rdev_minor, name_size, check] =
            fields;
        let name_size = name_size as usize;
        if name_size == 0 {
            return Err(malformed("name size is zero".to_string()));
        }
        let name_start = position + HEADER_LENGTH;
        let Some(name_with_nul) = bytes.get(name_start..name_start + name_size) else {
            return Err(malformed("truncated name".to_string()));
        };
        if name_with_nul[name_size - 1] != 0 {
            return Err(malformed("name is not NUL-terminated".to_string()));
        }
        let name = name_with_nul[..name_size - 1].to_vec();
        let data_start = align4(name_start + name_size);
        let data_end = data_start + file_size as usize;
        let Some(data) = bytes.get(data_start..data_end) else {
            return Err(malformed(format!(
                "truncated data for {:?}: header says {file_size} bytes",
                String::from_utf8_lossy(&name)
            )));
        };
        position = align4(data_end).min(bytes.len());
        if name == TRAILER_NAME {
            return Ok((members, position));
        }
        members.push(RawMember {
            name,
            inode,
            mode,
            uid,
            gid,
            link_count,
            mtime,
            dev_major,
            dev_minor,
            rdev_major,
            rdev_minor,
            check,
            data: data.to_vec(),
        });
    }
}

const FIELD_NAMES: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];

fn parse_hex_field(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?;
    if !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

fn align4(value: usize) -> usize {
    (value + 3) & !3
}
