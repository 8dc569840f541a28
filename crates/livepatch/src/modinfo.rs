//! What a module file says about itself (`.modinfo`: name, vermagic, livepatch flag), read
//! before anything is loaded so that a module built for another kernel is refused by us with a
//! clear message rather than by the loader with `Invalid module format`.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

/// Errors reading a module's `.modinfo`.
#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF module.
    #[error("{path} is not a kernel module")]
    NotAModule {
        path: PathBuf,
        #[source]
        source: Option<object::Error>,
    },
}

/// The fields of `.modinfo` we use.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Modinfo {
    /// `name=`: the module name the kernel will use.
    pub name: String,
    /// `vermagic=`: release and build options the module was built for.
    pub vermagic: String,
    /// `livepatch=Y`.
    pub livepatch: bool,
    /// `overboot_replace=Y`: a cumulative patch that replaces all others.
    pub replace: bool,
}

impl Modinfo {
    /// The kernel release the module was built for (first word of vermagic).
    pub fn release(&self) -> &str {
        self.vermagic.split_whitespace().next().unwrap_or("")
    }
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse(section: &[u8]) -> Modinfo {
    let mut info = Modinfo::default();
    for entry in section.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = value.to_string(),
            "vermagic" => info.vermagic = value.to_string(),
            "livepatch" => info.livepatch = value == "Y",
            "overboot_replace" => info.replace = value == "Y",
            _ => {}
        }
    }
    info
}

/// Reads the `.modinfo` of a module file.
pub fn read(path: &Path) -> Result<Modinfo, ModinfoError> {
    let data = std::fs::read(path).map_err(|source| ModinfoError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let not_module = |source| ModinfoError::NotAModule {
        path: path.to_path_buf(),
        source,
    };
    let file = object::File::parse(&*data).map_err(|e| not_module(Some(e)))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| not_module(None))?;
    let bytes = section.data().map_err(|e| not_module(Some(e)))?;
    Ok(parse(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let raw = b"license=GPL\0livepatch=Y\0name=livepatch_x\0vermagic=6.1.0-47-cloud-amd64 SMP mod_unload modversions \0";
        let info = parse(raw);
        assert_eq!(info.name, "livepatch_x");
        assert_eq!(info.release(), "6.1.0-47-cloud-amd64");
        assert!(info.livepatch);
        assert!(!info.replace);
    }
}
