//! `cargo xtask initramfs`: pack a directory into an initramfs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_archive::{ArchiveTree, Compression, InitramfsOptions, ZstdSettings};

use crate::progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory whose contents become the archive's root.
    #[arg(long)]
    root: PathBuf,
    /// Output file; written atomically (a failed run leaves nothing behind).
    #[arg(long)]
    out: PathBuf,
    /// zstd level (1-22).
    #[arg(long, default_value_t = kiln_archive::DEFAULT_ZSTD_LEVEL)]
    level: i32,
    /// zstd worker threads; any value gives the same bytes. Default: one per core.
    #[arg(long)]
    workers: Option<u32>,
    /// Write a plain, uncompressed cpio.
    #[arg(long, conflicts_with_all = ["level", "workers"])]
    no_compress: bool,
    /// Compress with LZ4 (the legacy format the kernel reads, LZ4HC level 9) instead of zstd:
    /// ~45% larger, several times faster for the kernel to unpack under emulation.
    #[arg(long, conflicts_with_all = ["level", "workers", "no_compress"])]
    lz4: bool,
    /// A directory packed as an uncompressed archive in front (CPU microcode).
    #[arg(long)]
    early_root: Option<PathBuf>,
    /// Store identical files once, as hard links (changes the unpacked tree).
    #[arg(long)]
    dedup: bool,
    /// mtime of every entry; default $SOURCE_DATE_EPOCH, else kiln.lock's pin.
    #[arg(long)]
    source_date_epoch: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mtime = crate::epoch::resolve(args.source_date_epoch)?;
    let mut tree = ArchiveTree::from_directory(&args.root)
        .with_context(|| format!("reading the tree under {}", args.root.display()))?;
    if args.dedup {
        let linked = tree.deduplicate_identical_files()?;
        eprintln!("dedup: {linked} identical files stored as hard links");
    }
    let early = match &args.early_root {
        Some(root) => Some(
            ArchiveTree::from_directory(root)
                .with_context(|| format!("reading the early tree under {}", root.display()))?,
        ),
        None => None,
    };
    let compression = if args.no_compress {
        Compression::None
    } else if args.lz4 {
        Compression::Lz4
    } else {
        let workers = args
            .workers
            .unwrap_or(ZstdSettings::default_for_host().workers);
        Compression::Zstd(ZstdSettings::new(args.level, workers)?)
    };
    let options = InitramfsOptions {
        mtime,
        compression,
        early: early.as_ref(),
    };
    let bar = progress::bytes_bar(tree.content_bytes(), "archiving");
    let summary = kiln_archive::write_initramfs_file(&tree, &options, &args.out, &mut |done| {
        bar.set_position(done)
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    let digest = crate::progress::sha256_file(&args.out)?;
    eprintln!(
        "{}: {} entries, {} bytes of cpio -> {} bytes ({:.1}%), sha256 {}",
        args.out.display(),
        summary.main.entries,
        summary.main.archive_bytes,
        summary.output_bytes,
        100.0 * summary.output_bytes as f64 / summary.main.archive_bytes.max(1) as f64,
        digest
    );
    Ok(ExitCode::SUCCESS)
}
