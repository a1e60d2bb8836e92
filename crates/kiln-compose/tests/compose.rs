//! Layers built with the `tar` crate's writer (a real tar, as skopeo or
//! docker would hand over) stacked into one tree.

use kiln_archive::{ArchivePath, EntryKind};
use kiln_compose::{check_kernel_options, ComposeError, ComposedTree, RequiredKernelOption};

enum Item<'a> {
    Dir(&'a str),
    File(&'a str, &'a str, u32),
    Link(&'a str, &'a str),
    Symlink(&'a str, &'a str),
}

/// Writes a tar whose names are taken verbatim (even `..` or absolute ones,
/// which the `tar` crate's path setters would refuse), so bad layers can be built.
fn layer(items: &[Item<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_gnu();
        let (name, kind, data, link, mode): (&str, tar::EntryType, &[u8], Option<&str>, u32) =
            match item {
                Item::Dir(name) => (name, tar::EntryType::Directory, b"", None, 0o755),
                Item::File(name, data, mode) => {
                    (name, tar::EntryType::Regular, data.as_bytes(), None, *mode)
                }
                Item::Link(name, target) => (name, tar::EntryType::Link, b"", Some(target), 0o644),
                Item::Symlink(name, target) => {
                    (name, tar::EntryType::Symlink, b"", Some(target), 0o777)
                }
            };
        let raw = &mut header.as_gnu_mut().unwrap().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn path(text: &str) -> ArchivePath {
    ArchivePath::new(text).unwrap()
}

#[test]
fn layers_stack_and_remember_their_module() {
    let mut tree = ComposedTree::new();
    tree.apply_layer(
        "base",
        &layer(&[
            Item::Dir("etc/"),
            Item::File("etc/os-release", "ID=kiln\n", 0o644),
        ])[..],
    )
    .unwrap();
    tree.apply_layer(
        "sshd",
        &layer(&[
            Item::Dir("etc/"),
            Item::File("etc/dropbear/banner", "hi\n", 0o600),
        ])[..],
    )
    .unwrap();
    let origins: Vec<(String, String)> = tree
        .entries()
        .map(|composed| (composed.entry.path.display(), composed.module.clone()))
        .collect();
    insta::assert_debug_snapshot!(origins, @r#"
    [
        (
            "etc",
            "base",
        ),
        (
            "etc/dropbear",
            "sshd",
        ),
        (
            "etc/dropbear/banner",
            "sshd",
        ),
        (
            "etc/os-release",
            "base",
        ),
    ]
    "#);
    assert_eq!(tree.bytes_by_module().get("sshd"), Some(&3));
}

#[test]
fn different_contents_from_two_modules_is_an_error_naming_both() {
    let mut tree = ComposedTree::new();
    tree.apply_layer(
        "base",
        &layer(&[Item::File("etc/motd", "welcome\n", 0o644)])[..],
    )
    .unwrap();
    let error = tree
        .apply_layer(
            "debug",
            &layer(&[Item::File("etc/motd", "debug build\n", 0o644)])[..],
        )
        .unwrap_err();
    insta::assert_snapshot!(error.to_string(), @"modules `base` and `debug` both provide `etc/motd` with different contents; remove it from one of them, or whiteout it in `debug`");
    // The same bytes from two modules are not a conflict.
    tree.apply_layer(
        "again",
        &layer(&[Item::File("etc/motd", "welcome\n", 0o644)])[..],
    )
    .unwrap();
    assert_eq!(tree.get(&path("etc/motd")).unwrap().module, "base");
}

#[test]
fn whiteouts_remove_lower_paths_and_opaque_directories_empty_them() {
    let mut tree = ComposedTree::new();
    tree.apply_layer(
        "base",
        &layer(&[
            Item::File("etc/motd", "x\n", 0o644),
            Item::File("usr/share/doc/a", "a\n", 0o644),
            Item::File("usr/share/doc/b/c", "c\n", 0o644),
        ])[..],
    )
    .unwrap();
    tree.apply_layer(
        "minimal",
        &layer(&[
            Item::File("etc/.wh.motd", "", 0o644),
            Item::File("usr/share/doc/.wh..wh..opq", "", 0o644),
            Item::File(
                "usr/share/doc/README",
                "kept: same layer as the opaque marker\n",
                0o644,
            ),
        ])[..],
    )
    .unwrap();
    let paths: Vec<String> = tree
        .entries()
        .map(|composed| composed.entry.path.display())
        .collect();
    assert_eq!(
        paths,
        [
            "etc",
            "usr",
            "usr/share",
            "usr/share/doc",
            "usr/share/doc/README"
        ]
    );
}

#[test]
fn paths_that_escape_the_root_are_rejected() {
    let mut tree = ComposedTree::new();
    let error = tree
        .apply_layer(
            "evil",
            &layer(&[Item::File("../etc/passwd", "x", 0o644)])[..],
        )
        .unwrap_err();
    insta::assert_snapshot!(error.to_string(), @r#"module `evil`: invalid path "../etc/passwd" in its layer: invalid archive path "../etc/passwd": it contains a `..` component"#);
    let error = tree
        .apply_layer("evil", &layer(&[Item::File("/etc/passwd", "x", 0o644)])[..])
        .unwrap_err();
    insta::assert_snapshot!(error.to_string(), @r#"module `evil`: invalid path "/etc/passwd" in its layer: absolute paths are not allowed in a layer"#);

    tree.apply_layer("base", &layer(&[Item::Symlink("lib", "/run/host/lib")])[..])
        .unwrap();
    let error = tree
        .apply_layer(
            "evil",
            &layer(&[Item::File("lib/libc.so.6", "x", 0o755)])[..],
        )
        .unwrap_err();
    assert!(matches!(error, ComposeError::ThroughSymlink { .. }));
    insta::assert_snapshot!(error.to_string(), @"module `evil`: `lib/libc.so.6` would be written through the symlink `lib` (from module `base`); paths must stay inside the image root");
}

#[test]
fn hard_links_survive_their_target_being_whited_out() {
    let mut tree = ComposedTree::new();
    tree.apply_layer(
        "busybox",
        &layer(&[
            Item::File("bin/busybox", "ELF", 0o755),
            Item::Link("bin/sh", "bin/busybox"),
            Item::Link("bin/ls", "bin/busybox"),
        ])[..],
    )
    .unwrap();
    tree.apply_layer(
        "slim",
        &layer(&[Item::File("bin/.wh.busybox", "", 0o644)])[..],
    )
    .unwrap();
    assert!(tree.get(&path("bin/busybox")).is_none());
    assert!(matches!(
        tree.get(&path("bin/ls")).unwrap().entry.kind,
        EntryKind::File(_)
    ));
    assert_eq!(
        tree.get(&path("bin/sh")).unwrap().entry.kind,
        EntryKind::HardLink {
            target: path("bin/ls")
        }
    );
    let mut archive = tree.to_archive_tree();
    archive.complete().unwrap();
}

#[test]
fn a_hard_link_to_nothing_is_rejected() {
    let mut tree = ComposedTree::new();
    let error = tree
        .apply_layer("broken", &layer(&[Item::Link("bin/sh", "bin/busybox")])[..])
        .unwrap_err();
    insta::assert_snapshot!(error.to_string(), @"module `broken`: hard link `bin/sh` points at `bin/busybox`, which is not a regular file in this layer or below");
}

#[test]
fn missing_kernel_options_name_the_module_that_needs_them() {
    let config = "CONFIG_OVERLAY_FS=m\nCONFIG_PACKET=y\n# CONFIG_VLAN_8021Q is not set\n";
    let required = [
        RequiredKernelOption {
            module: "dhcp".into(),
            option: "CONFIG_PACKET".into(),
            module_allowed: false,
        },
        RequiredKernelOption {
            module: "dhcp".into(),
            option: "CONFIG_VLAN_8021Q".into(),
            module_allowed: true,
        },
        RequiredKernelOption {
            module: "docker".into(),
            option: "CONFIG_OVERLAY_FS".into(),
            module_allowed: false,
        },
    ];
    let missing = check_kernel_options(&required, config).unwrap_err();
    insta::assert_snapshot!(missing.join("\n"), @r"
    module `dhcp` needs CONFIG_VLAN_8021Q=y or m but the kernel has it unset
    module `docker` needs CONFIG_OVERLAY_FS=y but the kernel has CONFIG_OVERLAY_FS=m
    ");
}

#[test]
fn prune_removes_a_subtree_and_counts_its_bytes() {
    let mut tree = ComposedTree::new();
    tree.apply_layer(
        "base",
        &layer(&[
            Item::Dir("usr/"),
            Item::Dir("usr/share/"),
            Item::Dir("usr/share/doc/"),
            Item::File("usr/share/doc/copyright", "twelve bytes", 0o644),
            Item::Dir("usr/share/docs-are-not-doc/"),
            Item::File("usr/share/docs-are-not-doc/keep", "kept", 0o644),
        ])[..],
    )
    .unwrap();
    assert_eq!(tree.prune(&path("usr/share/doc")), 12);
    let left: Vec<String> = tree
        .entries()
        .map(|composed| composed.entry.path.display())
        .collect();
    assert_eq!(
        left,
        [
            "usr",
            "usr/share",
            "usr/share/docs-are-not-doc",
            "usr/share/docs-are-not-doc/keep"
        ]
    );
    assert_eq!(
        tree.prune(&path("usr/share/doc")),
        0,
        "pruning what is not there removes nothing"
    );
}

#[test]
fn a_star_component_prunes_the_same_directory_under_every_name() {
    let mut tree = ComposedTree::new();
    tree.apply_layer(
        "libc6",
        &layer(&[
            Item::Dir("usr/"),
            Item::Dir("usr/lib/"),
            Item::Dir("usr/lib/x86_64-linux-gnu/"),
            Item::Dir("usr/lib/x86_64-linux-gnu/gconv/"),
            Item::File("usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", "sixteen", 0o644),
            Item::File("usr/lib/x86_64-linux-gnu/libc.so.6", "libc", 0o755),
            Item::Dir("usr/lib/aarch64-linux-gnu/"),
            Item::Dir("usr/lib/aarch64-linux-gnu/gconv/"),
            Item::File("usr/lib/aarch64-linux-gnu/gconv/IBM1390.so", "ibm", 0o644),
            Item::Dir("usr/lib/gconv-not-this/"),
            Item::File("usr/lib/gconv-not-this/keep", "kept", 0o644),
        ])[..],
    )
    .unwrap();
    assert_eq!(tree.prune_matching("usr/lib/*/gconv"), 7 + 3);
    let left: Vec<String> = tree
        .entries()
        .map(|composed| composed.entry.path.display())
        .collect();
    assert_eq!(
        left,
        [
            "usr",
            "usr/lib",
            "usr/lib/aarch64-linux-gnu",
            "usr/lib/gconv-not-this",
            "usr/lib/gconv-not-this/keep",
            "usr/lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu/libc.so.6",
        ]
    );
    assert_eq!(tree.prune_matching("usr/lib/*/gconv"), 0);
}

/// A file whose contents cannot be read is an error naming it, in the conflict check and in
/// the manifest's records: never the sha256 of zero bytes (which once let two different
/// unreadable files "agree" and reached manifest.json as the digest of nothing).
#[test]
fn an_unreadable_file_is_an_error_naming_it_not_the_digest_of_nothing() {
    use kiln_archive::{Content, Entry};
    let directory = tempfile::tempdir().unwrap();
    let gone = directory.path().join("gone");
    let mut tree = ComposedTree::new();
    tree.add(
        "base",
        Entry::file(
            path("etc/motd"),
            0o644,
            Content::File {
                path: gone.clone(),
                size: 3,
            },
        ),
    )
    .unwrap();
    let expected = ComposeError::ReadContent {
        path: gone.clone(),
        entry: "etc/motd".to_string(),
        message: "No such file or directory (os error 2)".to_string(),
    };
    assert_eq!(tree.file_records().unwrap_err(), expected);
    assert!(
        expected.to_string().starts_with(&format!(
            "reading {} (the contents of `etc/motd`) to hash it: No such file or directory",
            gone.display()
        )),
        "{expected}"
    );
    let other = tree.add(
        "extra",
        Entry::file(
            path("etc/motd"),
            0o644,
            Content::File {
                path: directory.path().join("also-gone"),
                size: 3,
            },
        ),
    );
    assert_eq!(other.unwrap_err(), expected);
}
