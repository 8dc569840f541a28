//! Finding what a patch changed by comparing the unit's object before and after, both compiled
//! with one section per function and per object. A function changed when its code bytes or its
//! relocations differ; relocations are compared by what they point at (a symbol's name, a
//! string's text, a constant's bytes), not by section offsets, so adding a string elsewhere in the
//! file does not make every function look changed.
//!
//! Refused here: changed or new global data, changed `__init`/`__exit` code, changes to functions
//! livepatch cannot redirect (no `__fentry__` call: `notrace`, `noinstr`), and patches whose code
//! changes touch no function at all.

use std::collections::{BTreeMap, BTreeSet};

use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex,
    SymbolKind,
};

/// `SHF_MERGE`.
const SHF_MERGE: u64 = 0x10;
/// `SHF_STRINGS`.
const SHF_STRINGS: u64 = 0x20;
/// x86-64 PC-relative relocation types (`R_X86_64_PC32`, `R_X86_64_PLT32`).
const PC_RELATIVE: [u32; 2] = [2, 4];

/// Errors comparing the objects of a unit, and refusals.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// An object could not be parsed.
    #[error("cannot read the {side} object")]
    Parse {
        side: &'static str,
        #[source]
        source: object::Error,
    },
    /// The patch changes global or static data.
    #[error("refused: the patch changes the data object `{0}`; live patching replaces functions and cannot change data")]
    DataChanged(String),
    /// The patch adds a global data object.
    #[error("refused: the patch adds the data object `{0}`; live patching cannot add global data")]
    NewData(String),
    /// The patch changes `__init` or `__exit` code.
    #[error("refused: the patch changes `{0}`, an __init/__exit function that has already run or never runs in a live kernel")]
    InitFunction(String),
    /// The function cannot be redirected by livepatch.
    #[error(
        "refused: `{0}` has no __fentry__ call (notrace or noinstr); livepatch cannot redirect it"
    )]
    NotTraceable(String),
    /// Nothing to patch.
    #[error("refused: the patch changes no function's code (changes outside function bodies, or none that reach the object)")]
    NothingChanged,
}

/// What a reference points at, independent of section offsets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A named symbol.
    Symbol(String),
    /// A string literal's text.
    Str(Vec<u8>),
    /// A merged constant's bytes.
    Const(Vec<u8>),
    /// An anonymous section, by name.
    Section(String),
}

/// One relocation, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RelocKey {
    offset: u64,
    r_type: u32,
    target: Target,
    addend: i64,
}

/// A function's or object's identity for comparison: bytes and normalised relocations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    size: u64,
    bytes: Vec<u8>,
    relocs: Vec<RelocKey>,
}

/// A unit's object, parsed.
#[derive(Debug)]
pub struct Unit<'d> {
    /// The parsed ELF.
    pub file: object::File<'d>,
}

/// A defined symbol of interest (function or data object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defined {
    /// Its section.
    pub section: SectionIndex,
    /// Offset in the section.
    pub offset: u64,
    /// Size.
    pub size: u64,
    /// Global binding.
    pub global: bool,
}

impl<'d> Unit<'d> {
    /// Parses an object.
    pub fn parse(data: &'d [u8], side: &'static str) -> Result<Unit<'d>, CompareError> {
        let file =
            object::File::parse(data).map_err(|source| CompareError::Parse { side, source })?;
        Ok(Unit { file })
    }

    /// The name of a section.
    pub fn section_name(&self, index: SectionIndex) -> String {
        self.file
            .section_by_index(index)
            .ok()
            .and_then(|s| s.name().ok().map(str::to_string))
            .unwrap_or_default()
    }

    /// `sh_flags` of a section.
    pub fn section_flags(&self, index: SectionIndex) -> u64 {
        match self.file.section_by_index(index).map(|s| s.flags()) {
            Ok(object::SectionFlags::Elf { sh_flags }) => sh_flags,
            _ => 0,
        }
    }

    /// Whether the section holds merged strings or constants (`.rodata.str*`, `.rodata.cst*`).
    pub fn is_merged(&self, index: SectionIndex) -> bool {
        self.section_flags(index) & SHF_MERGE != 0
    }

    /// Defined functions (`STT_FUNC`) by name.
    pub fn functions(&self) -> BTreeMap<String, Defined> {
        self.defined(|k| k == SymbolKind::Text)
    }

    /// Defined data objects (`STT_OBJECT`) by name.
    pub fn objects(&self) -> BTreeMap<String, Defined> {
        self.defined(|k| k == SymbolKind::Data)
    }

    fn defined(&self, want: impl Fn(SymbolKind) -> bool) -> BTreeMap<String, Defined> {
        let mut out = BTreeMap::new();
        for sym in self.file.symbols() {
            let (Some(section), Ok(name)) = (sym.section_index(), sym.name()) else {
                continue;
            };
            if !want(sym.kind()) || name.is_empty() {
                continue;
            }
            out.entry(name.to_string()).or_insert(Defined {
                section,
                offset: sym.address(),
                size: sym.size(),
                global: sym.is_global(),
            });
        }
        out
    }

    /// The named symbol a reference into `section` at `addend` (as written in the relocation)
    /// lands in, with the addend made relative to that symbol.
    pub fn symbol_in_section(
        &self,
        section: SectionIndex,
        addend: i64,
        r_type: u32,
    ) -> Option<(String, i64)> {
        let bias = if PC_RELATIVE.contains(&r_type) { 4 } else { 0 };
        let at = u64::try_from(addend + bias).ok()?;
        let candidates: Vec<_> = self
            .file
            .symbols()
            .filter(|s| {
                s.section_index() == Some(section)
                    && matches!(s.kind(), SymbolKind::Text | SymbolKind::Data)
            })
            .collect();
        let hit = if candidates.len() == 1 {
            candidates.first()
        } else {
            candidates
                .iter()
                .find(|s| s.address() <= at && at < s.address() + s.size().max(1))
        }?;
        let offset = i64::try_from(hit.address()).ok()?;
        Some((hit.name().ok()?.to_string(), addend - offset))
    }

    /// What relocation `target`+`addend` of type `r_type` refers to.
    pub fn target(&self, target: RelocationTarget, addend: i64, r_type: u32) -> (Target, i64) {
        let RelocationTarget::Symbol(index) = target else {
            return (Target::Section(String::new()), addend);
        };
        let Ok(sym) = self.file.symbol_by_index(index) else {
            return (Target::Section(String::new()), addend);
        };
        if sym.kind() != SymbolKind::Section {
            return (Target::Symbol(sym.name().unwrap_or("").to_string()), addend);
        }
        let Some(section) = sym.section_index() else {
            return (Target::Section(String::new()), addend);
        };
        if self.is_merged(section) {
            let bias = if PC_RELATIVE.contains(&r_type) { 4 } else { 0 };
            let data = self
                .file
                .section_by_index(section)
                .ok()
                .and_then(|s| s.data().ok())
                .unwrap_or(&[]);
            let at = usize::try_from(addend + bias).unwrap_or(0).min(data.len());
            let rest = &data[at..];
            return if self.section_flags(section) & SHF_STRINGS != 0 {
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                (Target::Str(rest[..end].to_vec()), -bias)
            } else {
                (Target::Const(rest[..rest.len().min(16)].to_vec()), -bias)
            };
        }
        match self.symbol_in_section(section, addend, r_type) {
            Some((name, rel)) => (Target::Symbol(name), rel),
            None => (Target::Section(self.section_name(section)), addend),
        }
    }

    fn fingerprint(&self, def: &Defined) -> Fingerprint {
        let Ok(section) = self.file.section_by_index(def.section) else {
            return Fingerprint {
                size: 0,
                bytes: Vec::new(),
                relocs: Vec::new(),
            };
        };
        let data = section.data().unwrap_or(&[]);
        let start = usize::try_from(def.offset).unwrap_or(0).min(data.len());
        let end = usize::try_from(def.offset + def.size)
            .unwrap_or(0)
            .clamp(start, data.len());
        let mut relocs = Vec::new();
        for (offset, rel) in section.relocations() {
            if offset < def.offset || offset >= def.offset + def.size.max(1) {
                continue;
            }
            let RelocationFlags::Elf { r_type } = rel.flags() else {
                continue;
            };
            let (target, addend) = self.target(rel.target(), rel.addend(), r_type);
            relocs.push(RelocKey {
                offset: offset - def.offset,
                r_type,
                target,
                addend,
            });
        }
        Fingerprint {
            size: def.size,
            bytes: data[start..end].to_vec(),
            relocs,
        }
    }

    /// Whether the function calls `__fentry__` in its first bytes (ftrace can redirect it).
    fn is_traceable(&self, def: &Defined) -> bool {
        let Ok(section) = self.file.section_by_index(def.section) else {
            return false;
        };
        section.relocations().any(|(offset, rel)| {
            offset >= def.offset
                && offset < def.offset + 16
                && matches!(self.target(rel.target(), rel.addend(), 0).0,
                    Target::Symbol(ref n) if n == "__fentry__")
        })
    }
}

/// The result of comparing one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitDiff {
    /// Functions to redirect with a `klp_func` (they exist in the running kernel).
    pub patched: BTreeSet<String>,
    /// Functions whose new code goes into the patch: `patched`, their `.cold` parts, and new
    /// functions the new code calls.
    pub included: BTreeSet<String>,
}

fn is_init_section(name: &str) -> bool {
    name.starts_with(".init.") || name.starts_with(".exit.")
}

fn is_uninstrumented_section(name: &str) -> bool {
    name.starts_with(".noinstr.text") || name.starts_with(".entry.text")
}

/// Compares the objects of a unit before and after the patch.
pub fn diff(before: &Unit<'_>, after: &Unit<'_>) -> Result<UnitDiff, CompareError> {
    let old_fns = before.functions();
    let new_fns = after.functions();
    let mut changed = BTreeSet::new();
    for (name, new) in &new_fns {
        let Some(old) = old_fns.get(name) else {
            continue;
        };
        if before.fingerprint(old) != after.fingerprint(new) {
            changed.insert(name.clone());
        }
    }
    // A changed cold part means its parent changed.
    let parents: Vec<String> = changed
        .iter()
        .filter_map(|n| n.strip_suffix(".cold").map(str::to_string))
        .collect();
    changed.extend(parents);
    changed.retain(|n| !n.ends_with(".cold"));
    for name in &changed {
        let section = after.section_name(new_fns[name].section);
        if is_init_section(&section) {
            return Err(CompareError::InitFunction(name.clone()));
        }
        if is_uninstrumented_section(&section) || !before.is_traceable(&old_fns[name]) {
            return Err(CompareError::NotTraceable(name.clone()));
        }
    }
    check_data(before, after)?;
    if changed.is_empty() {
        return Err(CompareError::NothingChanged);
    }
    // Close over cold parts and new functions the new code reaches.
    let mut included: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = changed.iter().cloned().collect();
    while let Some(name) = queue.pop() {
        if !included.insert(name.clone()) {
            continue;
        }
        let cold = format!("{name}.cold");
        if new_fns.contains_key(&cold) {
            queue.push(cold);
        }
        let def = &new_fns[&name];
        for reloc in after.fingerprint(def).relocs {
            if let Target::Symbol(callee) = reloc.target {
                if new_fns.contains_key(&callee) && !old_fns.contains_key(&callee) {
                    if is_init_section(&after.section_name(new_fns[&callee].section)) {
                        return Err(CompareError::InitFunction(callee));
                    }
                    queue.push(callee);
                }
            }
        }
    }
    Ok(UnitDiff {
        patched: changed,
        included,
    })
}

/// Refuses changed data objects and new named ones. Compiler-numbered statics (`x.3`) may be
/// renumbered between builds, so only plainly named objects are compared.
fn check_data(before: &Unit<'_>, after: &Unit<'_>) -> Result<(), CompareError> {
    let old = before.objects();
    for (name, new) in after.objects() {
        if name.contains('.') || name.starts_with("__UNIQUE_ID") {
            continue;
        }
        let section = after.section_name(new.section);
        if is_init_section(&section) || section.starts_with(".discard") {
            continue;
        }
        match old.get(&name) {
            None => return Err(CompareError::NewData(name)),
            Some(o) if before.fingerprint(o) != after.fingerprint(&new) => {
                return Err(CompareError::DataChanged(name))
            }
            Some(_) => {}
        }
    }
    Ok(())
}
