//! Reading a Debian binary package (`.deb`, see deb(5)): an `ar` archive of `debian-binary`,
//! `control.tar[.gz|.xz|.zst]` and `data.tar[.gz|.xz|.zst]`, read as a stream.

use std::io::{self, Read};

use crate::layer::{
    LayerError, LayerFileAttributes, LayerFileContents, LayerInode, LayerInodeKind, LayerPath,
    LayerTree,
};

/// Errors while reading a `.deb`. Each names the file and, where there is one, the member.
#[derive(Debug, thiserror::Error)]
pub enum DebianPackageError {
    /// The outer `ar` archive is unreadable.
    #[error("cannot read {deb_file_name} as a debian package (an ar archive): {source}; the file is truncated or not a .deb, fetch it again")]
    ReadArchive {
        /// The `.deb`.
        deb_file_name: String,
        /// The cause.
        source: io::Error,
    },
    /// The first member is not `debian-binary`.
    #[error("{deb_file_name} starts with member {found:?} instead of debian-binary: it is not a debian binary package")]
    NotADebianPackage {
        /// The `.deb`.
        deb_file_name: String,
        /// The first member's name.
        found: String,
    },
    /// `debian-binary` is not `2.x`.
    #[error("{deb_file_name} says format {found:?} in debian-binary: kiln reads format 2.x packages only")]
    UnsupportedFormatVersion {
        /// The `.deb`.
        deb_file_name: String,
        /// The member's contents.
        found: String,
    },
    /// `control.tar.bz2`, `data.tar.lzma` and the like.
    #[error("{member} in {deb_file_name} is not a supported compression: expected xz, zst or gz (or an uncompressed tar); rebuild the package with `dpkg-deb -Zxz`")]
    UnsupportedCompression {
        /// The `.deb`.
        deb_file_name: String,
        /// The member.
        member: String,
    },
    /// No `control.tar*` or no `data.tar*`.
    #[error("{deb_file_name} has no {member_kind} member: the file is truncated or not a binary package; fetch it again")]
    MissingMember {
        /// The `.deb`.
        deb_file_name: String,
        /// `control.tar.*` or `data.tar.*`.
        member_kind: &'static str,
    },
    /// Two `control.tar*` or two `data.tar*` members.
    #[error("{deb_file_name} has two {member_kind} members ({first} and {second}): it is not a valid debian package")]
    DuplicateMember {
        /// The `.deb`.
        deb_file_name: String,
        /// `control.tar.*` or `data.tar.*`.
        member_kind: &'static str,
        /// The first one.
        first: String,
        /// The second one.
        second: String,
    },
    /// A member that deb(5) does not allow (only names starting with `_` may be added).
    #[error("{deb_file_name} has an unexpected member {member:?}: deb(5) allows only debian-binary, control.tar*, data.tar* and members starting with `_`")]
    UnexpectedMember {
        /// The `.deb`.
        deb_file_name: String,
        /// The member.
        member: String,
    },
    /// A member that cannot be decompressed or read as tar.
    #[error("cannot read {member} in {deb_file_name}: {source}; the package is corrupt or truncated, fetch it again")]
    ReadMember {
        /// The `.deb`.
        deb_file_name: String,
        /// The member.
        member: String,
        /// The cause.
        source: io::Error,
    },
    /// `control.tar*` without a `control` file.
    #[error("{member} in {deb_file_name} has no ./control file: the package is corrupt")]
    MissingControlFile {
        /// The `.deb`.
        deb_file_name: String,
        /// The member.
        member: String,
    },
    /// A control file without `Package`, `Version` or `Architecture`.
    #[error("the control file of {deb_file_name} has no {field} field: the package is corrupt")]
    MissingControlField {
        /// The `.deb`.
        deb_file_name: String,
        /// The missing field.
        field: &'static str,
    },
    /// A tar entry type that a layer cannot carry (GNU volume headers, …).
    #[error("entry {path} in {member} of {deb_file_name} has tar type {entry_type:?}: a kiln layer carries regular files, directories, symlinks, hard links, devices and fifos only")]
    UnsupportedTarEntry {
        /// The `.deb`.
        deb_file_name: String,
        /// The member.
        member: String,
        /// The entry's path.
        path: String,
        /// The tar type flag.
        entry_type: char,
    },
    /// An entry with extended attributes or ACLs in pax headers.
    #[error("entry {path} in {member} of {deb_file_name} carries pax record {key}: kiln layers do not carry extended attributes or ACLs yet, and dropping them silently (file capabilities!) would change the package; open an issue with the package name")]
    ExtendedAttributeNotSupported {
        /// The `.deb`.
        deb_file_name: String,
        /// The member.
        member: String,
        /// The entry's path.
        path: String,
        /// The pax key.
        key: String,
    },
    /// A path problem (`..`, duplicates, dangling hard links).
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// The control fields kiln needs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DebianPackageControl {
    /// `Package:`.
    pub package: String,
    /// `Version:`, with epoch if any (`1:1.35.0-4+deb12u1+b1`).
    pub version: String,
    /// `Architecture:` (`amd64`, `arm64`, `all`).
    pub architecture: String,
}

/// A `.deb`, read: its control fields and its data.tar as a layer tree.
#[derive(Debug)]
pub struct DebianPackage {
    /// Package, Version, Architecture.
    pub control: DebianPackageControl,
    /// The member the files came from (`data.tar.xz`, …).
    pub data_member_name: String,
    /// The files, ready to write as a layer.
    pub layer_tree: LayerTree,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberCompression {
    Uncompressed,
    Gzip,
    Xz,
    Zstd,
}

fn member_compression(
    deb_file_name: &str,
    member: &str,
    base: &str,
) -> Result<MemberCompression, DebianPackageError> {
    match &member[base.len()..] {
        "" => Ok(MemberCompression::Uncompressed),
        ".gz" => Ok(MemberCompression::Gzip),
        ".xz" => Ok(MemberCompression::Xz),
        ".zst" => Ok(MemberCompression::Zstd),
        _ => Err(DebianPackageError::UnsupportedCompression {
            deb_file_name: deb_file_name.to_owned(),
            member: member.to_owned(),
        }),
    }
}

fn decompressed<'reader>(
    compression: MemberCompression,
    reader: impl Read + 'reader,
) -> io::Result<Box<dyn Read + 'reader>> {
    Ok(match compression {
        MemberCompression::Uncompressed => Box::new(reader),
        MemberCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        MemberCompression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(reader)),
        MemberCompression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

/// Reads what is left of a member after its tar end marker, so that the decompressor checks
/// the stream's end and integrity check (xz index and CRC, gzip CRC, zstd frame end): a
/// truncated package must not pass because the tar reader stopped early.
fn drain_to_end(reader: &mut impl Read) -> io::Result<()> {
    io::copy(reader, &mut io::sink()).map(|_| ())
}

/// Reads a `.deb` from `reader`, named `deb_file_name` in errors and in the layer's source
/// name (the name never reaches the image). The root entry `./` of data.tar is not kept
/// (see [`LayerPath::normalise`]); owners and modes are kept as the package says.
pub fn read_debian_package(
    deb_file_name: &str,
    reader: impl Read,
) -> Result<DebianPackage, DebianPackageError> {
    let archive_error = |source: io::Error| DebianPackageError::ReadArchive {
        deb_file_name: deb_file_name.to_owned(),
        source,
    };
    let mut archive = ar::Archive::new(reader);
    let mut member_index = 0_usize;
    let mut control: Option<(String, DebianPackageControl)> = None;
    let mut data: Option<(String, LayerTree)> = None;
    while let Some(member) = archive.next_entry() {
        let mut member = member.map_err(archive_error)?;
        let member_name = String::from_utf8_lossy(member.header().identifier())
            .trim_end_matches('/')
            .to_owned();
        let read_error = |source: io::Error| DebianPackageError::ReadMember {
            deb_file_name: deb_file_name.to_owned(),
            member: member_name.clone(),
            source,
        };
        member_index += 1;
        if member_index == 1 {
            if member_name != "debian-binary" {
                return Err(DebianPackageError::NotADebianPackage {
                    deb_file_name: deb_file_name.to_owned(),
                    found: member_name,
                });
            }
            let mut format_version = String::new();
            member
                .read_to_string(&mut format_version)
                .map_err(read_error)?;
            if !format_version.starts_with("2.") {
                return Err(DebianPackageError::UnsupportedFormatVersion {
                    deb_file_name: deb_file_name.to_owned(),
                    found: format_version,
                });
            }
            continue;
        }
        if member_name.starts_with("control.tar") {
            if let Some((first, _)) = &control {
                return Err(DebianPackageError::DuplicateMember {
                    deb_file_name: deb_file_name.to_owned(),
                    member_kind: "control.tar.*",
                    first: first.clone(),
                    second: member_name,
                });
            }
            let compression = member_compression(deb_file_name, &member_name, "control.tar")?;
            let mut reader = decompressed(compression, &mut member).map_err(read_error)?;
            let fields = read_control_member(deb_file_name, &member_name, &mut reader)?;
            drain_to_end(&mut reader).map_err(read_error)?;
            control = Some((member_name, fields));
        } else if member_name.starts_with("data.tar") {
            if let Some((first, _)) = &data {
                return Err(DebianPackageError::DuplicateMember {
                    deb_file_name: deb_file_name.to_owned(),
                    member_kind: "data.tar.*",
                    first: first.clone(),
                    second: member_name,
                });
            }
            let compression = member_compression(deb_file_name, &member_name, "data.tar")?;
            let mut reader = decompressed(compression, &mut member).map_err(read_error)?;
            let tree = read_data_member(deb_file_name, &member_name, &mut reader)?;
            drain_to_end(&mut reader).map_err(read_error)?;
            data = Some((member_name, tree));
        } else if !member_name.starts_with('_') {
            return Err(DebianPackageError::UnexpectedMember {
                deb_file_name: deb_file_name.to_owned(),
                member: member_name,
            });
        }
    }
    if member_index == 0 {
        return Err(DebianPackageError::NotADebianPackage {
            deb_file_name: deb_file_name.to_owned(),
            found: String::new(),
        });
    }
    let missing = |member_kind| DebianPackageError::MissingMember {
        deb_file_name: deb_file_name.to_owned(),
        member_kind,
    };
    let (_, control) = control.ok_or_else(|| missing("control.tar.*"))?;
    let (data_member_name, layer_tree) = data.ok_or_else(|| missing("data.tar.*"))?;
    Ok(DebianPackage {
        control,
        data_member_name,
        layer_tree,
    })
}

fn read_control_member(
    deb_file_name: &str,
    member_name: &str,
    reader: impl Read,
) -> Result<DebianPackageControl, DebianPackageError> {
    let read_error = |source: io::Error| DebianPackageError::ReadMember {
        deb_file_name: deb_file_name.to_owned(),
        member: member_name.to_owned(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let path = entry.path_bytes();
        if LayerPath::normalise(&path, deb_file_name)?
            .is_some_and(|path| path.as_bytes() == b"control")
        {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(read_error)?;
            return parse_control_file(deb_file_name, &text);
        }
    }
    Err(DebianPackageError::MissingControlFile {
        deb_file_name: deb_file_name.to_owned(),
        member: member_name.to_owned(),
    })
}

/// Reads `Package`, `Version` and `Architecture` from a deb822 control paragraph.
fn parse_control_file(
    deb_file_name: &str,
    text: &str,
) -> Result<DebianPackageControl, DebianPackageError> {
    let field = |name: &'static str| {
        text.lines()
            .filter(|line| !line.starts_with([' ', '\t']))
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
            .filter(|value| !value.is_empty())
            .ok_or(DebianPackageError::MissingControlField {
                deb_file_name: deb_file_name.to_owned(),
                field: name,
            })
    };
    Ok(DebianPackageControl {
        package: field("Package")?,
        version: field("Version")?,
        architecture: field("Architecture")?,
    })
}

fn read_data_member(
    deb_file_name: &str,
    member_name: &str,
    reader: impl Read,
) -> Result<LayerTree, DebianPackageError> {
    let source_name = format!("{deb_file_name} member {member_name}");
    let read_error = |source: io::Error| DebianPackageError::ReadMember {
        deb_file_name: deb_file_name.to_owned(),
        member: member_name.to_owned(),
        source,
    };
    let mut tree = LayerTree::new(source_name.clone());
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let raw_path = entry.path_bytes().into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type == tar::EntryType::XGlobalHeader {
            // pax global headers carry defaults (often just a comment); dpkg-deb never writes
            // them, and none of their keys may change what kiln keeps.
            continue;
        }
        let mut uid = entry.header().uid().map_err(read_error)?;
        let mut gid = entry.header().gid().map_err(read_error)?;
        if let Some(pax_extensions) = entry.pax_extensions().map_err(read_error)? {
            for extension in pax_extensions {
                let extension = extension.map_err(read_error)?;
                let key = extension.key().map_err(|error| {
                    read_error(io::Error::new(io::ErrorKind::InvalidData, error))
                })?;
                let numeric_value = || {
                    extension
                        .value()
                        .ok()
                        .and_then(|value| value.parse::<u64>().ok())
                        .ok_or_else(|| {
                            read_error(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("pax record {key} is not a number"),
                            ))
                        })
                };
                match key {
                    "uid" => uid = numeric_value()?,
                    "gid" => gid = numeric_value()?,
                    _ if key.contains("xattr") || key.contains("acl") => {
                        return Err(DebianPackageError::ExtendedAttributeNotSupported {
                            deb_file_name: deb_file_name.to_owned(),
                            member: member_name.to_owned(),
                            path: String::from_utf8_lossy(&raw_path).into_owned(),
                            key: key.to_owned(),
                        })
                    }
                    // path, linkpath and size are applied by the tar crate; times and
                    // user/group names are normalised away.
                    _ => {}
                }
            }
        }
        let Some(path) = LayerPath::normalise(&raw_path, &source_name)? else {
            continue;
        };
        let attributes = LayerFileAttributes {
            mode: entry.header().mode().map_err(read_error)?,
            uid,
            gid,
        };
        let link_target = || {
            entry
                .link_name_bytes()
                .map(|link| link.into_owned())
                .ok_or_else(|| {
                    read_error(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("link {path} has no target"),
                    ))
                })
        };
        let device = |header: &tar::Header| -> Result<(u32, u32), DebianPackageError> {
            let major = header.device_major().map_err(read_error)?.unwrap_or(0);
            let minor = header.device_minor().map_err(read_error)?.unwrap_or(0);
            Ok((major, minor))
        };
        let kind = match entry_type {
            tar::EntryType::Directory => {
                tree.insert_directory(path, attributes)?;
                continue;
            }
            tar::EntryType::Link => {
                let target_bytes = link_target()?;
                let target =
                    LayerPath::normalise(&target_bytes, &source_name)?.ok_or_else(|| {
                        read_error(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("hard link {path} points at the root"),
                        ))
                    })?;
                tree.insert_hard_link(path, &target)?;
                continue;
            }
            tar::EntryType::Symlink => LayerInodeKind::Symlink {
                target: link_target()?,
            },
            tar::EntryType::Char => {
                let (major, minor) = device(entry.header())?;
                LayerInodeKind::CharacterDevice { major, minor }
            }
            tar::EntryType::Block => {
                let (major, minor) = device(entry.header())?;
                LayerInodeKind::BlockDevice { major, minor }
            }
            tar::EntryType::Fifo => LayerInodeKind::Fifo,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut contents = Vec::new();
                entry.read_to_end(&mut contents).map_err(read_error)?;
                LayerInodeKind::RegularFile(LayerFileContents::InMemory(contents))
            }
            other => {
                return Err(DebianPackageError::UnsupportedTarEntry {
                    deb_file_name: deb_file_name.to_owned(),
                    member: member_name.to_owned(),
                    path: path.to_string(),
                    entry_type: char::from(other.as_byte()),
                })
            }
        };
        tree.insert_inode(path, LayerInode { attributes, kind })?;
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_are_read_case_insensitively_and_continuations_ignored() {
        let control = parse_control_file(
            "foo.deb",
            "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nDescription: x\n Architecture: fake\narchitecture: amd64\n",
        )
        .unwrap();
        assert_eq!(control.package, "busybox-static");
        assert_eq!(control.version, "1:1.35.0-4+deb12u1+b1");
        assert_eq!(control.architecture, "amd64");
        let missing = parse_control_file("foo.deb", "Package: x\nVersion: 1\n").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "the control file of foo.deb has no Architecture field: the package is corrupt"
        );
    }
}
