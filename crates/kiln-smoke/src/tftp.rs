//! Which files QEMU's TFTP server read from the harness's TFTP directory, seen by the kernel
//! (inotify), not by the console.
//!
//! iPXE's console lines say that a fetch began; whether it finished is best not read from
//! its `ok`, which races with the next stage's terminal reset (see [`crate::console`]).
//! QEMU's user network serves TFTP from a directory this harness creates and owns, and
//! opens, reads and closes each file it serves; inotify on that directory reports exactly
//! those events. A file read and closed before the kernel started was served whole: QEMU
//! closes a TFTP session's file at its last block (or on an error, which iPXE would report
//! and not boot).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask};

use crate::SmokeError;

/// What happened to one file of the TFTP directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpRead {
    pub file: String,
    /// When it was first opened, since the watch began.
    pub opened_at: Duration,
    /// It was read from (at least one `read`).
    pub read: bool,
    /// It was closed after being read.
    pub closed_after_read: bool,
}

impl TftpRead {
    /// Opened, read and closed: QEMU served it to the end.
    pub fn served(&self) -> bool {
        self.read && self.closed_after_read
    }
}

/// A watch on a TFTP directory; stops when dropped.
#[derive(Debug)]
pub struct TftpReads {
    reads: Arc<Mutex<Vec<TftpRead>>>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl TftpReads {
    /// Starts watching `directory` (before QEMU starts, so no open is missed).
    pub fn watch(directory: &Path) -> Result<TftpReads, SmokeError> {
        let mut inotify = Inotify::init().map_err(SmokeError::io("inotify_init on", directory))?;
        inotify
            .watches()
            .add(
                directory,
                WatchMask::OPEN | WatchMask::ACCESS | WatchMask::CLOSE_NOWRITE,
            )
            .map_err(SmokeError::io("watching", directory))?;
        let reads = Arc::new(Mutex::new(Vec::<TftpRead>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let watcher = {
            let reads = Arc::clone(&reads);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                loop {
                    // Non-blocking: events queue in the kernel between polls, none is lost.
                    let stopping = stop.load(Ordering::Acquire);
                    match inotify.read_events(&mut buffer) {
                        Ok(events) => {
                            let mut reads = reads.lock().expect("tftp reads lock");
                            for event in events {
                                let Some(name) = event.name else { continue };
                                record(
                                    &mut reads,
                                    &name.to_string_lossy(),
                                    event.mask,
                                    started.elapsed(),
                                );
                            }
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            if stopping {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => return,
                    }
                }
            })
        };
        Ok(TftpReads {
            reads,
            stop,
            watcher: Some(watcher),
        })
    }

    /// Every file opened so far, in the order first opened.
    pub fn reads(&self) -> Vec<TftpRead> {
        self.reads.lock().expect("tftp reads lock").clone()
    }

    /// Stops watching (after reading the events queued so far) and returns every file read.
    pub fn finish(mut self) -> Vec<TftpRead> {
        self.stop_watcher();
        self.reads()
    }

    fn stop_watcher(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
    }
}

impl Drop for TftpReads {
    fn drop(&mut self) {
        self.stop_watcher();
    }
}

fn record(reads: &mut Vec<TftpRead>, file: &str, mask: EventMask, at: Duration) {
    let index = match reads.iter().position(|read| read.file == file) {
        Some(index) => index,
        None => {
            if !mask.contains(EventMask::OPEN) {
                return;
            }
            reads.push(TftpRead {
                file: file.to_string(),
                opened_at: at,
                read: false,
                closed_after_read: false,
            });
            reads.len() - 1
        }
    };
    let read = &mut reads[index];
    if mask.contains(EventMask::ACCESS) {
        read.read = true;
    }
    if mask.contains(EventMask::CLOSE_NOWRITE) && read.read {
        read.closed_after_read = true;
    }
}

/// Whether `expected` were all served, in that order of first opening; else what was not.
pub fn check_served_in_order(reads: &[TftpRead], expected: &[&str]) -> Result<(), String> {
    let mut last_opened = None;
    for file in expected {
        // `reads` is in the order of the kernel's events: the order first opened.
        let Some((position, read)) = reads
            .iter()
            .enumerate()
            .find(|(_, read)| read.file == *file)
        else {
            return Err(format!(
                "QEMU's TFTP server never opened {file} (files opened: {})",
                opened_names(reads)
            ));
        };
        if !read.served() {
            return Err(format!(
                "QEMU's TFTP server opened {file} but did not read it to its close (read: {}, closed after reading: {})",
                read.read, read.closed_after_read
            ));
        }
        if last_opened.is_some_and(|last| position < last) {
            return Err(format!(
                "QEMU's TFTP server opened {file} before the file fetched before it (files opened: {})",
                opened_names(reads)
            ));
        }
        last_opened = Some(position);
    }
    Ok(())
}

fn opened_names(reads: &[TftpRead]) -> String {
    if reads.is_empty() {
        return "none".to_string();
    }
    reads
        .iter()
        .map(|read| read.file.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Real files, real reads by this process: the watch sees them as it sees QEMU's.
    #[test]
    fn reads_of_the_directory_are_seen_in_order_and_an_unread_file_is_named() {
        let directory = tempfile::tempdir().unwrap();
        for name in ["boot.ipxe", "vmlinuz-x86_64", "initramfs-x86_64"] {
            std::fs::write(directory.path().join(name), vec![7u8; 100_000]).unwrap();
        }
        let watch = TftpReads::watch(directory.path()).unwrap();
        for name in ["boot.ipxe", "vmlinuz-x86_64"] {
            let mut file = std::fs::File::open(directory.path().join(name)).unwrap();
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        // Opened, never read: a fetch that failed before its first block.
        let opened_only = std::fs::File::open(directory.path().join("initramfs-x86_64")).unwrap();
        drop(opened_only);
        std::thread::sleep(Duration::from_millis(100));
        let reads = watch.finish();
        assert_eq!(
            check_served_in_order(&reads, &["boot.ipxe", "vmlinuz-x86_64"]),
            Ok(())
        );
        assert_eq!(
            check_served_in_order(&reads, &["vmlinuz-x86_64", "boot.ipxe"]).unwrap_err(),
            "QEMU's TFTP server opened boot.ipxe before the file fetched before it (files opened: boot.ipxe, vmlinuz-x86_64, initramfs-x86_64)"
        );
        assert_eq!(
            check_served_in_order(&reads, &["boot.ipxe", "vmlinuz-x86_64", "initramfs-x86_64"])
                .unwrap_err(),
            "QEMU's TFTP server opened initramfs-x86_64 but did not read it to its close (read: false, closed after reading: false)"
        );
        assert_eq!(
            check_served_in_order(&reads, &["cmdline"]).unwrap_err(),
            "QEMU's TFTP server never opened cmdline (files opened: boot.ipxe, vmlinuz-x86_64, initramfs-x86_64)"
        );
    }
}
