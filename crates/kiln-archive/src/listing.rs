//! What an archive holds, per path, with hard links resolved: the view behind
//! `cargo xtask inspect` and `cargo xtask diff`.

use std::collections::HashMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::entry::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK};
use crate::reader::{RawMember, Segment};

/// One member as a user thinks of it: a regular file's size and digest are
/// the inode's, whichever of its names carried the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedEntry {
    /// Index of the segment (0-based) the member is in.
    pub segment: usize,
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: Option<String>,
    pub symlink_target: Option<String>,
    pub device: Option<(u32, u32)>,
    /// For a file with several names: the inode number and how many names.
    pub hard_link: Option<(u32, u32)>,
    pub inode: u32,
    pub mtime: u32,
}

impl InspectedEntry {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// Resolves each segment's members into entries, in archive order.
pub fn inspect_segments(segments: &[Segment]) -> Vec<InspectedEntry> {
    let mut entries = Vec::new();
    for (segment_index, segment) in segments.iter().enumerate() {
        // Inode (with its device) -> the data of whichever name carried it.
        let mut inode_data: HashMap<(u32, u32, u32), &[u8]> = HashMap::new();
        for member in &segment.members {
            if member.mode & S_IFMT == S_IFREG && member.link_count > 1 && !member.data.is_empty() {
                inode_data.insert(
                    (member.inode, member.dev_major, member.dev_minor),
                    &member.data,
                );
            }
        }
        for member in &segment.members {
            entries.push(inspect_member(segment_index, member, &inode_data));
        }
    }
    entries
}

fn inspect_member(
    segment: usize,
    member: &RawMember,
    inode_data: &HashMap<(u32, u32, u32), &[u8]>,
) -> InspectedEntry {
    let file_type = member.mode & S_IFMT;
    let mut entry = InspectedEntry {
        segment,
        path: String::from_utf8_lossy(&member.name).into_owned(),
        mode: member.mode,
        uid: member.uid,
        gid: member.gid,
        size: member.data.len() as u64,
        sha256: None,
        symlink_target: None,
        device: None,
        hard_link: None,
        inode: member.inode,
        mtime: member.mtime,
    };
    match file_type {
        S_IFREG => {
            let mut data: &[u8] = &member.data;
            if member.link_count > 1 {
                entry.hard_link = Some((member.inode, member.link_count));
                if let Some(carried) =
                    inode_data.get(&(member.inode, member.dev_major, member.dev_minor))
                {
                    data = carried;
                }
            }
            entry.size = data.len() as u64;
            entry.sha256 = Some(hex::encode(Sha256::digest(data)));
        }
        S_IFLNK => entry.symlink_target = Some(String::from_utf8_lossy(&member.data).into_owned()),
        S_IFCHR | S_IFBLK => entry.device = Some((member.rdev_major, member.rdev_minor)),
        _ => {}
    }
    entry
}

/// `ls -l`-style permission string, e.g. `-rwsr-xr-x`.
pub fn mode_string(mode: u32) -> String {
    let type_char = match mode & S_IFMT {
        S_IFDIR => 'd',
        S_IFREG => '-',
        S_IFLNK => 'l',
        S_IFCHR => 'c',
        S_IFBLK => 'b',
        S_IFIFO => 'p',
        S_IFSOCK => 's',
        _ => '?',
    };
    let mut text = String::with_capacity(10);
    text.push(type_char);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (index, (bit, letter)) in bits.iter().enumerate() {
        let set = mode & bit != 0;
        let special = match index {
            2 => (mode & 0o4000 != 0).then_some(if set { 's' } else { 'S' }),
            5 => (mode & 0o2000 != 0).then_some(if set { 's' } else { 'S' }),
            8 => (mode & 0o1000 != 0).then_some(if set { 't' } else { 'T' }),
            _ => None,
        };
        text.push(special.unwrap_or(if set { *letter } else { '-' }));
    }
    text
}

/// The text `cargo xtask inspect` prints: a line per segment, then a line per
/// entry: mode, owner, size (or device numbers), path, link target, digest.
pub fn render_listing(segments: &[Segment]) -> String {
    let entries = inspect_segments(segments);
    let mut text = String::new();
    for (index, segment) in segments.iter().enumerate() {
        let _ = writeln!(
            text,
            "# segment {}: {} cpio at byte {}, {} bytes, {} entries",
            index + 1,
            segment.encoding.name(),
            segment.file_offset,
            segment.file_length,
            segment.members.len()
        );
        for entry in entries.iter().filter(|entry| entry.segment == index) {
            let size = match entry.device {
                Some((major, minor)) => format!("{major},{minor}"),
                None => entry.size.to_string(),
            };
            let _ = write!(
                text,
                "{} {:>5}/{:<5} {:>10}  {}",
                mode_string(entry.mode),
                entry.uid,
                entry.gid,
                size,
                entry.path
            );
            if let Some(target) = &entry.symlink_target {
                let _ = write!(text, " -> {target}");
            }
            if let Some(digest) = &entry.sha256 {
                let _ = write!(text, "  sha256:{digest}");
            }
            if let Some((inode, names)) = entry.hard_link {
                let _ = write!(text, "  [inode {inode}, {names} names]");
            }
            text.push('\n');
        }
    }
    text
}
