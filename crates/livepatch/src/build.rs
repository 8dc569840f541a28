//! `patch build`: from a source patch to a klp module for one exact Debian kernel release.
//! Each step is its own module; this one strings them together and reports what was built.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::compare::{self, CompareError, Unit};
use crate::compile::{self, CompileError};
use crate::emit::{self, EmitError, KernelSymbols, KlpFunc};
use crate::io_error::{io, IoError};
use crate::module::{self, ModuleError, ModuleSpec};
use crate::sourcepatch::{SourcePatch, SourcePatchError};
use crate::tree::{KernelTree, TreeError};

/// Errors of `patch build`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The source patch is unusable or refused.
    #[error(transparent)]
    SourcePatch(#[from] SourcePatchError),
    /// The kernel tree could not be fetched.
    #[error("fetching the kernel source and headers")]
    Tree(#[from] TreeError),
    /// A unit did not compile.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// Comparing a unit refused the change.
    #[error("in {unit}")]
    Compare {
        unit: PathBuf,
        #[source]
        source: CompareError,
    },
    /// Writing the patch object refused or failed.
    #[error("in {unit}")]
    Emit {
        unit: PathBuf,
        #[source]
        source: EmitError,
    },
    /// Building the module failed.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// Filesystem error.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl BuildError {
    /// Whether this is a refusal of the patch itself (bad input), not a failure of ours.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            BuildError::SourcePatch(_)
                | BuildError::Compare { .. }
                | BuildError::Emit { .. }
                | BuildError::Compile(_)
        )
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The source patch (unified diff, `-p1`).
    pub patch: PathBuf,
    /// The kernel release to build for (`uname -r`).
    pub release: String,
    /// Where downloads and unpacked trees are kept.
    pub cache: PathBuf,
    /// The module file to write.
    pub output: PathBuf,
    /// Module and patch name (default: `livepatch_<patch file stem>`).
    pub name: Option<String>,
    /// Build a cumulative patch that atomically replaces all applied patches.
    pub replace: bool,
    /// The target's `/proc/kallsyms`, to refuse names that are ambiguous there.
    pub kallsyms: Option<PathBuf>,
}

/// What was built.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    /// The module file.
    pub module: PathBuf,
    /// Module and patch name.
    pub name: String,
    /// Kernel release.
    pub release: String,
    /// Debian package version of the source.
    pub source_version: String,
    /// Redirected functions.
    pub functions: Vec<KlpFunc>,
    /// Names reached through livepatch relocations.
    pub klp_symbols: Vec<String>,
    /// Livepatch relocation sections written.
    pub klp_sections: Vec<String>,
    /// Atomic replace.
    pub replace: bool,
}

/// A module name from a patch file name: `livepatch_` + lowercase alphanumerics and `_`.
pub fn module_name(patch: &Path) -> String {
    let stem = patch
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("patch")
        .to_ascii_lowercase();
    let clean: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut name = format!("livepatch_{clean}");
    name.truncate(55);
    name
}

fn kallsyms_counts(path: &Path) -> Result<HashMap<String, usize>, BuildError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    let mut counts = HashMap::new();
    for line in text.lines() {
        // address type name [module]
        let mut fields = line.split_whitespace();
        let (Some(_), Some(_), Some(name), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        *counts.entry(name.to_string()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Builds a livepatch module from a source patch.
pub fn build(request: &BuildRequest) -> Result<BuildReport, BuildError> {
    let patch = SourcePatch::read(&request.patch)?;
    let name = request
        .name
        .clone()
        .unwrap_or_else(|| module_name(&request.patch));
    let tree = {
        let _span = tracing::info_span!("fetch", release = %request.release).entered();
        KernelTree::fetch(&request.release, &request.cache)?
    };
    let units: Vec<PathBuf> = patch.touched.iter().map(|t| t.path.clone()).collect();
    tree.extract(&units)?;
    let work = request
        .cache
        .join(&request.release)
        .join("work")
        .join(&name);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(io(&work))?;
    let (before_src, after_src) = patch.apply(&tree.source, &request.release, &work)?;

    let symbols = KernelSymbols {
        exported: tree.exported_symbols()?,
        counts: request
            .kallsyms
            .as_deref()
            .map(kallsyms_counts)
            .transpose()?,
    };
    let mut objects = Vec::new();
    let mut functions = Vec::new();
    let mut klp_symbols = Vec::new();
    for (i, unit) in units.iter().enumerate() {
        let _span = tracing::info_span!("unit", unit = %unit.display()).entered();
        // The unit's object, compiled from the source tree of one side of the patch.
        let object_of = |src: &Path, side: &'static str| -> Result<Vec<u8>, BuildError> {
            let out_dir = work.join(format!("{side}{i}"));
            let object = compile::compile_unit(&tree, unit, &src.join(unit), &out_dir, side)?;
            Ok(fs::read(&object).map_err(io(&object))?)
        };
        let before_bytes = object_of(&before_src, "before")?;
        let after_bytes = object_of(&after_src, "after")?;
        let compare_err = |source| BuildError::Compare {
            unit: unit.clone(),
            source,
        };
        let old = Unit::parse(&before_bytes, "before").map_err(compare_err)?;
        let new = Unit::parse(&after_bytes, "after").map_err(compare_err)?;
        let diff = compare::diff(&old, &new).map_err(compare_err)?;
        tracing::info!(patched = ?diff.patched, included = ?diff.included, "changed functions");
        let object =
            emit::emit(&old, &new, &diff, &symbols).map_err(|source| BuildError::Emit {
                unit: unit.clone(),
                source,
            })?;
        for f in &object.funcs {
            if functions
                .iter()
                .any(|g: &KlpFunc| g.new_symbol == f.new_symbol)
            {
                return Err(BuildError::Emit {
                    unit: unit.clone(),
                    source: EmitError::DuplicateFunction(f.old_name.clone()),
                });
            }
        }
        functions.extend(object.funcs);
        klp_symbols.extend(object.klp_symbols);
        objects.push(object.bytes);
    }
    let spec = ModuleSpec {
        name: &name,
        funcs: &functions,
        objects: &objects,
        replace: request.replace,
        origin: &request.patch.display().to_string(),
    };
    let (ko, conversion) = module::build(&tree, &spec, &work.join("module"))?;
    if let Some(dir) = request
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    fs::write(&request.output, ko).map_err(io(&request.output))?;
    klp_symbols.sort();
    klp_symbols.dedup();
    Ok(BuildReport {
        module: request.output.clone(),
        name,
        release: request.release.clone(),
        source_version: tree.version,
        functions,
        klp_symbols,
        klp_sections: conversion.sections,
        replace: request.replace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_kernel_safe() {
        assert_eq!(
            module_name(Path::new("/x/Fix-Proc.Version.patch")),
            "livepatch_fix_proc_version"
        );
        assert!(module_name(Path::new(&"a".repeat(100))).len() <= 55);
    }
}
