//! Writing the patch object: the new code of the changed functions, taken from the "after"
//! object, with every reference re-targeted for life inside a module (`object` crate writer).
//!
//! A reference from new code goes to:
//! - new code of the patch (another changed function, a `.cold` part, a new helper);
//! - a copy of read-only data that carries no identity: string literals, merged constants,
//!   compiler-numbered read-only statics (`__func__.3`), alternative replacement code;
//! - an exported kernel symbol: a plain undefined symbol, resolved by the module loader;
//! - anything else in the running kernel (static functions and data of the unit, unexported
//!   globals): an undefined symbol named `.klp.sym.vmlinux.<name>,<sympos>`. These become
//!   livepatch relocations when the module is converted ([`crate::klp_elf`]).
//!
//! Entries of `__bug_table`, `__ex_table`, `__jump_table` and `.altinstructions` that belong to
//! the new code are carried; the kernel applies them when the module loads, before livepatch
//! relocations exist, so such an entry may not need one (refused). ORC unwind data and
//! `__mcount_loc` are not carried: the new functions are not themselves traceable, and a task
//! sleeping inside new code makes its stack unreliable for a later transition.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use object::write::{self, Mangling, SectionId, SymbolId, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, Object, ObjectSection, ObjectSymbol, RelocationFlags,
    RelocationTarget, SectionIndex, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};

use crate::compare::{Unit, UnitDiff};

/// Special sections carried for new code, with their entry sizes on x86-64 6.1.
const SPECIAL_SECTIONS: [(&str, usize); 4] = [
    ("__bug_table", 12),
    ("__ex_table", 12),
    ("__jump_table", 16),
    (".altinstructions", 12),
];

/// Code sections of alternatives, copied whole: replacement instructions and the slow paths of
/// `static_cpu_has()`.
const ALTERNATIVE_CODE: [&str; 2] = [".altinstr_replacement", ".altinstr_aux"];

/// `SHF_ALLOC`, `SHF_WRITE`, `SHF_EXECINSTR`.
const SHF_WRITE: u64 = 0x1;
const SHF_ALLOC: u64 = 0x2;
const SHF_EXECINSTR: u64 = 0x4;

/// Errors writing the patch object.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// A reference into a section we cannot map to a symbol.
    #[error("refused: new code refers into {section} at {addend}, which names no symbol")]
    Unresolvable { section: String, addend: i64 },
    /// The symbol exists more than once in the running kernel and we cannot tell which.
    #[error("refused: `{0}` exists more than once in the running kernel; the patch cannot say which one it means")]
    Ambiguous(String),
    /// A load-time table entry would need a livepatch relocation.
    #[error("refused: {section} of the new code refers to `{symbol}`, which the module loader cannot resolve (not exported)")]
    LoadTimeReference { section: String, symbol: String },
    /// A table's size is not a multiple of its entry size (another kernel layout).
    #[error("{section} has {size} bytes, not a multiple of {entry}-byte entries")]
    TableLayout {
        section: String,
        size: u64,
        entry: usize,
    },
    /// The patch adds data the running kernel does not have.
    #[error("refused: new code refers to `{0}`, data the running kernel does not have")]
    NewData(String),
    /// The patched function name is used twice across units.
    #[error("refused: two patched functions are both named `{0}`")]
    DuplicateFunction(String),
    /// The object writer failed.
    #[error("writing the patch object")]
    Write(#[source] object::write::Error),
    /// The after object is malformed.
    #[error("reading the after object")]
    Read(#[source] object::Error),
}

/// One function livepatch redirects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KlpFunc {
    /// The function in the running kernel.
    pub old_name: String,
    /// Its replacement, a global symbol of the patch object.
    pub new_symbol: String,
    /// Position among same-named symbols (0: unique).
    pub sympos: u64,
}

/// How names in the running kernel resolve: exported symbols and, if known, symbol counts.
#[derive(Debug, Clone, Default)]
pub struct KernelSymbols {
    /// Symbols exported to modules (`Module.symvers`).
    pub exported: HashSet<String>,
    /// How often each name appears in `/proc/kallsyms`, when the running kernel's table is known.
    pub counts: Option<HashMap<String, usize>>,
}

/// The written patch object.
#[derive(Debug, Clone)]
pub struct PatchObject {
    /// ELF relocatable bytes.
    pub bytes: Vec<u8>,
    /// Functions to redirect.
    pub funcs: Vec<KlpFunc>,
    /// Names reached through livepatch relocations.
    pub klp_symbols: BTreeSet<String>,
}

/// The name of a replacement function's symbol.
pub fn new_symbol_name(old: &str) -> String {
    format!("livepatch_{}", old.replace(['.', '-'], "_"))
}

struct Emitter<'a, 'd> {
    after: &'a Unit<'d>,
    before_objects: BTreeSet<String>,
    symbols: &'a KernelSymbols,
    diff: &'a UnitDiff,
    out: write::Object<'static>,
    copied: HashMap<SectionIndex, SectionId>,
    functions: BTreeMap<String, SymbolId>,
    klp_symbols: BTreeSet<String>,
    /// Offsets of livepatch relocations, per output section.
    klp_sites: HashMap<SectionId, Vec<u64>>,
}

/// Writes the patch object of one unit.
pub fn emit(
    before: &Unit<'_>,
    after: &Unit<'_>,
    diff: &UnitDiff,
    symbols: &KernelSymbols,
) -> Result<PatchObject, EmitError> {
    let mut out = write::Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    out.set_mangling(Mangling::None);
    let mut e = Emitter {
        after,
        before_objects: before.objects().into_keys().collect(),
        symbols,
        diff,
        out,
        copied: HashMap::new(),
        functions: BTreeMap::new(),
        klp_symbols: BTreeSet::new(),
        klp_sites: HashMap::new(),
    };
    let fns = after.functions();
    // First the code sections and their symbols, so references between them resolve.
    let mut code = Vec::new();
    for name in &diff.included {
        let def = &fns[name];
        let patched = diff.patched.contains(name);
        let sym_name = if patched {
            new_symbol_name(name)
        } else {
            name.clone()
        };
        let section = after
            .file
            .section_by_index(def.section)
            .map_err(EmitError::Read)?;
        let data = section.data().map_err(EmitError::Read)?;
        let id = e.out.add_section(
            Vec::new(),
            format!(".text.{sym_name}").into_bytes(),
            SectionKind::Text,
        );
        e.out
            .section_mut(id)
            .set_data(data.to_vec(), section.align());
        e.copied.insert(def.section, id);
        let sym = e.out.add_symbol(write::Symbol {
            name: sym_name.into_bytes(),
            value: def.offset,
            size: def.size,
            kind: SymbolKind::Text,
            scope: if patched {
                SymbolScope::Dynamic
            } else {
                SymbolScope::Compilation
            },
            weak: false,
            section: SymbolSection::Section(id),
            flags: SymbolFlags::None,
        });
        e.functions.insert(name.clone(), sym);
        code.push((def.section, id));
    }
    for (from, to) in code {
        e.copy_relocations(from, to, 0, u64::MAX, 0, None)?;
    }
    for (name, entry) in SPECIAL_SECTIONS {
        e.carry_table(name, entry)?;
    }
    let mut funcs = Vec::new();
    for name in &diff.patched {
        funcs.push(KlpFunc {
            old_name: name.clone(),
            new_symbol: new_symbol_name(name),
            sympos: e.sympos(name)?,
        });
    }
    let klp_symbols = e.klp_symbols.clone();
    let bytes = e.out.write().map_err(EmitError::Write)?;
    Ok(PatchObject {
        bytes,
        funcs,
        klp_symbols,
    })
}

impl Emitter<'_, '_> {
    fn klp_symbols_contains(&self, symbol: SymbolId) -> bool {
        self.out.symbol(symbol).name.starts_with(b".klp.sym.")
    }

    /// Refuses carried `.altinstructions` entries whose replacement needs a livepatch
    /// relocation: the loader patches them in before livepatch resolves anything.
    fn check_replacements(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), EmitError> {
        let Some(section) = self.after.file.section_by_name(".altinstr_replacement") else {
            return Ok(());
        };
        let Some(copy) = self.copied.get(&section.index()) else {
            return Ok(());
        };
        let Some(sites) = self.klp_sites.get(copy) else {
            return Ok(());
        };
        let alt =
            self.after
                .file
                .section_by_name(".altinstructions")
                .ok_or(EmitError::Unresolvable {
                    section: ".altinstructions".into(),
                    addend: 0,
                })?;
        for (start, entry) in entries {
            let len = u64::from(entry.get(11).copied().unwrap_or(0));
            // repl_offset is the second field: a PC-relative reference into the replacements.
            let Some((_, rel)) = alt.relocations().find(|(o, _)| *o == start + 4) else {
                continue;
            };
            let Ok(from) = u64::try_from(rel.addend()) else {
                continue;
            };
            if sites.iter().any(|s| (from..from + len).contains(s)) {
                return Err(EmitError::LoadTimeReference {
                    section: ".altinstr_replacement".into(),
                    symbol: "an unexported kernel symbol".into(),
                });
            }
        }
        Ok(())
    }

    fn sympos(&self, name: &str) -> Result<u64, EmitError> {
        match self.symbols.counts.as_ref().and_then(|c| c.get(name)) {
            Some(n) if *n > 1 => Err(EmitError::Ambiguous(name.into())),
            _ => Ok(0),
        }
    }

    fn undefined(&mut self, name: &str) -> SymbolId {
        if let Some(id) = self.out.symbol_id(name.as_bytes()) {
            return id;
        }
        self.out.add_symbol(write::Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Unknown,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        })
    }

    /// A reference to the running kernel's `name`: plain when exported, else livepatch.
    fn kernel_symbol(
        &mut self,
        name: &str,
        load_time: Option<&str>,
    ) -> Result<SymbolId, EmitError> {
        if self.symbols.exported.contains(name) {
            return Ok(self.undefined(name));
        }
        if let Some(section) = load_time {
            return Err(EmitError::LoadTimeReference {
                section: section.into(),
                symbol: name.into(),
            });
        }
        let pos = self.sympos(name)?;
        self.klp_symbols.insert(name.to_string());
        Ok(self.undefined(&format!(".klp.sym.vmlinux.{name},{pos}")))
    }

    /// Copies relocations of `from` in `[start, end)` onto `to`, shifted by `shift`.
    fn copy_relocations(
        &mut self,
        from: SectionIndex,
        to: SectionId,
        start: u64,
        end: u64,
        shift: i64,
        load_time: Option<&str>,
    ) -> Result<(), EmitError> {
        let section = self
            .after
            .file
            .section_by_index(from)
            .map_err(EmitError::Read)?;
        let relocs: Vec<_> = section
            .relocations()
            .filter(|(o, _)| *o >= start && *o < end)
            .collect();
        for (offset, rel) in relocs {
            let RelocationFlags::Elf { r_type } = rel.flags() else {
                continue;
            };
            let (symbol, addend) = self.resolve(rel.target(), rel.addend(), r_type, load_time)?;
            let offset = offset.wrapping_add_signed(shift);
            if self.klp_symbols_contains(symbol) {
                self.klp_sites.entry(to).or_default().push(offset);
            }
            self.out
                .add_relocation(
                    to,
                    write::Relocation {
                        offset,
                        symbol,
                        addend,
                        flags: RelocationFlags::Elf { r_type },
                    },
                )
                .map_err(EmitError::Write)?;
        }
        Ok(())
    }

    fn resolve(
        &mut self,
        target: RelocationTarget,
        addend: i64,
        r_type: u32,
        load_time: Option<&str>,
    ) -> Result<(SymbolId, i64), EmitError> {
        let RelocationTarget::Symbol(index) = target else {
            return Err(EmitError::Unresolvable {
                section: "an absolute target".into(),
                addend,
            });
        };
        let sym = self
            .after
            .file
            .symbol_by_index(index)
            .map_err(EmitError::Read)?;
        let name = sym.name().map_err(EmitError::Read)?.to_string();
        let Some(section) = sym.section_index() else {
            return Ok((self.kernel_symbol(&name, load_time)?, addend));
        };
        if let Some(&copy) = self.copied.get(&section) {
            return Ok((self.out.section_symbol(copy), addend));
        }
        let section_name = self.after.section_name(section);
        if self.after.is_merged(section) || ALTERNATIVE_CODE.contains(&section_name.as_str()) {
            let copy = self.copy_section(section, load_time)?;
            let value = if sym.kind() == SymbolKind::Section {
                0
            } else {
                i64::try_from(sym.address()).unwrap_or(0)
            };
            return Ok((self.out.section_symbol(copy), addend + value));
        }
        let (name, addend) = if sym.kind() == SymbolKind::Section {
            self.after
                .symbol_in_section(section, addend, r_type)
                .ok_or(EmitError::Unresolvable {
                    section: section_name.clone(),
                    addend,
                })?
        } else {
            (name, addend)
        };
        self.resolve_defined(&name, section, &section_name, addend, load_time)
    }

    fn resolve_defined(
        &mut self,
        name: &str,
        section: SectionIndex,
        section_name: &str,
        addend: i64,
        load_time: Option<&str>,
    ) -> Result<(SymbolId, i64), EmitError> {
        if let Some(&id) = self.functions.get(name) {
            return Ok((id, addend));
        }
        let flags = self.after.section_flags(section);
        if flags & SHF_EXECINSTR != 0 {
            // Unchanged code of the running kernel.
            return Ok((self.kernel_symbol(name, load_time)?, addend));
        }
        let read_only = flags & SHF_WRITE == 0;
        let has_relocs = self
            .after
            .file
            .section_by_index(section)
            .map(|s| s.relocations().next().is_some())
            .unwrap_or(true);
        let numbered = name.contains('.') && flags & SHF_ALLOC != 0;
        if numbered && read_only && !has_relocs {
            // A compiler-numbered constant (`zeros.0`, `__func__.3`): its name may be ambiguous
            // or differ in the running kernel, and a copy means the same.
            let copy = self.copy_section(section, load_time)?;
            return Ok((self.out.section_symbol(copy), addend));
        }
        if self.before_objects.contains(name) {
            // Unchanged data of the running kernel.
            return Ok((self.kernel_symbol(name, load_time)?, addend));
        }
        if numbered && !read_only {
            // A static the patch adds: the new code gets its own.
            let copy = self.copy_section(section, load_time)?;
            return Ok((self.out.section_symbol(copy), addend));
        }
        let _ = section_name;
        Err(EmitError::NewData(name.into()))
    }

    fn copy_section(
        &mut self,
        index: SectionIndex,
        load_time: Option<&str>,
    ) -> Result<SectionId, EmitError> {
        if let Some(&id) = self.copied.get(&index) {
            return Ok(id);
        }
        let section = self
            .after
            .file
            .section_by_index(index)
            .map_err(EmitError::Read)?;
        let name = section.name().map_err(EmitError::Read)?.to_string();
        let flags = self.after.section_flags(index);
        let kind = if flags & SHF_EXECINSTR != 0 {
            SectionKind::Text
        } else if flags & SHF_WRITE != 0 {
            if section.kind() == SectionKind::UninitializedData {
                SectionKind::UninitializedData
            } else {
                SectionKind::Data
            }
        } else {
            SectionKind::ReadOnlyData
        };
        let id = self
            .out
            .add_section(Vec::new(), format!("{name}.livepatch").into_bytes(), kind);
        if kind == SectionKind::UninitializedData {
            self.out
                .section_mut(id)
                .append_bss(section.size(), section.align());
        } else {
            let data = section.data().map_err(EmitError::Read)?;
            self.out
                .section_mut(id)
                .set_data(data.to_vec(), section.align());
        }
        self.copied.insert(index, id);
        // Replacement code of other functions may refer anywhere; what the carried
        // `.altinstructions` entries use is checked in `carry_table`.
        let context = if ALTERNATIVE_CODE.contains(&name.as_str()) {
            None
        } else {
            load_time
        };
        self.copy_relocations(index, id, 0, u64::MAX, 0, context)?;
        Ok(id)
    }

    /// Carries the entries of a load-time table whose first field points into new code.
    fn carry_table(&mut self, name: &str, entry: usize) -> Result<(), EmitError> {
        let Some(section) = self.after.file.section_by_name(name) else {
            return Ok(());
        };
        let index = section.index();
        let data = section.data().map_err(EmitError::Read)?.to_vec();
        if data.len().next_multiple_of(entry) != data.len() {
            return Err(EmitError::TableLayout {
                section: name.into(),
                size: data.len() as u64,
                entry,
            });
        }
        let owners: HashMap<u64, SectionIndex> = section
            .relocations()
            .filter_map(|(offset, rel)| {
                let RelocationTarget::Symbol(s) = rel.target() else {
                    return None;
                };
                let sym = self.after.file.symbol_by_index(s).ok()?;
                Some((offset, sym.section_index()?))
            })
            .collect();
        let included: HashSet<SectionIndex> = self
            .diff
            .included
            .iter()
            .filter_map(|n| self.after.functions().get(n).map(|d| d.section))
            .collect();
        let mut kept = Vec::new();
        for (i, chunk) in data.chunks(entry).enumerate() {
            let start = (i * entry) as u64;
            if owners.get(&start).is_some_and(|s| included.contains(s)) {
                kept.push((start, chunk.to_vec()));
            }
        }
        if kept.is_empty() {
            return Ok(());
        }
        let kept_copy = kept.clone();
        let flags = self.after.section_flags(index);
        let kind = if flags & SHF_WRITE != 0 {
            SectionKind::Data
        } else {
            SectionKind::ReadOnlyData
        };
        let id = self
            .out
            .add_section(Vec::new(), name.as_bytes().to_vec(), kind);
        let mut bytes = Vec::new();
        let mut moves = Vec::new();
        for (start, chunk) in kept {
            moves.push((start, bytes.len() as u64));
            bytes.extend_from_slice(&chunk);
        }
        self.out.section_mut(id).set_data(bytes, section.align());
        self.out.section_mut(id).flags = object::SectionFlags::Elf { sh_flags: flags };
        for (from, to) in moves {
            let shift = i64::try_from(to).unwrap_or(0) - i64::try_from(from).unwrap_or(0);
            self.copy_relocations(index, id, from, from + entry as u64, shift, Some(name))?;
        }
        if name == ".altinstructions" {
            self.check_replacements(&kept_copy)?;
        }
        Ok(())
    }
}
