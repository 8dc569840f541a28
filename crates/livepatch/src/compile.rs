//! Compiling one kernel unit the way the release compiled it, plus `-ffunction-sections
//! -fdata-sections` so that every function and object lands in its own section and can be
//! compared on its own. The unit is built through the headers package's kbuild as a built-in
//! object (`obj-y`, so without `-DMODULE`) of an external tree: the kernel's own `KBUILD_CFLAGS`
//! from the release's `.config`, the compiler it names (`gcc-12`), nothing else of the kernel
//! built. Per-directory flags of the unit's own Makefile are not replayed; the unit's directory
//! is on the include path so its local headers are found.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::io_error::{io, IoError};
use crate::tree::KernelTree;

/// Errors compiling a unit.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The compiler rejected the unit.
    #[error("compiling {unit} ({side}) failed:\n{log}")]
    Failed {
        unit: PathBuf,
        side: &'static str,
        log: String,
    },
    /// make could not be started.
    #[error("cannot run make")]
    Spawn(#[source] std::io::Error),
    /// Filesystem error.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Compiles `c_file` (a copy of the unit at `unit` in the source tree) in `out_dir`, returning
/// the object's path. `side` names the build in messages (`before`, `after`).
pub fn compile_unit(
    tree: &KernelTree,
    unit: &Path,
    c_file: &Path,
    out_dir: &Path,
    side: &'static str,
) -> Result<PathBuf, CompileError> {
    fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let file_name = unit.file_name().unwrap_or_default();
    let stem = unit
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("unit")
        .to_string();
    let local = out_dir.join(file_name);
    fs::copy(c_file, &local).map_err(io(c_file))?;
    let unit_dir = tree.source.join(unit.parent().unwrap_or(Path::new("")));
    let kbuild = format!(
        "obj-y := {stem}.o\n\
         ccflags-y := -ffunction-sections -fdata-sections -I{unit_dir}\n\
         OBJECT_FILES_NON_STANDARD := y\n",
        unit_dir = unit_dir.display()
    );
    let kbuild_path = out_dir.join("Kbuild");
    fs::write(&kbuild_path, kbuild).map_err(io(&kbuild_path))?;
    let object = out_dir.join(format!("{stem}.o"));
    let _ = fs::remove_file(&object);
    let out = Command::new("make")
        .arg("-C")
        .arg(&tree.headers)
        .arg(format!("M={}", out_dir.display()))
        .arg(format!("{stem}.o"))
        .output()
        .map_err(CompileError::Spawn)?;
    if !out.status.success() || !object.exists() {
        return Err(CompileError::Failed {
            unit: unit.to_path_buf(),
            side,
            log: tail(&out.stderr, 30),
        });
    }
    Ok(object)
}

/// The last `lines` lines of a tool's output.
pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
