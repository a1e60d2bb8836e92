//! kiln-assemble: `cargo xtask image`, a profile's modules made into a provisioning image.
//!
//! **Owns:** the plan ([`plan`]: module order from `after`/`requires`, options, kiln-init's
//! `init.json`, the kernel options and modules the profile needs) and the pipeline that
//! joins the other crates ([`build`]: lock → store → OCI layers → kernel → compose →
//! initramfs → outputs).
//!
//! **Architecture Invariant:** every catalog mistake (a module requiring one the profile
//! lacks, an ordering cycle, a missing option, a kernel option the kernel lacks) is found
//! before anything is written; a failed build leaves the previous outputs as they were
//! (kiln-image writes the output directory as a whole). Tests: `tests/image_build.rs`,
//! `crates/kiln-assemble/tests/catalog_errors.rs`.
//!
//! **Architecture Invariant:** nothing of the host reaches the image: files from the
//! checkout get fixed owners and git's two modes, the init binary is built with remapped
//! paths, every timestamp is the lock's `source_date_epoch`.

pub mod build;
pub mod busybox_applets;
pub mod images;
pub mod kernel_oci;
pub mod plan;

pub use build::{build_image, ImageError, ImageObserver, ImageReport, ImageRequest};
pub use plan::{plan, plan_resolved, Plan, PlanError, PlannedModule};
