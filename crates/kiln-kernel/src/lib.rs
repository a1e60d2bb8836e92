//! Kernel builds for kiln.
//!
//! Input → output: a kernel source tarball (path + expected sha256), the fragments in
//! `kernel-configs/`, an architecture, a flavor and a `SOURCE_DATE_EPOCH` go in; a
//! [`KernelArtifact`] comes out: a directory holding the kernel image (`vmlinuz`),
//! `System.map`, the final `config`, the modules as a deterministic `modules.tar`, and on
//! aarch64 the device trees as `dtbs.tar`, plus `kernel.json` describing them. The
//! directory is named by the [`key::artifact_key`] of the inputs, so a second build with
//! the same inputs does no work. A prebuilt Debian `linux-image-*` package can be turned
//! into the same artifact shape ([`debian_package`]).
//!
//! What this crate owns:
//! - fragment parsing and merging ([`fragment`]), the `.config` difference that
//!   `menuconfig` writes back as a fragment ([`config_diff`]);
//! - reading Kconfig files to explain why a requested option did not survive
//!   `make olddefconfig` ([`kconfig`], [`verify`]);
//! - the input key ([`key`]), the source extraction cache ([`source`]);
//! - spawning `make` for the kernel, and only that ([`build`]);
//! - the `kernel/` namespace of the cache directory ([`cache`]).
//!
//! What it must not touch: the lock file (callers pass path + sha256; the lock will pin
//! them), the rest of the store, the network, the clock (the epoch is an input), and the
//! terminal (progress goes through [`build::BuildObserver`]).
//!
//! **Architecture Invariant:** an artifact directory only ever appears by an atomic
//! rename of a complete temporary directory; a failed or interrupted build leaves none
//! (checked by `options_kconfig_cannot_enable_fail_with_name_and_reason` and
//! `virt_x86_64_builds_are_identical_from_different_directories`).
//!
//! **Architecture Invariant:** every pure step (merge, verify, diff, key, timestamp,
//! make-line parsing, tar normalisation) is a data → data function with unit tests; only
//! [`build`], [`source`] and [`debian_package`] do I/O.

pub mod artifact;
pub mod build;
pub mod cache;
pub mod config_diff;
pub mod debian_package;
pub mod fragment;
pub mod kconfig;
pub mod key;
pub mod modules_tar;
pub mod source;
pub mod target;
pub mod timestamp;
pub mod verify;

pub use artifact::KernelArtifact;
pub use build::{
    build_kernel, configure_kernel, BuildObserver, BuildRequest, BuildStep, KernelError,
};
pub use cache::KernelCache;
pub use source::KernelSource;
pub use target::{Arch, Flavor};
