//! Parse and validate an x86 bzImage before it is handed to `kexec_file_load`.
//!
//! This is the first thing `plan` and `update` do with the new kernel: refuse, with a reason an
//! operator can act on, an image the running kernel's bzImage64 loader would refuse with a bare
//! `ENOEXEC`. Pure: it reads bytes it is given, never a file or a syscall.
//!
//! The layout (Linux `Documentation/arch/x86/boot.rst`, offsets from the start of the file):
//!
//! ```text
//!  0x000 ┌──────────────────────────────┐
//!        │ legacy boot sector            │
//!  0x1F1 │ setup_sects  u8   (0 means 4) │
//!  0x1F4 │ syssize      u32  (16-byte paragraphs of protected-mode code)
//!  0x1FE │ boot_flag    u16  0xAA55      │
//!  0x202 │ header       "HdrS"           │
//!  0x206 │ version      u16  major<<8|minor
//!  0x20E │ kernel_version u16 (string offset - 0x200)
//!  0x211 │ loadflags    u8   bit0 LOADED_HIGH
//!  0x236 │ xloadflags   u16  bit0 XLF_KERNEL_64, bit1 XLF_CAN_BE_LOADED_ABOVE_4G (2.12+)
//!  0x238 │ cmdline_size u32  longest command line without its NUL (2.06+)
//!        │ ... rest of the real-mode setup code, version string ...
//!  (setup_sects+1)*512 ├──────────────┤
//!        │ protected-mode kernel: syssize*16 bytes
//!        └──────────────────────────────┘  (signatures may follow; a longer file is fine)
//! ```
//!
//! The checks mirror the kernel's own `bzImage64_probe` (boot protocol 2.12 or newer, LOADED_HIGH,
//! XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G) plus the ones a loader that only sees the file can
//! add: the setup size is sane, the file is not truncated, the version string is there.

/// Offset of `setup_sects`.
const SETUP_SECTS: usize = 0x1F1;
/// Offset of `syssize`.
const SYSSIZE: usize = 0x1F4;
/// Offset of `boot_flag`.
const BOOT_FLAG: usize = 0x1FE;
/// Offset of the `HdrS` magic.
const HEADER_MAGIC: usize = 0x202;
/// Offset of the boot protocol version.
const VERSION: usize = 0x206;
/// Offset of `kernel_version`.
const KERNEL_VERSION: usize = 0x20E;
/// Offset of `loadflags`.
const LOADFLAGS: usize = 0x211;
/// Offset of `xloadflags`.
const XLOADFLAGS: usize = 0x236;
/// Offset of `cmdline_size`.
const CMDLINE_SIZE: usize = 0x238;
/// Bytes of the file the fields above need.
pub const HEADER_END: usize = CMDLINE_SIZE + 4;

/// The `HdrS` magic.
const MAGIC: &[u8; 4] = b"HdrS";
/// The legacy boot sector signature.
const BOOT_FLAG_VALUE: u16 = 0xAA55;
/// `loadflags` bit: the protected-mode code is loaded at 0x100000 (a bzImage, not a zImage).
const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit: the kernel has the 64-bit entry point at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit: the kernel, boot_params and command line may live above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// Sector size of the real-mode part.
const SECTOR: u64 = 512;
/// Largest `setup_sects` accepted: the real-mode part must fit in 32 KiB.
const MAX_SETUP_SECTS: u8 = 63;
/// Oldest boot protocol `kexec_file_load`'s bzImage64 loader accepts.
pub const MIN_PROTOCOL: (u8, u8) = (2, 12);
/// Longest version string accepted, in bytes (real ones are about 120).
const MAX_VERSION_LEN: usize = 512;
/// Bytes a caller should read from the start of the file: the whole real-mode part at its
/// largest, so the version string is inside.
pub const PREFIX_LEN: usize = (MAX_SETUP_SECTS as usize + 1) * 512;

/// Why a file is not a bzImage the running kernel can kexec into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BzImageError {
    /// The file ends before the setup header does.
    #[error("{len} bytes, too short for a setup header")]
    TooShort {
        /// Length of the file.
        len: u64,
    },
    /// No `0xAA55` at 0x1FE.
    #[error("boot flag at 0x1fe is {found:#06x}, not 0xaa55")]
    BadBootFlag {
        /// The value found.
        found: u16,
    },
    /// No `HdrS` at 0x202.
    #[error("no HdrS magic at 0x202")]
    NoHeaderMagic,
    /// `setup_sects` outside 1..=63.
    #[error("setup_sects {0} is out of range")]
    BadSetupSects(u8),
    /// The boot protocol is older than [`MIN_PROTOCOL`].
    #[error("boot protocol {major}.{minor:02} is older than 2.12")]
    ProtocolTooOld {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// `loadflags` lack LOADED_HIGH: a zImage.
    #[error("loadflags lack LOADED_HIGH (a zImage)")]
    NotLoadedHigh,
    /// `xloadflags` lack XLF_KERNEL_64.
    #[error("xloadflags lack XLF_KERNEL_64")]
    Not64Bit,
    /// `xloadflags` lack XLF_CAN_BE_LOADED_ABOVE_4G.
    #[error("xloadflags lack XLF_CAN_BE_LOADED_ABOVE_4G")]
    NotAbove4G,
    /// The file is shorter than the setup part plus `syssize * 16`.
    #[error("{actual} bytes, the header says {expected}")]
    Truncated {
        /// Bytes the header promises.
        expected: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// `kernel_version` points outside the setup code.
    #[error("kernel_version points at {offset:#x}, outside the setup code")]
    BadVersionPointer {
        /// File offset the pointer resolves to.
        offset: usize,
    },
    /// The version string is empty, unterminated or not printable text.
    #[error("no readable version string at {offset:#x}")]
    BadVersionString {
        /// File offset of the string.
        offset: usize,
    },
}

/// The setup header fields overboot uses, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupHeader {
    /// `setup_sects`, with 0 already replaced by 4.
    pub setup_sects: u8,
    /// Protected-mode code size in 16-byte paragraphs.
    pub syssize: u32,
    /// Boot protocol version (major, minor).
    pub protocol: (u8, u8),
    /// Raw `loadflags`.
    pub loadflags: u8,
    /// Raw `xloadflags`.
    pub xloadflags: u16,
    /// Longest command line the kernel takes, without its terminating NUL.
    pub cmdline_size: u32,
    /// The embedded version string, e.g. `6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP ...`.
    pub version_string: String,
}

impl SetupHeader {
    /// Bytes of the real-mode part: `(setup_sects + 1) * 512`.
    pub fn setup_len(&self) -> u64 {
        (u64::from(self.setup_sects) + 1) * SECTOR
    }

    /// Bytes the whole image needs: setup part plus `syssize * 16`.
    pub fn image_len(&self) -> u64 {
        self.setup_len() + u64::from(self.syssize) * 16
    }

    /// The kernel release: the first word of the version string (`uname -r` in the new kernel).
    pub fn release(&self) -> &str {
        self.version_string
            .split_whitespace()
            .next()
            .unwrap_or_default()
    }
}

/// Parses and validates a bzImage from its first bytes (`prefix`, at least [`PREFIX_LEN`] when
/// the file is that long) and the length of the whole file.
pub fn parse(prefix: &[u8], file_len: u64) -> Result<SetupHeader, BzImageError> {
    if prefix.len() < HEADER_END {
        return Err(BzImageError::TooShort { len: file_len });
    }
    let boot_flag = u16_at(prefix, BOOT_FLAG);
    if &prefix[HEADER_MAGIC..HEADER_MAGIC + 4] != MAGIC {
        return Err(BzImageError::NoHeaderMagic);
    }
    if boot_flag != BOOT_FLAG_VALUE {
        return Err(BzImageError::BadBootFlag { found: boot_flag });
    }
    let [major, minor] = u16_at(prefix, VERSION).to_be_bytes();
    if (major, minor) < MIN_PROTOCOL {
        return Err(BzImageError::ProtocolTooOld { major, minor });
    }
    let setup_sects = match prefix[SETUP_SECTS] {
        0 => 4,
        n if n <= MAX_SETUP_SECTS => n,
        n => return Err(BzImageError::BadSetupSects(n)),
    };
    let loadflags = prefix[LOADFLAGS];
    if loadflags & LOADED_HIGH == 0 {
        return Err(BzImageError::NotLoadedHigh);
    }
    let xloadflags = u16_at(prefix, XLOADFLAGS);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageError::Not64Bit);
    }
    if xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G == 0 {
        return Err(BzImageError::NotAbove4G);
    }
    let mut header = SetupHeader {
        setup_sects,
        syssize: u32_at(prefix, SYSSIZE),
        protocol: (major, minor),
        loadflags,
        xloadflags,
        cmdline_size: u32_at(prefix, CMDLINE_SIZE),
        version_string: String::new(),
    };
    let expected = header.image_len();
    if file_len < expected {
        return Err(BzImageError::Truncated {
            expected,
            actual: file_len,
        });
    }
    header.version_string = version_string(prefix, &header)?;
    Ok(header)
}

/// Reads the NUL-terminated string `kernel_version` points at, inside the setup part.
fn version_string(prefix: &[u8], header: &SetupHeader) -> Result<String, BzImageError> {
    let offset = usize::from(u16_at(prefix, KERNEL_VERSION)) + 0x200;
    // The setup part is at most 32 KiB, so this conversion cannot fail; be safe anyway.
    let setup_end = usize::try_from(header.setup_len())
        .unwrap_or(usize::MAX)
        .min(prefix.len());
    if offset < HEADER_END || offset >= setup_end {
        return Err(BzImageError::BadVersionPointer { offset });
    }
    let window = &prefix[offset..setup_end.min(offset + MAX_VERSION_LEN)];
    let bad = BzImageError::BadVersionString { offset };
    let end = window.iter().position(|&b| b == 0).ok_or(bad.clone())?;
    let text = &window[..end];
    let printable = text.iter().all(|&b| b == b' ' || b.is_ascii_graphic());
    if text.is_empty() || !printable || text[0] == b' ' {
        return Err(bad);
    }
    String::from_utf8(text.to_vec()).map_err(|_| bad)
}

/// Little-endian u16 at `at`; the caller has checked the length.
fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

/// Little-endian u32 at `at`; the caller has checked the length.
fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Builders of synthetic images, shared by this crate's tests.
#[cfg(test)]
pub(crate) mod synth {
    use super::*;

    /// The version string synthetic images carry.
    pub(crate) const VERSION_STRING: &str =
        "6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)";
    /// `setup_sects` of synthetic images.
    pub(crate) const SETUP_SECTS_VALUE: u8 = 4;
    /// `syssize` of synthetic images (4 KiB of "kernel").
    pub(crate) const SYSSIZE_VALUE: u32 = 256;
    /// Where the version string goes (file offset).
    pub(crate) const VERSION_AT: usize = 0x400;

    /// A valid protocol-2.15, 64-bit image: header fields written into a zero buffer.
    pub(crate) fn image() -> Vec<u8> {
        let setup = (usize::from(SETUP_SECTS_VALUE) + 1) * 512;
        let total = setup + usize::try_from(SYSSIZE_VALUE).unwrap() * 16;
        let mut buf = vec![0u8; total];
        buf[SETUP_SECTS] = SETUP_SECTS_VALUE;
        buf[SYSSIZE..SYSSIZE + 4].copy_from_slice(&SYSSIZE_VALUE.to_le_bytes());
        buf[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&BOOT_FLAG_VALUE.to_le_bytes());
        buf[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(MAGIC);
        set_protocol(&mut buf, 2, 15);
        let ptr = u16::try_from(VERSION_AT - 0x200).unwrap();
        buf[KERNEL_VERSION..KERNEL_VERSION + 2].copy_from_slice(&ptr.to_le_bytes());
        buf[LOADFLAGS] = LOADED_HIGH;
        let xlf = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G;
        buf[XLOADFLAGS..XLOADFLAGS + 2].copy_from_slice(&xlf.to_le_bytes());
        buf[CMDLINE_SIZE..CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        buf[VERSION_AT..VERSION_AT + VERSION_STRING.len()]
            .copy_from_slice(VERSION_STRING.as_bytes());
        buf
    }

    /// Writes the boot protocol version.
    pub(crate) fn set_protocol(buf: &mut [u8], major: u8, minor: u8) {
        buf[VERSION..VERSION + 2]
            .copy_from_slice(&u16::from_be_bytes([major, minor]).to_le_bytes());
    }

    /// Writes `xloadflags`.
    pub(crate) fn set_xloadflags(buf: &mut [u8], xlf: u16) {
        buf[XLOADFLAGS..XLOADFLAGS + 2].copy_from_slice(&xlf.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::synth::*;
    use super::*;

    fn check(buf: &[u8]) -> Result<SetupHeader, BzImageError> {
        parse(buf, u64::try_from(buf.len()).unwrap())
    }

    #[test]
    fn valid_image_gives_release_protocol_and_sizes() {
        let h = check(&image()).unwrap();
        assert_eq!(h.release(), "6.1.0-56-cloud-amd64");
        assert_eq!(h.version_string, VERSION_STRING);
        assert_eq!(h.protocol, (2, 15));
        assert_eq!(h.setup_len(), 5 * 512);
        assert_eq!(h.image_len(), 5 * 512 + 4096);
        assert_eq!(h.cmdline_size, 2047);
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let mut buf = image();
        buf[SETUP_SECTS] = 0;
        assert_eq!(check(&buf).unwrap().setup_sects, 4);
    }

    #[test]
    fn a_longer_file_is_fine() {
        let mut buf = image();
        buf.extend_from_slice(&[0u8; 1000]); // e.g. an appended signature
        assert!(check(&buf).is_ok());
    }

    #[test]
    fn short_file_is_too_short() {
        assert_eq!(check(&[0u8; 100]), Err(BzImageError::TooShort { len: 100 }));
    }

    #[test]
    fn missing_magic_is_refused() {
        let mut buf = image();
        buf[HEADER_MAGIC] = b'X';
        assert_eq!(check(&buf), Err(BzImageError::NoHeaderMagic));
        assert_eq!(
            BzImageError::NoHeaderMagic.to_string(),
            "no HdrS magic at 0x202"
        );
    }

    #[test]
    fn missing_boot_flag_is_refused() {
        let mut buf = image();
        buf[BOOT_FLAG] = 0;
        assert_eq!(
            check(&buf),
            Err(BzImageError::BadBootFlag { found: 0xAA00 })
        );
    }

    #[test]
    fn protocol_older_than_2_12_is_refused() {
        let mut buf = image();
        set_protocol(&mut buf, 2, 11);
        assert_eq!(
            check(&buf),
            Err(BzImageError::ProtocolTooOld {
                major: 2,
                minor: 11
            })
        );
        set_protocol(&mut buf, 2, 12);
        assert!(check(&buf).is_ok());
    }

    #[test]
    fn insane_setup_sects_is_refused() {
        let mut buf = image();
        buf[SETUP_SECTS] = 200;
        assert_eq!(check(&buf), Err(BzImageError::BadSetupSects(200)));
    }

    #[test]
    fn zimage_is_refused() {
        let mut buf = image();
        buf[LOADFLAGS] = 0;
        assert_eq!(check(&buf), Err(BzImageError::NotLoadedHigh));
    }

    #[test]
    fn kernel_without_64_bit_entry_is_refused() {
        let mut buf = image();
        set_xloadflags(&mut buf, XLF_CAN_BE_LOADED_ABOVE_4G);
        assert_eq!(check(&buf), Err(BzImageError::Not64Bit));
        set_xloadflags(&mut buf, XLF_KERNEL_64);
        assert_eq!(check(&buf), Err(BzImageError::NotAbove4G));
    }

    #[test]
    fn truncated_file_says_how_much_is_missing() {
        let buf = image();
        let cut = &buf[..buf.len() - 1];
        let expected = u64::try_from(buf.len()).unwrap();
        assert_eq!(
            check(cut),
            Err(BzImageError::Truncated {
                expected,
                actual: expected - 1
            })
        );
    }

    #[test]
    fn version_pointer_outside_setup_is_refused() {
        let mut buf = image();
        buf[KERNEL_VERSION..KERNEL_VERSION + 2].copy_from_slice(&0x2000u16.to_le_bytes());
        assert_eq!(
            check(&buf),
            Err(BzImageError::BadVersionPointer { offset: 0x2200 })
        );
    }

    #[test]
    fn unterminated_or_empty_version_is_refused() {
        let mut buf = image();
        buf[VERSION_AT] = 0;
        assert_eq!(
            check(&buf),
            Err(BzImageError::BadVersionString { offset: VERSION_AT })
        );
        let mut buf = image();
        let setup_end = (usize::from(SETUP_SECTS_VALUE) + 1) * 512;
        buf[VERSION_AT..setup_end].fill(b'a');
        assert_eq!(
            check(&buf),
            Err(BzImageError::BadVersionString { offset: VERSION_AT })
        );
    }
}
