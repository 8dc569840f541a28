//! Fault injection for tests. Inert unless the kernel command line of the *new* kernel carries
//! `overboot.fault=<fault>`; the command line of a rollback never does (overboot strips its own
//! parameters from the recipe), so an injected fault strikes once.
//!
//! | parameter | effect in the resume agent |
//! |---|---|
//! | `overboot.fault=restore-fail:<tree>` | the restore of `<tree>` fails |
//! | `overboot.fault=flip-byte:<tree>` | one byte of one image of `<tree>` is flipped before verification (a corruption in transit: undone before a rollback republishes the map) |
//! | `overboot.fault=kill-agent` | the agent's worker is killed (SIGKILL) after restoring its first tree |

/// An injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Fail the restore of this tree.
    RestoreFail(String),
    /// Flip a byte of one image of this tree.
    FlipByte(String),
    /// Kill the agent's worker in the middle of the restore.
    KillAgent,
}

/// The fault named on a kernel command line, if any.
pub fn from_cmdline(cmdline: &str) -> Option<Fault> {
    let value = cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix("overboot.fault="))?;
    match value.split_once(':') {
        Some(("restore-fail", tree)) => Some(Fault::RestoreFail(tree.into())),
        Some(("flip-byte", tree)) => Some(Fault::FlipByte(tree.into())),
        None if value == "kill-agent" => Some(Fault::KillAgent),
        _ => None,
    }
}

/// Flips the first byte of the largest file under `dir` and returns its path and the byte's
/// original value, so the flip can be undone.
pub fn flip_byte(dir: &std::path::Path) -> std::io::Result<(std::path::PathBuf, u8)> {
    use std::os::unix::fs::FileExt;
    let largest = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .ok_or_else(|| std::io::Error::other("no image to corrupt"))?
        .path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&largest)?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 0)?;
    file.write_all_at(&[byte[0] ^ 0xff], 0)?;
    Ok((largest, byte[0]))
}

/// Writes back the original byte flipped by [`flip_byte`].
pub fn unflip_byte(path: &std::path::Path, original: u8) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(&[original], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_only_from_their_parameter() {
        assert_eq!(from_cmdline("console=ttyS0 quiet"), None);
        assert_eq!(
            from_cmdline("a overboot.fault=restore-fail:pid-42 b"),
            Some(Fault::RestoreFail("pid-42".into()))
        );
        assert_eq!(
            from_cmdline("overboot.fault=flip-byte:pid-7"),
            Some(Fault::FlipByte("pid-7".into()))
        );
        assert_eq!(
            from_cmdline("overboot.fault=kill-agent"),
            Some(Fault::KillAgent)
        );
        assert_eq!(from_cmdline("overboot.fault=nonsense"), None);
    }

    #[test]
    fn a_flip_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("small"), b"ab").unwrap();
        std::fs::write(dir.path().join("pages-1.img"), b"xyz0123").unwrap();
        let (path, original) = flip_byte(dir.path()).unwrap();
        assert!(path.ends_with("pages-1.img"));
        assert_ne!(std::fs::read(&path).unwrap(), b"xyz0123");
        unflip_byte(&path, original).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"xyz0123");
    }
}
