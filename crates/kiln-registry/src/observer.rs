//! Progress and outcome of blob transfers, for progress bars and for tests that must know
//! which blobs a pull downloaded and which it found already stored.

use kiln_oci::Sha256Digest;

/// What happened to one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobOutcome {
    /// Downloaded, verified and committed to the layout.
    Downloaded,
    /// Already in the layout; not requested.
    AlreadyPresent,
    /// Uploaded to the registry.
    Uploaded,
    /// The registry already had it; not uploaded.
    AlreadyInRegistry,
}

/// Told about every blob transfer. Called from the transfer tasks, possibly at once from
/// several; the default methods do nothing.
pub trait TransferObserver: Send + Sync {
    /// A transfer (attempt) begins; `resumed_from` bytes were already received earlier.
    fn blob_started(&self, _digest: &Sha256Digest, _size: u64, _resumed_from: u64) {}
    /// `bytes` more bytes went through.
    fn bytes_transferred(&self, _digest: &Sha256Digest, _bytes: u64) {}
    /// The blob is done.
    fn blob_finished(&self, _digest: &Sha256Digest, _outcome: BlobOutcome) {}
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct IgnoreTransfers;

impl TransferObserver for IgnoreTransfers {}
