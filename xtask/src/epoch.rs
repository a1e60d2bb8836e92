//! Where a build's `SOURCE_DATE_EPOCH` comes from. Never the clock.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// The repository root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// `--source-date-epoch` if given, else `$SOURCE_DATE_EPOCH`, else the
/// `source_date_epoch` pinned in `kiln.lock`. The result must fit newc's
/// 32-bit mtime field.
pub fn resolve(flag: Option<u64>) -> anyhow::Result<u32> {
    let (value, origin) = if let Some(value) = flag {
        (value, "--source-date-epoch".to_string())
    } else if let Ok(text) = std::env::var("SOURCE_DATE_EPOCH") {
        let value = text.trim().parse::<u64>().with_context(|| {
            format!("SOURCE_DATE_EPOCH={text:?} is not a whole number of seconds")
        })?;
        (value, "$SOURCE_DATE_EPOCH".to_string())
    } else {
        let lock_path = workspace_root().join("kiln.lock");
        let text = std::fs::read_to_string(&lock_path).with_context(|| {
            format!(
                "no SOURCE_DATE_EPOCH: set it, pass --source-date-epoch, or create {} with `cargo xtask lock`",
                lock_path.display()
            )
        })?;
        let lock: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", lock_path.display()))?;
        let Some(value) = lock
            .get("source_date_epoch")
            .and_then(serde_json::Value::as_u64)
        else {
            bail!(
                "{} has no numeric `source_date_epoch`; re-run `cargo xtask lock`",
                lock_path.display()
            );
        };
        (value, lock_path.display().to_string())
    };
    u32::try_from(value).with_context(|| {
        format!("epoch {value} from {origin} does not fit newc's 32-bit mtime (max 4294967295)")
    })
}
