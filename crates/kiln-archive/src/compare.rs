//! Explains how two initramfs files differ: the tool for "two builds do not
//! match". It works from the top down: whole bytes, segment structure, which
//! paths exist, then each path's metadata and contents, and finally, when no
//! entry differs, whether the difference is order, header numbering or
//! compression.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::listing::{inspect_segments, mode_string, InspectedEntry};
use crate::reader::{read_initramfs, Segment};
use crate::ArchiveError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// True when the two files are byte for byte the same.
    pub identical: bool,
    /// One finding per line, most important first.
    pub findings: Vec<String>,
}

impl Comparison {
    pub fn render(&self) -> String {
        let mut text = self.findings.join("\n");
        text.push('\n');
        text
    }
}

/// Compares two initramfs files given as bytes; `names` label them in output.
pub fn compare_initramfs(
    left: &[u8],
    right: &[u8],
    names: (&str, &str),
) -> Result<Comparison, ArchiveError> {
    let (left_name, right_name) = names;
    if left == right {
        return Ok(Comparison {
            identical: true,
            findings: vec![format!(
                "identical: {} bytes, sha256 {}",
                left.len(),
                hex::encode(Sha256::digest(left))
            )],
        });
    }
    let left_segments = read_initramfs(left)?;
    let right_segments = read_initramfs(right)?;
    let mut findings = vec![format!(
        "differ: {left_name} is {} bytes (sha256 {}), {right_name} is {} bytes (sha256 {})",
        left.len(),
        short_digest(left),
        right.len(),
        short_digest(right)
    )];
    compare_segments(&left_segments, &right_segments, names, &mut findings);

    let left_entries = inspect_segments(&left_segments);
    let right_entries = inspect_segments(&right_segments);
    let entry_findings_before = findings.len();
    compare_entries(&left_entries, &right_entries, names, &mut findings);
    if findings.len() == entry_findings_before {
        explain_identical_entries(
            &left_segments,
            &right_segments,
            &left_entries,
            &right_entries,
            &mut findings,
        );
    }
    Ok(Comparison {
        identical: false,
        findings,
    })
}

fn short_digest(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

fn compare_segments(
    left: &[Segment],
    right: &[Segment],
    names: (&str, &str),
    findings: &mut Vec<String>,
) {
    let describe = |segments: &[Segment]| {
        segments
            .iter()
            .map(|segment| {
                format!(
                    "{} ({} entries)",
                    segment.encoding.name(),
                    segment.members.len()
                )
            })
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let (left_shape, right_shape) = (describe(left), describe(right));
    if left_shape != right_shape {
        findings.push(format!(
            "segments: {} has {left_shape}; {} has {right_shape}",
            names.0, names.1
        ));
    }
}

fn compare_entries(
    left: &[InspectedEntry],
    right: &[InspectedEntry],
    names: (&str, &str),
    findings: &mut Vec<String>,
) {
    // A later member for the same path replaces the earlier one when the
    // kernel unpacks, so the last one is what counts.
    let index = |entries: &[InspectedEntry]| -> BTreeMap<String, InspectedEntry> {
        entries
            .iter()
            .map(|entry| (entry.path.clone(), entry.clone()))
            .collect()
    };
    let (left_map, right_map) = (index(left), index(right));
    for path in left_map
        .keys()
        .filter(|path| !right_map.contains_key(*path))
    {
        findings.push(format!("only in {}: {path}", names.0));
    }
    for path in right_map
        .keys()
        .filter(|path| !left_map.contains_key(*path))
    {
        findings.push(format!("only in {}: {path}", names.1));
    }
    for (path, left_entry) in &left_map {
        let Some(right_entry) = right_map.get(path) else {
            continue;
        };
        let mut changes = Vec::new();
        if left_entry.mode != right_entry.mode {
            changes.push(format!(
                "mode {} → {}",
                mode_string(left_entry.mode),
                mode_string(right_entry.mode)
            ));
        }
        if (left_entry.uid, left_entry.gid) != (right_entry.uid, right_entry.gid) {
            changes.push(format!(
                "owner {}:{} → {}:{}",
                left_entry.uid, left_entry.gid, right_entry.uid, right_entry.gid
            ));
        }
        if left_entry.size != right_entry.size {
            changes.push(format!("size {} → {}", left_entry.size, right_entry.size));
        }
        if left_entry.sha256 != right_entry.sha256 {
            changes.push(format!(
                "contents sha256 {} → {}",
                left_entry
                    .sha256
                    .as_deref()
                    .map_or("-", |digest| &digest[..16]),
                right_entry
                    .sha256
                    .as_deref()
                    .map_or("-", |digest| &digest[..16])
            ));
        }
        if left_entry.symlink_target != right_entry.symlink_target {
            changes.push(format!(
                "symlink target {:?} → {:?}",
                left_entry.symlink_target.as_deref().unwrap_or(""),
                right_entry.symlink_target.as_deref().unwrap_or("")
            ));
        }
        if left_entry.device != right_entry.device {
            changes.push(format!(
                "device {:?} → {:?}",
                left_entry.device, right_entry.device
            ));
        }
        if left_entry.hard_link.map(|(_, names)| names)
            != right_entry.hard_link.map(|(_, names)| names)
        {
            changes.push(format!(
                "hard-link names {} → {}",
                left_entry.hard_link.map_or(1, |(_, names)| names),
                right_entry.hard_link.map_or(1, |(_, names)| names)
            ));
        }
        if left_entry.mtime != right_entry.mtime {
            changes.push(format!(
                "mtime {} → {} (is SOURCE_DATE_EPOCH the same?)",
                left_entry.mtime, right_entry.mtime
            ));
        }
        if !changes.is_empty() {
            findings.push(format!("changed: {path}: {}", changes.join(", ")));
        }
    }
}

/// Called when every path has the same type, metadata and contents on both
/// sides: says what else can make the bytes differ.
fn explain_identical_entries(
    left_segments: &[Segment],
    right_segments: &[Segment],
    left: &[InspectedEntry],
    right: &[InspectedEntry],
    findings: &mut Vec<String>,
) {
    findings.push("every path has the same type, metadata and contents on both sides".to_string());
    let left_order: Vec<&str> = left.iter().map(|entry| entry.path.as_str()).collect();
    let right_order: Vec<&str> = right.iter().map(|entry| entry.path.as_str()).collect();
    if left_order != right_order {
        let position = left_order
            .iter()
            .zip(&right_order)
            .position(|(a, b)| a != b)
            .unwrap_or(left_order.len().min(right_order.len()));
        findings.push(format!(
            "order: entries are in a different order from position {position} ({:?} vs {:?})",
            left_order.get(position).copied().unwrap_or("<end>"),
            right_order.get(position).copied().unwrap_or("<end>")
        ));
        return;
    }
    if let Some((a, b)) = left.iter().zip(right).find(|(a, b)| a.inode != b.inode) {
        findings.push(format!(
            "headers: inode numbers differ (first at {}: {} vs {}); the archives number inodes differently",
            a.path, a.inode, b.inode
        ));
        return;
    }
    let same_cpio = left_segments.len() == right_segments.len()
        && left_segments
            .iter()
            .zip(right_segments)
            .all(|(a, b)| a.cpio_sha256 == b.cpio_sha256);
    if same_cpio {
        findings.push(
            "compression: the uncompressed cpio streams are identical; only the compressed bytes differ \
             (zstd level, zstd library version, or single- vs multi-threaded mode)"
                .to_string(),
        );
    } else {
        findings.push(
            "headers: the cpio streams differ in fields that listings do not show \
             (device numbers, link counts of directories, check field, or padding)"
                .to_string(),
        );
    }
}
