//! The Nix flake, checked with what runs here: Nix 2.8 (`nix-bin`) without nixpkgs.
//!
//! nixpkgs cannot be fetched on these machines, so nothing here builds a derivation.
//! What is checked instead, for real:
//! - every `.nix` file of the repository parses (`nix-instantiate --parse`);
//! - `nix/pins.nix`, the only place the flake reads digests from, evaluated alone
//!   against a *modified copy* of kiln.lock, returns the modified hash: the flake's pins
//!   come from the lock and from nowhere else;
//! - the whole flake evaluated with a stub nixpkgs (`nix/tests/stub-nixpkgs`, whose
//!   builders return their arguments as data): the set of (url, sha256) its image and
//!   kernel derivations would fetch is exactly the lock's package list, its outputs
//!   are one kernel per (flavor, arch) and one image per (profile, arch), and each
//!   kernel merges the fragments in the order `kiln-kernel` does;
//! - `nix/kernel-config.sh`, the kernel derivation's merge and check, gives the same
//!   bytes and the same verdicts as `kiln_kernel::fragment::merge_fragments` and
//!   `kiln_kernel::verify::verify_options`.
//!
//! Nix runs with substituters disabled and no network access; evaluation that copies
//! sources (`builtins.path`) needs a writable store, so these tests run as root (as CI
//! does) and Nix creates `/nix` if it is missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use kiln_kernel::fragment::{self, Fragment};
use kiln_kernel::kconfig::KconfigIndex;
use kiln_kernel::{Arch, Flavor};
use kiln_tests::{run, workspace_root};
use serde_json::Value;

/// No substituter, no sandbox group (none exists here), flakes on: evaluation only ever
/// touches the local store.
const NIX_CONFIG: &str = "experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\nsandbox = false\n";

fn nix_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("NIX_CONFIG", NIX_CONFIG);
    command
}

/// Fails with what to install when Nix is missing; fails with what to do when the store
/// cannot be written (not root and no /nix).
fn require_nix() {
    let found = Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(found, "nix-instantiate not found: install the Debian package nix-bin (`cargo xtask test` installs it once xtask/src/host.rs lists it)");
    let store_usable = kiln_tests::is_root() || Path::new("/nix/store").is_dir();
    assert!(store_usable, "Nix needs a writable /nix/store for these evaluations: run the tests as root (as CI does), or create /nix owned by this user");
}

/// `nix-instantiate --eval --strict --json` of `expression`, evaluated in `directory`.
fn evaluate(directory: &Path, expression: &str) -> anyhow::Result<Value> {
    let output = run(nix_command("nix-instantiate").current_dir(directory).args([
        "--read-write-mode",
        "--eval",
        "--strict",
        "--json",
        "--expr",
        expression,
    ]))?;
    serde_json::from_slice(&output.stdout)
        .context("nix-instantiate printed something that is not JSON")
}

/// The flake's outputs, with nixpkgs and rust-overlay replaced by the stub.
fn flake_outputs_expression() -> &'static str {
    r#"(import ./flake.nix).outputs {
         self = { outPath = ./.; };
         nixpkgs = ./nix/tests/stub-nixpkgs;
         rust-overlay = { overlays.default = final: previous: { }; };
       }"#
}

fn read_lock(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (url, sha256) of every Debian package of every architecture, as the lock says.
fn lock_debian_fetches(lock: &Value) -> BTreeSet<(String, String)> {
    let mut fetches = BTreeSet::new();
    for architecture in lock["architectures"].as_object().unwrap().values() {
        for package in architecture["debian_packages"].as_array().unwrap() {
            let url = format!("mirror://debian/{}", package["filename"].as_str().unwrap());
            fetches.insert((url, package["sha256"].as_str().unwrap().to_owned()));
        }
    }
    fetches
}

fn lock_tarball_fetches(lock: &Value) -> BTreeSet<(String, String)> {
    let mut fetches = BTreeSet::new();
    for tarball in lock["source_tarballs"].as_array().unwrap() {
        for url in tarball["urls"].as_array().unwrap() {
            fetches.insert((
                url.as_str().unwrap().to_owned(),
                tarball["sha256"].as_str().unwrap().to_owned(),
            ));
        }
    }
    fetches
}

fn pairs(value: &Value) -> BTreeSet<(String, String)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["url"].as_str().unwrap().to_owned(),
                item["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A copy of what the flake reads (flake.nix, nix/, the lock and the directories whose
/// names become outputs) in a temporary directory, so the lock can be edited.
fn copy_flake_inputs(destination: &Path) {
    let root = workspace_root();
    for entry in walkdir::WalkDir::new(&root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|entry| {
            let relative = entry.path().strip_prefix(&root).unwrap();
            let top = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .into_owned();
            [
                "flake.nix",
                "flake.lock",
                "kiln.lock",
                "rust-toolchain.toml",
                "Cargo.toml",
                "Cargo.lock",
                "nix",
                "profiles",
                "modules",
                "kernel-configs",
            ]
            .contains(&top.as_str())
        })
    {
        let entry = entry.unwrap();
        let target = destination.join(entry.path().strip_prefix(&root).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else if entry.file_type().is_symlink() {
            // modules/base/files/bin/sh -> busybox: a link into the image, dangling here.
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn every_nix_file_parses() {
    require_nix();
    let root = workspace_root();
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&root)
        .into_iter()
        .filter_entry(|entry| {
            !matches!(entry.file_name().to_str(), Some("target" | ".git" | "out"))
        })
        .filter_map(Result::ok)
        .filter(|entry| {
            entry.file_type().is_file()
                && entry
                    .path()
                    .extension()
                    .is_some_and(|extension| extension == "nix")
        })
        .map(|entry| entry.into_path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|file| file.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    for required in [
        "flake.nix",
        "nix/pins.nix",
        "nix/outputs.nix",
        "nix/kiln.nix",
        "nix/kernel.nix",
        "nix/image.nix",
        "nix/devshell.nix",
    ] {
        assert!(
            names.iter().any(|name| name == required),
            "{required} is missing; found {names:?}"
        );
    }
    for file in &files {
        run(nix_command("nix-instantiate").arg("--parse").arg(file))
            .unwrap_or_else(|error| panic!("{} does not parse:\n{error:#}", file.display()));
    }
    eprintln!("parsed {} Nix files: {}", files.len(), names.join(", "));
}

#[test]
fn pins_fetch_exactly_the_packages_and_tarballs_of_the_lock() {
    require_nix();
    let root = workspace_root();
    let lock = read_lock(&root.join("kiln.lock"));
    let fetches = evaluate(
        &root,
        "(import ./nix/pins.nix { lockFile = ./kiln.lock; }).fetches",
    )
    .unwrap();
    let expected: BTreeSet<_> = lock_debian_fetches(&lock)
        .union(&lock_tarball_fetches(&lock))
        .cloned()
        .collect();
    let actual = pairs(&fetches);
    assert_eq!(
        actual.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "fetched by the flake but not pinned in kiln.lock"
    );
    assert_eq!(
        expected.difference(&actual).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "pinned in kiln.lock but not fetched by the flake"
    );
    assert_eq!(
        fetches.as_array().unwrap().len(),
        actual.len(),
        "the flake's fetch list has duplicates"
    );
    assert!(!actual.is_empty());

    // Per architecture too: pins.debs.<arch> is the lock's list for <arch>, in order.
    for (arch, architecture) in lock["architectures"].as_object().unwrap() {
        let debs = evaluate(&root, &format!("map (pin: {{ inherit (pin) name sha256 size filename; }}) (import ./nix/pins.nix {{ lockFile = ./kiln.lock; }}).debs.{arch}")).unwrap();
        let expected: Vec<Value> = architecture["debian_packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|package| serde_json::json!({"name": package["name"], "sha256": package["sha256"], "size": package["size"], "filename": package["filename"]}))
            .collect();
        assert_eq!(debs.as_array().unwrap(), &expected, "{arch}");
    }
    let epoch = evaluate(
        &root,
        "(import ./nix/pins.nix { lockFile = ./kiln.lock; }).sourceDateEpoch",
    )
    .unwrap();
    assert_eq!(epoch, lock["source_date_epoch"]);
}

#[test]
fn changing_a_pin_in_a_copy_of_the_lock_changes_the_flakes_fetch_hash() {
    require_nix();
    let copy = tempfile::tempdir().unwrap();
    copy_flake_inputs(copy.path());
    let lock_path = copy.path().join("kiln.lock");
    let mut lock = read_lock(&lock_path);
    let packages = lock["architectures"]["aarch64"]["debian_packages"]
        .as_array_mut()
        .unwrap();
    let busybox = packages
        .iter_mut()
        .find(|package| package["name"] == "busybox-static")
        .expect("the lock pins busybox-static for aarch64");
    let original = busybox["sha256"].as_str().unwrap().to_owned();
    let changed: String = original.chars().rev().collect();
    assert_ne!(changed, original);
    busybox["sha256"] = Value::String(changed.clone());
    let filename = busybox["filename"].as_str().unwrap().to_owned();
    std::fs::write(
        &lock_path,
        serde_json::to_string_pretty(&lock).unwrap() + "\n",
    )
    .unwrap();

    // The pin-reading part alone: `nix eval --impure --expr 'import ./nix/pins.nix { ... }'`.
    let output = run(nix_command("nix").current_dir(copy.path()).args([
        "eval",
        "--impure",
        "--json",
        "--expr",
        &format!("(builtins.head (builtins.filter (pin: pin.name == \"busybox-static\") (import ./nix/pins.nix {{ lockFile = {}; }}).debs.aarch64)).sha256", lock_path.display()),
    ]))
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&output.stdout).unwrap(),
        Value::String(changed.clone())
    );

    // And what the flake's image derivations would hand to fetchurl, from that copy.
    let fetched = evaluate(
        copy.path(),
        &format!(
            "let outputs = {}; in builtins.concatLists (map (image: map (item: {{ inherit (item.file) url sha256; }}) outputs.packages.x86_64-linux.${{image}}.fetched) [ \"image-minimal-aarch64\" \"image-debug-aarch64\" ])",
            flake_outputs_expression()
        ),
    )
    .unwrap();
    let url = format!("mirror://debian/{filename}");
    let hashes: BTreeSet<String> = fetched
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["url"] == url.as_str())
        .map(|item| item["sha256"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        hashes,
        BTreeSet::from([changed]),
        "the image derivations fetch {url} with the hash of the edited lock, and only that one"
    );

    // The untouched repository lock still gives the original hash.
    let original_fetch = evaluate(
        &workspace_root(),
        "(builtins.head (builtins.filter (pin: pin.name == \"busybox-static\") (import ./nix/pins.nix { lockFile = ./kiln.lock; }).debs.aarch64)).sha256",
    )
    .unwrap();
    assert_eq!(original_fetch, Value::String(original));
}

#[test]
fn a_malformed_pin_is_refused_at_evaluation_naming_the_package() {
    require_nix();
    let copy = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(workspace_root().join("kiln.lock")).unwrap();
    let mut lock: Value = serde_json::from_str(&text).unwrap();
    lock["architectures"]["x86_64"]["debian_packages"][0]["sha256"] =
        Value::String("not-a-digest".into());
    let name = lock["architectures"]["x86_64"]["debian_packages"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = copy.path().join("kiln.lock");
    std::fs::write(&path, serde_json::to_string_pretty(&lock).unwrap()).unwrap();
    let error = evaluate(
        &workspace_root(),
        &format!(
            "(import ./nix/pins.nix {{ lockFile = {}; }}).fetches",
            path.display()
        ),
    )
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!(
            "package {name} (x86_64) has sha256 `not-a-digest` in kiln.lock"
        )),
        "{message}"
    );
}

#[test]
fn the_flake_fetches_exactly_the_lock_through_its_derivations() {
    require_nix();
    let root = workspace_root();
    let lock = read_lock(&root.join("kiln.lock"));
    for system in ["x86_64-linux", "aarch64-linux"] {
        let fetched = evaluate(
            &root,
            &format!(
                r#"let
                     outputs = {};
                     packages = outputs.packages.{system};
                     names = builtins.attrNames packages;
                     images = builtins.filter (name: builtins.substring 0 6 name == "image-") names;
                     kernels = builtins.filter (name: builtins.substring 0 7 name == "kernel-") names;
                     fromImages = builtins.concatLists (map (name: map (item: item.file) packages.${{name}}.fetched) images);
                     fromKernels = map (name: packages.${{name}}.src) kernels;
                   in map (file: {{ url = file.url or (builtins.head file.urls); inherit (file) sha256 name; }}) (fromImages ++ fromKernels)"#,
                flake_outputs_expression()
            ),
        )
        .unwrap();
        let actual = pairs(&fetched);
        let expected: BTreeSet<_> = lock_debian_fetches(&lock)
            .union(&lock_tarball_fetches(&lock))
            .cloned()
            .collect();
        assert_eq!(
            actual, expected,
            "{system}: the derivations' fetches are not the lock's pins"
        );
        for item in fetched.as_array().unwrap() {
            let name = item["name"].as_str().unwrap();
            assert!(
                name.bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"+-._?=".contains(&byte)),
                "{name} is not a valid store path name"
            );
        }
    }
}

#[test]
fn the_flake_has_a_kernel_per_flavor_and_arch_and_an_image_per_profile_and_arch() {
    require_nix();
    let root = workspace_root();
    let lock = read_lock(&root.join("kiln.lock"));
    let arches: Vec<String> = lock["architectures"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let profiles: Vec<String> = std::fs::read_dir(root.join("profiles"))
        .unwrap()
        .filter_map(|entry| {
            entry
                .unwrap()
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".yaml"))
                .map(str::to_owned)
        })
        .collect();
    let mut expected: BTreeSet<String> = BTreeSet::from(["kiln".to_owned(), "default".to_owned()]);
    for arch in &arches {
        for flavor in Flavor::ALL {
            expected.insert(format!("kernel-{}-{arch}", flavor.name()));
        }
        for profile in &profiles {
            expected.insert(format!("image-{profile}-{arch}"));
        }
    }
    for system in ["x86_64-linux", "aarch64-linux"] {
        let names = evaluate(
            &root,
            &format!(
                "builtins.attrNames ({}).packages.{system}",
                flake_outputs_expression()
            ),
        )
        .unwrap();
        let actual: BTreeSet<String> = names
            .as_array()
            .unwrap()
            .iter()
            .map(|name| name.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(actual, expected, "{system}");
        let host_arch = system.trim_end_matches("-linux");
        let checks = evaluate(
            &root,
            &format!(
                "builtins.attrNames ({}).checks.{system}",
                flake_outputs_expression()
            ),
        )
        .unwrap();
        let checks: BTreeSet<String> = checks
            .as_array()
            .unwrap()
            .iter()
            .map(|name| name.as_str().unwrap().to_owned())
            .collect();
        assert!(
            checks.contains("tests") && checks.contains("pins-match-lock"),
            "{checks:?}"
        );
        for profile in &profiles {
            assert!(
                checks.contains(&format!("reproducible-{profile}-{host_arch}")),
                "{system}: no reproducibility check for {profile}: {checks:?}"
            );
        }
    }
}

/// Each image derivation boots the kernel its profile names: the flavor's kernel
/// derivation, or, for `kernel: {debian_package: ...}`, no kernel derivation and the
/// lock's pin of that package (which `kiln image` imports from the store it is placed in).
#[test]
fn each_image_boots_the_kernel_its_profile_names() {
    require_nix();
    let root = workspace_root();
    let catalog = kiln_spec::Catalog::load(&root).unwrap();
    let mut debian_profiles = 0;
    for profile in catalog.profiles.keys() {
        let resolved = catalog.resolve_profile(profile).unwrap();
        for arch in Arch::ALL {
            let name = format!("image-{profile}-{}", arch.name());
            let image = evaluate(
                &root,
                &format!(
                    "let image = ({}).packages.x86_64-linux.{name}; in {{ kernel = if image.kernel == null then null else image.kernel.pname; debian = if image.debianKernel == null then null else {{ inherit (image.debianKernel) name sha256; fetched = builtins.any (item: item.pin.sha256 == image.debianKernel.sha256) image.fetched; }}; }}",
                    flake_outputs_expression()
                ),
            )
            .unwrap();
            match resolved.kernel.kind() {
                kiln_spec::KernelKind::Flavor(flavor) => {
                    assert_eq!(
                        image["kernel"],
                        format!("kiln-kernel-{flavor}-{}", arch.name()),
                        "{name}"
                    );
                    assert!(image["debian"].is_null(), "{name}: {image}");
                }
                kiln_spec::KernelKind::DebianPackage(packages) => {
                    debian_profiles += 1;
                    assert!(image["kernel"].is_null(), "{name}: {image}");
                    assert_eq!(
                        image["debian"]["name"].as_str(),
                        packages.for_arch(arch.name()),
                        "{name}"
                    );
                    assert_eq!(image["debian"]["fetched"], true, "{name}: {image}");
                }
            }
        }
    }
    assert!(
        debian_profiles > 0,
        "no profile boots a Debian kernel package: this test checks nothing for them"
    );
}

#[test]
fn each_kernel_derivation_merges_the_fragments_the_xtask_merges_in_its_order() {
    require_nix();
    let root = workspace_root();
    let config_dir = root.join("kernel-configs");
    let lock = read_lock(&root.join("kiln.lock"));
    for system in ["x86_64-linux", "aarch64-linux"] {
        let host = system.trim_end_matches("-linux");
        for arch in Arch::ALL {
            for flavor in Flavor::ALL {
                let name = format!("kernel-{}-{}", flavor.name(), arch.name());
                let kernel = evaluate(
                    &root,
                    &format!(
                        "let kernel = ({}).packages.{system}.{name}; in {{ inherit (kernel.passthru) fragmentNames crossPrefix kernelArch baseTarget; inherit (kernel) SOURCE_DATE_EPOCH KBUILD_BUILD_USER KBUILD_BUILD_HOST; }}",
                        flake_outputs_expression()
                    ),
                )
                .unwrap();
                let xtask_order: Vec<String> = fragment::fragment_names(&config_dir, arch, flavor)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                let nix_order: Vec<String> = kernel["fragmentNames"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|name| name.as_str().unwrap().to_owned())
                    .collect();
                assert_eq!(nix_order, xtask_order, "{system} {name}");
                assert_eq!(
                    kernel["baseTarget"],
                    flavor.base_config_target(),
                    "{system} {name}"
                );
                assert_eq!(kernel["kernelArch"], arch.kernel_arch(), "{system} {name}");
                let cross = kernel["crossPrefix"].as_str().unwrap();
                assert_eq!(
                    cross.is_empty(),
                    host == arch.name(),
                    "{system} {name}: cross prefix `{cross}`"
                );
                assert_eq!(
                    kernel["SOURCE_DATE_EPOCH"].as_str().unwrap(),
                    lock["source_date_epoch"].to_string(),
                    "{system} {name}"
                );
                assert_eq!(
                    (
                        kernel["KBUILD_BUILD_USER"].as_str(),
                        kernel["KBUILD_BUILD_HOST"].as_str()
                    ),
                    (Some("kiln"), Some("kiln"))
                );
            }
        }
    }
}

/// A base config in the shape `make tinyconfig` writes, with symbols the fragments set to
/// other values, comments, and a line that is not an assignment.
fn synthetic_base_config(fragments: &[Fragment]) -> String {
    let mut text = String::from("#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1 Kernel Configuration\n#\nCONFIG_CC_VERSION_TEXT=\"gcc (Debian 12.2.0-14) 12.2.0\"\nCONFIG_UNRELATED=y\n# CONFIG_ALSO_UNRELATED is not set\nnot an assignment line\n");
    for (index, line) in fragments
        .iter()
        .flat_map(|fragment| fragment.lines().unwrap())
        .enumerate()
    {
        match index % 3 {
            0 => text.push_str(&format!("# CONFIG_{} is not set\n", line.symbol)),
            1 => text.push_str(&format!("CONFIG_{}=m\n", line.symbol)),
            _ => {}
        }
    }
    text
}

/// Runs nix/kernel-config.sh MODE CONFIG NAME=PATH... and returns (success, stdout, stderr).
fn config_script(
    mode: &str,
    config_text: &str,
    fragments: &[Fragment],
    directory: &Path,
) -> (bool, String, String) {
    let config_path = directory.join(format!("{mode}.config"));
    std::fs::write(&config_path, config_text).unwrap();
    let mut command = Command::new("sh");
    command
        .arg(workspace_root().join("nix/kernel-config.sh"))
        .arg(mode)
        .arg(&config_path);
    for fragment in fragments {
        command.arg(format!(
            "{}={}",
            fragment.name,
            workspace_root()
                .join("kernel-configs")
                .join(&fragment.name)
                .display()
        ));
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn the_derivations_config_script_merges_and_checks_like_the_xtask() {
    let directory = tempfile::tempdir().unwrap();
    let config_dir = workspace_root().join("kernel-configs");
    for arch in Arch::ALL {
        for flavor in Flavor::ALL {
            let fragments = fragment::load_fragments(&config_dir, arch, flavor).unwrap();
            let base = synthetic_base_config(&fragments);
            let merged = fragment::merge_fragments(&base, &fragments).unwrap();
            let (success, script_merged, stderr) =
                config_script("merge", &base, &fragments, directory.path());
            assert!(success, "{arch} {flavor}: {stderr}");
            assert_eq!(script_merged, merged, "{arch} {flavor}: nix/kernel-config.sh merge differs from kiln-kernel's merge_fragments");

            // The merged config holds every request: both say so.
            let requested = fragment::requested_options(&fragments).unwrap();
            let problems = kiln_kernel::verify::verify_options(
                &requested,
                &merged,
                &KconfigIndex::default(),
                arch.source_arch_dir(),
            );
            assert!(problems.is_empty(), "{problems:?}");
            let (success, _, stderr) =
                config_script("check", &merged, &fragments, directory.path());
            assert!(success, "{arch} {flavor}: {stderr}");

            // Drop one request of each kind, as olddefconfig does: both name the same symbols.
            let enabled = requested.iter().find(|option| matches!(&option.value, fragment::OptionValue::Set(value) if value == "y")).unwrap();
            let disabled = requested
                .iter()
                .find(|option| option.value == fragment::OptionValue::NotSet);
            let mut final_config: String = merged
                .lines()
                .filter(|line| *line != format!("CONFIG_{}=y", enabled.symbol))
                .map(|line| format!("{line}\n"))
                .collect();
            if let Some(disabled) = disabled {
                final_config.push_str(&format!("CONFIG_{}=y\n", disabled.symbol));
            }
            let problems = kiln_kernel::verify::verify_options(
                &requested,
                &final_config,
                &KconfigIndex::default(),
                arch.source_arch_dir(),
            );
            let xtask_symbols: BTreeSet<String> = problems
                .iter()
                .map(|problem| problem.requested.symbol.clone())
                .collect();
            let (success, stdout, stderr) =
                config_script("check", &final_config, &fragments, directory.path());
            assert!(
                !success,
                "{arch} {flavor}: the script accepted a config missing CONFIG_{}",
                enabled.symbol
            );
            assert!(
                stderr.contains(&format!(
                    "{} requested kernel option(s) did not survive",
                    problems.len()
                )),
                "{stderr}"
            );
            let script_symbols: BTreeSet<String> = stdout
                .lines()
                .filter_map(|line| line.strip_prefix("  - "))
                .map(|line| {
                    let rendered = line.split(" (").next().unwrap();
                    let symbol = rendered
                        .trim_start_matches("# ")
                        .trim_start_matches("CONFIG_");
                    symbol.split(['=', ' ']).next().unwrap().to_owned()
                })
                .collect();
            assert_eq!(script_symbols, xtask_symbols, "{arch} {flavor}:\n{stdout}");
            assert!(
                stdout.contains(&format!(
                    "CONFIG_{}=y ({}:{}) is not set",
                    enabled.symbol, enabled.fragment, enabled.line
                )),
                "{stdout}"
            );
        }
    }
}

#[test]
fn a_bad_fragment_line_fails_the_script_as_it_fails_the_xtask() {
    let directory = tempfile::tempdir().unwrap();
    let fragment_path = directory.path().join("bad.config");
    std::fs::write(&fragment_path, "CONFIG_A=y\nCONFIG_E1000=y # QEMU's NIC\n").unwrap();
    let xtask_error = fragment::parse_config_lines(
        "flavor/virt.config",
        "CONFIG_A=y\nCONFIG_E1000=y # QEMU's NIC\n",
    )
    .unwrap_err()
    .to_string();
    std::fs::write(directory.path().join("base.config"), "").unwrap();
    let output = Command::new("sh")
        .arg(workspace_root().join("nix/kernel-config.sh"))
        .args([
            "merge",
            &directory.path().join("base.config").display().to_string(),
            &format!("flavor/virt.config={}", fragment_path.display()),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim_end(),
        xtask_error
    );
}

#[test]
fn seeded_blobs_are_the_paths_of_the_flakes_fixed_output_fetches_and_need_no_network() {
    require_nix();
    // A lock whose busybox-static pin is a file made here, so the test needs no download.
    let work = tempfile::tempdir().unwrap();
    let content = format!("kiln nix seed test {}\n", std::process::id()).into_bytes();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&content));
    let mut lock = read_lock(&workspace_root().join("kiln.lock"));
    let busybox = lock["architectures"]["x86_64"]["debian_packages"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|package| package["name"] == "busybox-static")
        .unwrap();
    busybox["sha256"] = Value::String(digest.clone());
    busybox["size"] = Value::from(content.len());
    busybox["filename"] =
        Value::String("pool/main/b/busybox/busybox-static_1.35.0-4~test_amd64.deb".into());
    let lock_path = work.path().join("kiln.lock");
    std::fs::write(
        &lock_path,
        serde_json::to_string_pretty(&lock).unwrap() + "\n",
    )
    .unwrap();
    let cache = work.path().join("cache");
    std::fs::create_dir_all(cache.join("blobs/sha256")).unwrap();
    std::fs::write(cache.join("blobs/sha256").join(&digest), &content).unwrap();

    let output = run(
        kiln_tests::xtask(&["nix", "seed", "--lock", lock_path.to_str().unwrap()])
            .env("KILN_CACHE", &cache)
            .env("NIX_CONFIG", NIX_CONFIG),
    )
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("seeded 1 files into the Nix store"),
        "{stdout}"
    );

    // `~` is not allowed in store names: pins.nix names it with `_`, and so does the seed.
    let store_name = "busybox-static_1.35.0-4_test_amd64.deb";
    let expected =
        run(nix_command("nix-store").args(["--print-fixed-path", "sha256", &digest, store_name]))
            .unwrap();
    let expected = String::from_utf8(expected.stdout)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        stdout.lines().any(|line| line == expected),
        "seed did not print {expected}:\n{stdout}"
    );
    assert_eq!(std::fs::read(&expected).unwrap(), content);

    // The same fetch as nixpkgs' fetchurl makes (flat sha256, name from pins.nix), as a
    // builtin:fetchurl derivation: it is already valid, so realising it downloads nothing.
    let expression = format!(
        r#"let pin = builtins.head (builtins.filter (pin: pin.name == "busybox-static") (import ./nix/pins.nix {{ lockFile = {}; }}).debs.x86_64);
           in derivation {{ name = pin.storeName; builder = "builtin:fetchurl"; system = "builtin"; url = pin.url;
                           outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = pin.sha256; }}"#,
        lock_path.display()
    );
    let derivation = run(nix_command("nix-instantiate")
        .current_dir(workspace_root())
        .args(["--expr", &expression]))
    .unwrap();
    let derivation = String::from_utf8(derivation.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let realised = run(nix_command("nix-store")
        .args(["--realise", &derivation])
        .env("NIX_CONFIG", format!("{NIX_CONFIG}connect-timeout = 1\n")))
    .unwrap();
    assert_eq!(String::from_utf8(realised.stdout).unwrap().trim(), expected);
}

#[test]
fn flake_lock_is_consistent_with_the_inputs_of_flake_nix_and_its_comments() {
    require_nix();
    let copy = tempfile::tempdir().unwrap();
    copy_flake_inputs(copy.path());
    let before = std::fs::read(copy.path().join("flake.lock")).unwrap();
    // Nix 2.8 refuses with "lock file needs to be updated" if an input of flake.nix is
    // not locked as declared (url, follows); it needs no download to decide that.
    run(nix_command("nix").current_dir(copy.path()).args([
        "flake",
        "lock",
        "--no-update-lock-file",
        &format!("path:{}", copy.path().display()),
    ]))
    .unwrap();
    assert_eq!(
        std::fs::read(copy.path().join("flake.lock")).unwrap(),
        before,
        "nix changed flake.lock"
    );

    // The revisions and hashes flake.nix documents are the ones flake.lock pins.
    let lock: Value = serde_json::from_slice(&before).unwrap();
    let flake = std::fs::read_to_string(workspace_root().join("flake.nix")).unwrap();
    for input in ["nixpkgs", "rust-overlay"] {
        let locked = &lock["nodes"][input]["locked"];
        for field in ["rev", "narHash"] {
            let value = locked[field].as_str().unwrap();
            assert!(
                flake.contains(value),
                "flake.nix does not document {input}'s {field} {value}"
            );
        }
    }
    assert_eq!(lock["nodes"]["nixpkgs"]["original"]["ref"], "nixos-24.11");
}

/// The pinned `linux-source-*` package: from the store at `$KILN_CACHE` when
/// `cargo xtask fetch` put it there, else downloaded with `apt-get download`; either way
/// checked against the lock's sha256.
fn pinned_kernel_source_package(directory: &Path) -> PathBuf {
    let lock = read_lock(&workspace_root().join("kiln.lock"));
    let pin = lock["architectures"]["x86_64"]["debian_packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|package| {
            package["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("linux-source-"))
        })
        .expect("kiln.lock pins a linux-source package")
        .clone();
    let sha256 = pin["sha256"].as_str().unwrap();
    let stored = kiln_store::Store::default_root()
        .unwrap()
        .join("blobs/sha256")
        .join(sha256);
    let path = if stored.is_file() {
        stored
    } else {
        let version = format!(
            "{}={}",
            pin["name"].as_str().unwrap(),
            pin["version"].as_str().unwrap()
        );
        run(Command::new("apt-get")
            .current_dir(directory)
            .args(["download", &version]))
        .unwrap();
        let name = pin["filename"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .replace(':', "%3a");
        directory.join(name)
    };
    let (digest, _) = kiln_store::hash_file(&path).unwrap();
    assert_eq!(
        digest.to_hex(),
        sha256,
        "{} is not the pinned package",
        path.display()
    );
    path
}

/// Runs the kernel derivation's own unpackPhase and configurePhase (as the flake
/// evaluates them, with nixpkgs stubbed) with this host's compiler, and the xtask's
/// `configure_kernel` on the same pinned source: the two final `.config`s must be the
/// same. This is what "the flake configures kernels as the xtask does" means, short of
/// compiling.
#[test]
#[ignore = "slow: unpacks the pinned kernel source twice and configures four kernels (a few minutes)"]
fn the_kernel_derivations_configure_phase_gives_the_xtasks_config() {
    require_nix();
    let work = tempfile::tempdir().unwrap();
    let package = pinned_kernel_source_package(work.path());
    let lock = read_lock(&workspace_root().join("kiln.lock"));
    let epoch = lock["source_date_epoch"].as_u64().unwrap();

    // The xtask's input: the tarball inside the package, as nix/kernel.nix takes it out.
    let tarball_directory = work.path().join("xtask-source");
    std::fs::create_dir_all(&tarball_directory).unwrap();
    run(Command::new("sh")
        .current_dir(&tarball_directory)
        .arg("-c")
        .arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -xf - --wildcards './usr/src/linux-source-*.tar.xz'",
        package.display()
    )))
    .unwrap();
    let tarball = std::fs::read_dir(tarball_directory.join("usr/src"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (tarball_digest, _) = kiln_store::hash_file(&tarball).unwrap();
    let cache = kiln_kernel::KernelCache::new(&work.path().join("kiln-cache"));

    // nixpkgs names its cross compiler aarch64-unknown-linux-gnu-; Debian's is
    // aarch64-linux-gnu-. The same compiler under the nixpkgs name, for the derivation.
    let cross_names = work.path().join("cross-names");
    std::fs::create_dir_all(&cross_names).unwrap();
    for tool in [
        "gcc", "ld", "ar", "nm", "objcopy", "objdump", "strip", "readelf", "as", "cpp",
    ] {
        let debian = PathBuf::from(format!("/usr/bin/aarch64-linux-gnu-{tool}"));
        if debian.exists() {
            std::os::unix::fs::symlink(
                &debian,
                cross_names.join(format!("aarch64-unknown-linux-gnu-{tool}")),
            )
            .unwrap();
        }
    }

    let mut derivation_tree: Option<PathBuf> = None;
    for arch in Arch::ALL {
        for flavor in Flavor::ALL {
            let request = kiln_kernel::BuildRequest {
                source: kiln_kernel::KernelSource {
                    tarball: tarball.clone(),
                    sha256: tarball_digest.to_hex(),
                },
                arch,
                flavor,
                config_dir: workspace_root().join("kernel-configs"),
                source_date_epoch: epoch,
                jobs: 2,
            };
            let configured = kiln_kernel::configure_kernel(
                &request,
                &cache,
                &mut kiln_kernel::build::NoProgress,
            )
            .unwrap_or_else(|error| panic!("xtask configure {arch} {flavor}: {error}"));

            let name = format!("kernel-{}-{}", flavor.name(), arch.name());
            let phases = evaluate(
                &workspace_root(),
                &format!(
                    "let kernel = ({}).packages.x86_64-linux.{name}; in {{ inherit (kernel) unpackPhase configurePhase SOURCE_DATE_EPOCH KBUILD_BUILD_USER KBUILD_BUILD_HOST KBUILD_BUILD_VERSION; }}",
                    flake_outputs_expression()
                ),
            )
            .unwrap();
            let build_top = work.path().join(format!("nix-{name}"));
            std::fs::create_dir_all(&build_top).unwrap();
            // The source is unpacked once, by the derivation's unpackPhase, then shared.
            let unpack = match &derivation_tree {
                Some(tree) => format!("sourceRoot={}", tree.display()),
                None => format!(
                    "src={}\nrunHook() {{ :; }}\ncd {}\n{}",
                    package.display(),
                    work.path().display(),
                    phases["unpackPhase"].as_str().unwrap()
                ),
            };
            let script = format!(
                "set -eu\nrunHook() {{ :; }}\n{unpack}\ncd \"$sourceRoot\"\necho \"SOURCE_ROOT=$PWD\"\nexport NIX_BUILD_TOP={}\n{}",
                build_top.display(),
                phases["configurePhase"].as_str().unwrap()
            );
            let host_path = std::env::var("PATH").unwrap_or_default();
            let output = run(Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(work.path())
                .env("PATH", format!("{}:{host_path}", cross_names.display()))
                .env("NIX_CONFIG", NIX_CONFIG)
                .env(
                    "SOURCE_DATE_EPOCH",
                    phases["SOURCE_DATE_EPOCH"].as_str().unwrap(),
                )
                .env(
                    "KBUILD_BUILD_USER",
                    phases["KBUILD_BUILD_USER"].as_str().unwrap(),
                )
                .env(
                    "KBUILD_BUILD_HOST",
                    phases["KBUILD_BUILD_HOST"].as_str().unwrap(),
                )
                .env(
                    "KBUILD_BUILD_VERSION",
                    phases["KBUILD_BUILD_VERSION"].as_str().unwrap(),
                )
                .env("LC_ALL", "C")
                .env("TZ", "UTC"))
            .unwrap_or_else(|error| panic!("{name}: the derivation's phases failed: {error:#}"));
            let stdout = String::from_utf8_lossy(&output.stdout);
            if derivation_tree.is_none() {
                let root = stdout
                    .lines()
                    .find_map(|line| line.strip_prefix("SOURCE_ROOT="))
                    .unwrap();
                derivation_tree = Some(PathBuf::from(root));
            }
            let nix_config = std::fs::read_to_string(build_top.join("build/.config")).unwrap();
            // The compiler's name is in CONFIG_CC_VERSION_TEXT; for the cross build it is
            // called by its nixpkgs name here, by its Debian name in the xtask.
            let comparable = |text: &str| -> Vec<String> {
                text.lines()
                    .filter(|line| !line.starts_with("CONFIG_CC_VERSION_TEXT="))
                    .map(str::to_owned)
                    .collect()
            };
            assert_eq!(
                comparable(&nix_config),
                comparable(&configured.final_config),
                "{name}: the derivation's .config differs from the xtask's"
            );
            eprintln!(
                "{name}: identical .config ({} lines)",
                nix_config.lines().count()
            );
        }
    }
}

/// `checks.tests` runs this file inside a Nix build, where Nix cannot run; nix/outputs.nix
/// skips the tests that need it by name. A new test that calls `require_nix` must be added
/// there, or `nix flake check` fails on it.
#[test]
fn the_nix_build_of_the_tests_skips_exactly_the_tests_that_run_nix() {
    let source = std::fs::read_to_string(workspace_root().join("tests/nix_flake.rs")).unwrap();
    let outputs = std::fs::read_to_string(workspace_root().join("nix/outputs.nix")).unwrap();
    let mut needing_nix = BTreeSet::new();
    for test in source.split("#[test]\n").skip(1) {
        let ignored = test.starts_with("#[ignore");
        let name = test
            .split("fn ")
            .nth(1)
            .and_then(|rest| rest.split('(').next())
            .unwrap()
            .to_owned();
        let body = test.split("\n}\n").next().unwrap();
        if !ignored && body.contains("{\n    require_nix();") {
            needing_nix.insert(name);
        }
    }
    let skipped: BTreeSet<String> = outputs
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with('"') && line.ends_with('"') && !line.contains(' '))
        .map(|line| line.trim_matches('"').to_owned())
        .filter(|name| source.contains(&format!("fn {name}(")))
        .collect();
    assert_eq!(
        skipped, needing_nix,
        "nix/outputs.nix checks.tests skip list is out of date"
    );
}

/// The lock's image pin for `reference`, as `cargo xtask lock` writes it (blobs included).
fn image_pin_json(reference: &str, resolved: &kiln_registry::ResolvedReference) -> Value {
    serde_json::json!({
        "reference": reference,
        "manifest_digest": resolved.manifest_digest.to_string(),
        "index_digest": resolved.index_digest.map(|digest| digest.to_string()),
        "required_by": ["profile:hook"],
        "manifest_size": resolved.manifest_size,
        "manifest_media_type": resolved.manifest_media_type,
        "blobs": resolved.blobs.iter().map(|blob| serde_json::json!({
            "digest": blob.digest.to_string(),
            "size": blob.size,
            "media_type": blob.media_type,
        })).collect::<Vec<_>>(),
    })
}

fn write_lock_with_image(directory: &Path, pin: &Value) {
    let lock_path = directory.join("kiln.lock");
    let mut lock = read_lock(&workspace_root().join("kiln.lock"));
    lock["architectures"]["aarch64"]["oci_images"] = Value::Array(vec![pin.clone()]);
    std::fs::write(
        &lock_path,
        serde_json::to_string_pretty(&lock).unwrap() + "\n",
    )
    .unwrap();
}

/// `(url, outputHash)` of the OCI blob derivations `image-hook-aarch64` would build, from
/// the flake in `directory` (stub nixpkgs: runCommand returns its environment as data).
fn image_blob_fetches(directory: &Path) -> anyhow::Result<BTreeSet<(String, String)>> {
    let fetched = evaluate(
        directory,
        &format!(
            "let outputs = {}; in map (item: {{ url = item.file.environment.blobUrl; hash = item.file.environment.outputHash; mode = item.file.environment.outputHashMode; }}) (builtins.filter (item: item.file ? environment && item.file.environment ? blobUrl) outputs.packages.x86_64-linux.image-hook-aarch64.fetched)",
            flake_outputs_expression()
        ),
    )?;
    Ok(fetched
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            assert_eq!(item["mode"], "flat", "{item}");
            (
                item["url"].as_str().unwrap().to_owned(),
                item["hash"].as_str().unwrap().to_owned(),
            )
        })
        .collect())
}

/// An image pin reaches the flake blob by blob: nix/pins.nix turns the lock's manifest
/// digest and recorded blobs into registry API addresses, the image derivation fetches
/// each as a fixed-output derivation whose hash is the digest, and nix/fetch-oci-blob.sh
/// (the fetcher those derivations run) downloads exactly those bytes from a real registry
/// (Debian's docker-registry, anonymous reads, TLS). Changing a digest in the lock changes
/// the fetch; a pin without recorded blobs is refused by name; a registry that wants a
/// password gets a clear error (the flake fetches only what anyone may read).
/// Not covered here: the bearer-token exchange of public registries (no token server runs
/// here), and a real `nix build` (no nixpkgs).
#[test]
fn an_image_pin_is_fetched_blob_by_blob_by_digest_from_a_real_registry() {
    require_nix();
    if !kiln_tests::registry::registry_tools_available() {
        panic!("docker-registry, htpasswd, openssl and skopeo are needed (.ci/run installs them)");
    }
    let scratch = tempfile::tempdir().unwrap();
    let registry =
        kiln_tests::registry::TestRegistry::start_anonymous(&scratch.path().join("registry"))
            .unwrap();
    let options = kiln_tests::registry::registry_options(&registry, None);
    let layout = kiln_oci::OciLayout::open_or_create(&scratch.path().join("layout")).unwrap();
    kiln_tests::registry::write_test_images(&layout, scratch.path(), 1 << 20).unwrap();
    kiln_registry::push_layout(
        &layout,
        &format!("{}/kiln", registry.address()),
        None,
        &options,
        std::sync::Arc::new(kiln_registry::IgnoreTransfers),
    )
    .unwrap();
    let reference = format!("{}/kiln/kiln-multi:1.0", registry.address());
    let resolved =
        kiln_registry::resolve_reference(&reference, kiln_oci::OciPlatform::LinuxArm64, &options)
            .unwrap();
    assert!(resolved.blobs.len() >= 2, "{resolved:?}");

    let copy = tempfile::tempdir().unwrap();
    copy_flake_inputs(copy.path());
    let pin = image_pin_json(&reference, &resolved);
    write_lock_with_image(copy.path(), &pin);

    // pins.nix: the manifest, then config and layers, each with its digest and address.
    let images = evaluate(
        copy.path(),
        &format!(
            "(import ./nix/pins.nix {{ lockFile = {}; }}).ociImages.aarch64",
            copy.path().join("kiln.lock").display()
        ),
    )
    .unwrap();
    let files = images[0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1 + resolved.blobs.len());
    let mut expected = vec![(
        resolved.manifest_digest.to_string(),
        resolved.manifest_size,
        "manifests",
    )];
    expected.extend(
        resolved
            .blobs
            .iter()
            .map(|blob| (blob.digest.to_string(), blob.size, "blobs")),
    );
    for (file, (digest, size, kind)) in files.iter().zip(&expected) {
        assert_eq!(file["digest"], digest.as_str());
        assert_eq!(file["size"], *size);
        assert_eq!(
            file["url"],
            format!(
                "https://{}/v2/kiln/kiln-multi/{kind}/{digest}",
                registry.address()
            )
        );
        // The fetcher the derivation runs, against the registry: the bytes of the digest.
        let out = scratch.path().join(file["storeName"].as_str().unwrap());
        let work = tempfile::tempdir().unwrap();
        let output = run(Command::new("sh")
            .arg(workspace_root().join("nix/fetch-oci-blob.sh"))
            .arg(file["url"].as_str().unwrap())
            .arg(file["mediaType"].as_str().unwrap())
            .arg(&out)
            .current_dir(work.path())
            .env(
                "SSL_CERT_FILE",
                &registry.certificate_authority.ca_certificate,
            )
            .env(
                "CURL_CA_BUNDLE",
                &registry.certificate_authority.ca_certificate,
            ))
        .unwrap();
        assert!(output.status.success());
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, *size, "{digest}");
        assert_eq!(
            kiln_oci::Sha256Digest::of_bytes(&bytes).to_string(),
            *digest
        );
    }

    // The image derivation of a profile on that architecture fetches exactly those.
    let fetches = image_blob_fetches(copy.path()).unwrap();
    let wanted: BTreeSet<(String, String)> = files
        .iter()
        .map(|file| {
            (
                file["url"].as_str().unwrap().to_owned(),
                file["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(fetches, wanted);

    // `cargo xtask nix check-pins` agrees: the flake fetches exactly what that lock pins.
    let check = kiln_tests::xtask(&["nix", "check-pins", "--lock"])
        .arg(copy.path().join("kiln.lock"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Another layer digest in the lock → another fixed-output hash, and only that changes.
    let mut changed = pin.clone();
    let last = changed["blobs"].as_array().unwrap().len() - 1;
    let new_hex = "0123456789abcdef".repeat(4);
    changed["blobs"][last]["digest"] = Value::String(format!("sha256:{new_hex}"));
    write_lock_with_image(copy.path(), &changed);
    let after = image_blob_fetches(copy.path()).unwrap();
    let hashes = |set: &BTreeSet<(String, String)>| -> BTreeSet<String> {
        set.iter().map(|(_, hash)| hash.clone()).collect()
    };
    let removed: Vec<_> = hashes(&fetches)
        .difference(&hashes(&after))
        .cloned()
        .collect();
    let added: Vec<_> = hashes(&after)
        .difference(&hashes(&fetches))
        .cloned()
        .collect();
    assert_eq!(added, [new_hex]);
    assert_eq!(
        removed,
        [resolved.blobs[last].digest.hex()],
        "only the edited blob's fetch changes"
    );

    // A mirror changes where, not what: same hashes, the mirror's addresses.
    let mut mirrored = pin.clone();
    mirrored["mirror"] = Value::String("127.0.0.1:1/mirror/tools".into());
    write_lock_with_image(copy.path(), &mirrored);
    let via_mirror = image_blob_fetches(copy.path()).unwrap();
    assert_eq!(hashes(&via_mirror), hashes(&fetches));
    assert!(via_mirror
        .iter()
        .all(|(url, _)| url.starts_with("https://127.0.0.1:1/v2/mirror/tools/")));

    // Written before blobs were recorded: refused, naming the image and the fix.
    let mut old = pin.clone();
    old.as_object_mut().unwrap().remove("blobs");
    write_lock_with_image(copy.path(), &old);
    let error = image_blob_fetches(copy.path()).unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "image {reference} (aarch64) has no recorded blobs"
        )) && error.contains("cargo xtask lock"),
        "{error}"
    );

    // A registry that wants a password: a clear error, not an HTML page saved as a blob.
    let private =
        kiln_tests::registry::TestRegistry::start(&scratch.path().join("private")).unwrap();
    let url = format!(
        "https://{}/v2/kiln/kiln-multi/blobs/{}",
        private.address(),
        resolved.blobs[0].digest
    );
    let work = tempfile::tempdir().unwrap();
    let output = Command::new("sh")
        .arg(workspace_root().join("nix/fetch-oci-blob.sh"))
        .args([url.as_str(), "application/octet-stream"])
        .arg(work.path().join("out"))
        .current_dir(work.path())
        .env(
            "SSL_CERT_FILE",
            &private.certificate_authority.ca_certificate,
        )
        .env(
            "CURL_CA_BUNDLE",
            &private.certificate_authority.ca_certificate,
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("401 without a Bearer challenge"),
        "{stderr}"
    );
}
