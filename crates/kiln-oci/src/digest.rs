//! `sha256:<hex>` digests, the only algorithm kiln writes or accepts.

use std::fmt;
use std::io::{self, Write};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A sha256 content digest, shown and serialised as `sha256:<64 lowercase hex digits>`
/// (the OCI descriptor form).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest {
    bytes: [u8; 32],
}

/// A string that is not `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, thiserror::Error)]
#[error("digest {text:?} is not of the form sha256:<64 lowercase hex digits>: kiln only reads and writes sha256 digests")]
pub struct DigestParseError {
    /// The rejected text.
    pub text: String,
}

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_array(Sha256::digest(bytes).into())
    }

    /// Wraps a raw 32-byte hash.
    pub const fn from_array(bytes: [u8; 32]) -> Self {
        Self { bytes }
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix (the blob's file name).
    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// Parses `sha256:<64 lowercase hex digits>`.
    pub fn parse(text: &str) -> Result<Self, DigestParseError> {
        let error = || DigestParseError {
            text: text.to_owned(),
        };
        let hex_digits = text.strip_prefix("sha256:").ok_or_else(error)?;
        if hex_digits.len() != 64 || hex_digits.bytes().any(|byte| byte.is_ascii_uppercase()) {
            return Err(error());
        }
        let mut bytes = [0_u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| error())?;
        Ok(Self { bytes })
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts what passes through it on the way to `inner`.
#[derive(Debug)]
pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    hasher: Sha256,
    pub(crate) bytes_written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes_written: 0,
        }
    }

    pub(crate) fn digest(&self) -> Sha256Digest {
        Sha256Digest::from_array(self.hasher.clone().finalize().into())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buffer)?;
        self.hasher.update(&buffer[..written]);
        self.bytes_written += u64::try_from(written).expect("usize fits in u64");
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_its_text_form() {
        let digest = Sha256Digest::of_bytes(b"");
        assert_eq!(
            digest.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Sha256Digest::parse(&digest.to_string()).unwrap(), digest);
    }

    #[test]
    fn digest_parse_rejects_other_algorithms_and_uppercase() {
        assert!(Sha256Digest::parse("sha512:00").is_err());
        let uppercase = format!("sha256:{}", "A".repeat(64));
        assert!(Sha256Digest::parse(&uppercase).is_err());
        assert!(Sha256Digest::parse("sha256:abc").is_err());
    }
}
