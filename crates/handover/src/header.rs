//! The binary header of a Save State Map: the small file `HEADER` next to `manifest.json` that
//! the resume agent reads first. It names the format and pins the exact bytes of the manifest,
//! so a truncated or altered manifest is caught before it is parsed.
//!
//! ```text
//! offset  size  field                                    encoding
//! ------  ----  ---------------------------------------  ------------------
//!      0     8  magic "OVBTSSM\0"                        bytes
//!      8     2  format major                             u16 little-endian
//!     10     2  format minor                             u16 little-endian
//!     12     8  length of manifest.json in bytes         u64 little-endian
//!     20    32  SHA-256 of manifest.json                 raw digest bytes
//!     52        end: exactly 52 bytes, nothing follows
//! ```
//!
//! The header carries no checksum of its own: every field is cross-checked (the version against
//! the manifest's `format`, the length and digest against the manifest bytes), so a damaged
//! header cannot go unnoticed. An unknown major is refused before anything else is read; a
//! higher minor is accepted.

use crate::manifest::{FormatVersion, CURRENT_FORMAT};

/// Errors decoding a map header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The header file is not exactly [`HEADER_LEN`] bytes.
    #[error("header is {actual} bytes, expected {HEADER_LEN}")]
    Length {
        /// Bytes found.
        actual: usize,
    },
    /// The first 8 bytes are not [`MAGIC`].
    #[error("bad magic {found:02x?}: not a Save State Map")]
    BadMagic {
        /// The bytes found instead.
        found: [u8; 8],
    },
    /// The map was written by an incompatible version of overboot.
    #[error("map format {found} is not supported (this build reads {supported_major}.x)")]
    UnsupportedMajor {
        /// Version found in the header.
        found: FormatVersion,
        /// The only major version this build reads.
        supported_major: u16,
    },
}

/// First bytes of every map header.
pub const MAGIC: [u8; 8] = *b"OVBTSSM\0";

/// Size of an encoded header.
pub const HEADER_LEN: usize = 52;

/// The decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapHeader {
    /// Format version of the map.
    pub version: FormatVersion,
    /// Length of `manifest.json` in bytes.
    pub manifest_len: u64,
    /// SHA-256 of `manifest.json`.
    pub manifest_sha256: [u8; 32],
}

impl MapHeader {
    /// Header for a manifest of the current format.
    pub fn for_manifest(manifest_json: &[u8], manifest_sha256: [u8; 32]) -> Self {
        Self {
            version: CURRENT_FORMAT,
            manifest_len: manifest_json.len() as u64,
            manifest_sha256,
        }
    }

    /// Encodes the header (see the module diagram).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.major.to_le_bytes());
        out[10..12].copy_from_slice(&self.version.minor.to_le_bytes());
        out[12..20].copy_from_slice(&self.manifest_len.to_le_bytes());
        out[20..52].copy_from_slice(&self.manifest_sha256);
        out
    }

    /// Decodes and checks a header: length, magic, then major version.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let bytes: &[u8; HEADER_LEN] = bytes.try_into().map_err(|_| HeaderError::Length {
            actual: bytes.len(),
        })?;
        let (magic, rest) = bytes.split_at(8);
        if magic != MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(magic);
            return Err(HeaderError::BadMagic { found });
        }
        let version = FormatVersion {
            major: u16::from_le_bytes([rest[0], rest[1]]),
            minor: u16::from_le_bytes([rest[2], rest[3]]),
        };
        if !version.is_supported() {
            return Err(HeaderError::UnsupportedMajor {
                found: version,
                supported_major: CURRENT_FORMAT.major,
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&rest[4..12]);
        let mut manifest_sha256 = [0u8; 32];
        manifest_sha256.copy_from_slice(&rest[12..44]);
        Ok(Self {
            version,
            manifest_len: u64::from_le_bytes(len),
            manifest_sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> MapHeader {
        MapHeader {
            version: CURRENT_FORMAT,
            manifest_len: 0x0102_0304,
            manifest_sha256: [0xab; 32],
        }
    }

    #[test]
    fn encodes_the_documented_layout() {
        let bytes = header().encode();
        assert_eq!(&bytes[..8], b"OVBTSSM\0");
        assert_eq!(&bytes[8..12], &[3, 0, 2, 0]);
        assert_eq!(&bytes[12..20], &[4, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(MapHeader::decode(&bytes).unwrap(), header());
    }

    #[test]
    fn refuses_wrong_magic_length_and_major() {
        let mut bytes = header().encode();
        bytes[0] = b'X';
        assert!(matches!(
            MapHeader::decode(&bytes),
            Err(HeaderError::BadMagic { .. })
        ));
        let bytes = header().encode();
        assert!(matches!(
            MapHeader::decode(&bytes[..51]),
            Err(HeaderError::Length { actual: 51 })
        ));
        let mut bytes = header().encode();
        bytes[8] = 4;
        assert!(matches!(
            MapHeader::decode(&bytes),
            Err(HeaderError::UnsupportedMajor { found, .. }) if found.major == 4
        ));
        // Formats 1 and 2 (SHA-256 and XXH3-128 image digests) are still read.
        for major in [1, 2] {
            let mut bytes = header().encode();
            bytes[8] = major;
            assert_eq!(
                MapHeader::decode(&bytes).unwrap().version.major,
                u16::from(major)
            );
        }
        let mut bytes = header().encode();
        bytes[10] = 9;
        assert_eq!(MapHeader::decode(&bytes).unwrap().version.minor, 9);
    }
}
