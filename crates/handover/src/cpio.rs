//! Our own writer and reader of "newc" cpio archives (the format the kernel unpacks from an
//! initrd), used by the initrd store to append a Save State Map to the new kernel's initrd.
//!
//! Why our own code rather than a crate or the `cpio` tool: the format is tiny (a fixed ASCII
//! header per entry), we need exact control of alignment because the archive is concatenated
//! after another initrd, and the old kernel's host may have no `cpio` binary at all.
//!
//! ```text
//! entry := header(110 bytes) name NUL pad4   data pad4
//!          └──────── padded so that header+name+NUL ends on a 4-byte boundary
//!                                            └── data padded to a 4-byte boundary
//!
//! header := "070701" then 13 fields of 8 upper-case hex digits:
//!           ino mode uid gid nlink mtime filesize devmajor devminor
//!           rdevmajor rdevminor namesize(incl. NUL) check(0)
//!
//! archive := entry* "TRAILER!!!" entry (all fields 0, nlink 1)
//! ```
//!
//! Offsets are relative to the start of the archive; the caller places the archive at a 4-byte
//! aligned offset (the kernel requires each archive in an initrd to start on one). Entries are
//! owned by root (uid/gid 0) with mtime 0, so the output depends only on the content; a
//! directory must be appended before the entries inside it (the kernel does not create parents).

use std::io::{self, Read, Write};

/// Errors writing or reading a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The output failed.
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
    /// The source of an entry's data failed.
    #[error("cannot read the data of {name}")]
    Read {
        /// Entry name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry name cannot be stored.
    #[error("entry name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry is too big for the 32-bit size field.
    #[error("{name} is {size} bytes; a newc entry holds at most 4 GiB - 1")]
    TooLarge {
        /// Entry name.
        name: String,
        /// Its size.
        size: u64,
    },
    /// The data source ended before the announced size.
    #[error("{name}: source ended after {actual} of {expected} bytes")]
    ShortData {
        /// Entry name.
        name: String,
        /// Announced size.
        expected: u64,
        /// Bytes obtained.
        actual: u64,
    },
    /// More entries than 32-bit inode numbers allow.
    #[error("too many entries for one archive")]
    TooManyEntries,
    /// No newc magic where an entry should start.
    #[error("no newc magic at offset {offset}")]
    BadMagic {
        /// Offset in the archive.
        offset: usize,
    },
    /// A header field is not 8 hex digits or is out of range.
    #[error("bad {field} field in the header at offset {offset}")]
    BadField {
        /// Offset of the entry in the archive.
        offset: usize,
        /// Field name.
        field: &'static str,
    },
    /// The archive ends inside an entry or before its trailer.
    #[error("archive truncated in the entry at offset {offset}")]
    Truncated {
        /// Offset of the entry in the archive.
        offset: usize,
    },
}

/// Magic of a newc header.
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Name of the last entry of every archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a newc header.
const HEADER_LEN: usize = 110;
/// Longest name, without its NUL (the kernel's PATH_MAX includes the NUL).
const MAX_NAME_LEN: usize = 4095;
/// File type bits of `st_mode`.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const ZEROS: [u8; 4] = [0; 4];

/// Bytes needed after `len` to reach a multiple of 4.
pub fn pad4(len: u64) -> u64 {
    (4 - len % 4) % 4
}

/// Writes a newc archive to `W`.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive; `out` must be at a 4-byte aligned position of the final file.
    pub fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends a directory with permission bits `perm`.
    pub fn append_dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        check_name(name)?;
        let ino = self.take_ino()?;
        self.write_header(name, ino, S_IFDIR | (perm & 0o7777), 2, 0)
    }

    /// Appends a regular file with permission bits `perm` whose `size` bytes come from `data`.
    pub fn append_file(
        &mut self,
        name: &str,
        perm: u32,
        size: u64,
        data: &mut impl Read,
    ) -> Result<(), CpioError> {
        check_name(name)?;
        let size32 = u32::try_from(size).map_err(|_| CpioError::TooLarge {
            name: name.to_owned(),
            size,
        })?;
        let ino = self.take_ino()?;
        self.write_header(name, ino, S_IFREG | (perm & 0o7777), 1, size32)?;
        let copied = copy_exact(&mut data.take(size), &mut self.out, name)?;
        if copied != size {
            return Err(CpioError::ShortData {
                name: name.to_owned(),
                expected: size,
                actual: copied,
            });
        }
        self.offset += size;
        self.pad()
    }

    /// Appends the trailer, flushes, and returns the output and the archive's length in bytes.
    pub fn finish(mut self) -> Result<(W, u64), CpioError> {
        self.write_header(TRAILER, 0, 0, 1, 0)?;
        self.out.flush().map_err(CpioError::Write)?;
        Ok((self.out, self.offset))
    }

    fn take_ino(&mut self) -> Result<u32, CpioError> {
        let ino = self.next_ino;
        self.next_ino = ino.checked_add(1).ok_or(CpioError::TooManyEntries)?;
        Ok(ino)
    }

    fn write_header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        filesize: u32,
    ) -> Result<(), CpioError> {
        let namesize = u32::try_from(name.len() + 1).map_err(|_| CpioError::InvalidName {
            name: name.to_owned(),
            reason: "too long",
        })?;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [ino, mode, 0, 0, nlink, 0, filesize, 0, 0, 0, 0, namesize, 0];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(NEWC_MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.out.write_all(&header).map_err(CpioError::Write)?;
        self.offset += header.len() as u64;
        self.pad()
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let n = pad4(self.offset);
        // n < 4, so the conversion cannot fail.
        let len = usize::try_from(n).unwrap_or(0);
        self.out
            .write_all(&ZEROS[..len])
            .map_err(CpioError::Write)?;
        self.offset += n;
        Ok(())
    }
}

fn copy_exact(src: &mut impl Read, dst: &mut impl Write, name: &str) -> Result<u64, CpioError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(CpioError::Read {
                    name: name.to_owned(),
                    source,
                })
            }
        };
        dst.write_all(&buf[..n]).map_err(CpioError::Write)?;
        total += n as u64;
    }
}

fn check_name(name: &str) -> Result<(), CpioError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "too long"
    } else if name.contains('\0') {
        "contains NUL"
    } else if name == TRAILER {
        "reserved for the trailer"
    } else {
        return Ok(());
    };
    Err(CpioError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry<'a> {
    /// Path as stored (no leading `/`).
    pub name: &'a str,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Inode number as stored.
    pub ino: u32,
    /// Link count as stored.
    pub nlink: u32,
    /// The entry's data (empty for directories).
    pub data: &'a [u8],
}

impl CpioEntry<'_> {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    /// Permission bits.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// An archive read back from a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioArchive<'a> {
    /// Entries in order, without the trailer.
    pub entries: Vec<CpioEntry<'a>>,
    /// Bytes the archive occupies, up to and including the trailer's padding.
    pub len: usize,
}

/// Reads one newc archive from the start of `buf`, up to its trailer; bytes after it (another
/// archive, padding) are left alone and `len` says where they start.
pub fn read_archive(buf: &[u8]) -> Result<CpioArchive<'_>, CpioError> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        let start = offset;
        let header = buf
            .get(start..start + HEADER_LEN)
            .ok_or(CpioError::Truncated { offset: start })?;
        if &header[..6] != NEWC_MAGIC {
            return Err(CpioError::BadMagic { offset: start });
        }
        let field = |index: usize, name: &'static str| -> Result<u32, CpioError> {
            let at = 6 + index * 8;
            std::str::from_utf8(&header[at..at + 8])
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or(CpioError::BadField {
                    offset: start,
                    field: name,
                })
        };
        let bad = |field| CpioError::BadField {
            offset: start,
            field,
        };
        let ino = field(0, "ino")?;
        let mode = field(1, "mode")?;
        let uid = field(2, "uid")?;
        let gid = field(3, "gid")?;
        let nlink = field(4, "nlink")?;
        let mtime = field(5, "mtime")?;
        let filesize = usize::try_from(field(6, "filesize")?).map_err(|_| bad("filesize"))?;
        let namesize = usize::try_from(field(11, "namesize")?).map_err(|_| bad("namesize"))?;
        if namesize == 0 {
            return Err(bad("namesize"));
        }
        let name_end = start + HEADER_LEN + namesize;
        let name_bytes = buf
            .get(start + HEADER_LEN..name_end)
            .ok_or(CpioError::Truncated { offset: start })?;
        let (last, name_bytes) = name_bytes.split_last().ok_or(bad("namesize"))?;
        if *last != 0 {
            return Err(bad("name"));
        }
        let name = std::str::from_utf8(name_bytes).map_err(|_| bad("name"))?;
        let data_start = align4(name_end);
        let data_end = data_start + filesize;
        let data = buf
            .get(data_start..data_end)
            .ok_or(CpioError::Truncated { offset: start })?;
        offset = align4(data_end);
        if name == TRAILER {
            if offset > buf.len() {
                return Err(CpioError::Truncated { offset: start });
            }
            return Ok(CpioArchive {
                entries,
                len: offset,
            });
        }
        entries.push(CpioEntry {
            name,
            mode,
            uid,
            gid,
            mtime,
            ino,
            nlink,
            data,
        });
    }
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.append_dir("a", 0o700).unwrap();
        w.append_file("a/odd", 0o600, 5, &mut &b"hello"[..])
            .unwrap();
        w.append_file("a/empty", 0o644, 0, &mut io::empty())
            .unwrap();
        let (bytes, len) = w.finish().unwrap();
        assert_eq!(len, bytes.len() as u64);
        bytes
    }

    #[test]
    fn round_trips_with_newc_alignment() {
        let bytes = archive();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..6], b"070701");
        let parsed = read_archive(&bytes).unwrap();
        assert_eq!(parsed.len, bytes.len());
        let names: Vec<_> = parsed.entries.iter().map(|e| e.name).collect();
        assert_eq!(names, ["a", "a/odd", "a/empty"]);
        assert!(parsed.entries[0].is_dir());
        assert_eq!(parsed.entries[0].perm(), 0o700);
        assert!(parsed.entries[1].is_file());
        assert_eq!(parsed.entries[1].data, b"hello");
        assert_eq!(parsed.entries[2].data, b"");
        // header (110) + "a\0" (2) = 112, aligned: the second entry starts at 112.
        assert_eq!(&bytes[112..118], b"070701");
    }

    #[test]
    fn refuses_short_data_truncation_and_garbage() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(matches!(
            w.append_file("x", 0o600, 10, &mut &b"abc"[..]),
            Err(CpioError::ShortData { actual: 3, .. })
        ));
        let bytes = archive();
        assert!(matches!(
            read_archive(&bytes[..bytes.len() - 8]),
            Err(CpioError::Truncated { .. })
        ));
        let mut bad = bytes.clone();
        bad[0] = b'1';
        assert!(matches!(
            read_archive(&bad),
            Err(CpioError::BadMagic { offset: 0 })
        ));
        let mut bad = bytes;
        bad[6] = b'Z';
        assert!(matches!(
            read_archive(&bad),
            Err(CpioError::BadField { field: "ino", .. })
        ));
    }
}
