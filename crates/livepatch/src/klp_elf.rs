//! Converting a linked patch module to livepatch's own relocation format
//! (Documentation/livepatch/module-elf-format.rst). kbuild links the module with references to
//! the running kernel's unexported symbols left undefined under names of the form
//! `.klp.sym.<object>.<name>,<sympos>`; this pass, run on the final `.ko`:
//!
//! ```text
//! symbol  .klp.sym.vmlinux.show_val_kb,0   st_shndx UNDEF  ─►  SHN_LIVEPATCH (0xff20)
//! .rela.text.livepatch_f   [normal | klp]               ─►  .rela.text.livepatch_f [normal]
//!                                                           .klp.rela.vmlinux..text.livepatch_f
//!                                                             SHT_RELA, SHF_ALLOC|SHF_RELA_LIVEPATCH
//!                                                             sh_link symtab, sh_info .text.livepatch_f
//! ```
//!
//! The module loader skips `SHF_RELA_LIVEPATCH` sections and `SHN_LIVEPATCH` symbols; livepatch
//! resolves them through kallsyms when the patch is enabled. The file is edited in place: entries
//! move inside their section, and the new sections, a new section-name table and a new section
//! header table are appended. Written with `object`'s ELF types; `object`'s writer cannot
//! reproduce an existing module section for section.

use object::elf::{FileHeader64, Rela64, SectionHeader64, Sym64, SHT_RELA, SHT_SYMTAB};
use object::endian::{LittleEndian as LE, U16, U32, U64};
use object::pod;

/// Livepatch relocation section flag.
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
/// Section index of livepatch symbols.
pub const SHN_LIVEPATCH: u16 = 0xff20;
/// Prefix of livepatch symbol names.
pub const KLP_SYM_PREFIX: &str = ".klp.sym.";
const SHF_ALLOC: u64 = 0x2;
const SHF_INFO_LINK: u64 = 0x40;

/// Errors converting a module.
#[derive(Debug, thiserror::Error)]
pub enum KlpElfError {
    /// The file is not a 64-bit little-endian ELF relocatable we understand.
    #[error("not an x86-64 ELF module: {0}")]
    Malformed(&'static str),
}

/// What the conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversion {
    /// Livepatch symbols marked.
    pub symbols: Vec<String>,
    /// Livepatch relocation sections created.
    pub sections: Vec<String>,
}

fn read<T: pod::Pod>(data: &[u8], offset: usize) -> Result<T, KlpElfError> {
    data.get(offset..)
        .and_then(|d| pod::from_bytes::<T>(d).ok())
        .map(|(v, _)| *v)
        .ok_or(KlpElfError::Malformed("truncated"))
}

fn usize_of(v: u64) -> Result<usize, KlpElfError> {
    usize::try_from(v).map_err(|_| KlpElfError::Malformed("offset out of range"))
}

fn c_str(data: &[u8], offset: usize) -> String {
    let rest = data.get(offset..).unwrap_or(&[]);
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

fn pad_to(data: &mut Vec<u8>, align: usize) {
    data.resize(data.len().next_multiple_of(align), 0);
}

/// Converts `ko` in place; returns what changed (nothing when the module needs no livepatch
/// relocation).
pub fn convert(ko: &mut Vec<u8>) -> Result<Conversion, KlpElfError> {
    let mut table = read_sections(ko)?;
    let symtab = SymbolTable::find(&table.sections)?;
    let mut conversion = Conversion::default();
    let klp = mark_livepatch_symbols(ko, &symtab, &mut conversion.symbols)?;
    if conversion.symbols.is_empty() {
        return Ok(conversion);
    }
    let appended = split_relocations(ko, &mut table, &klp, symtab.index, &mut conversion)?;
    append_tables(ko, table, appended)?;
    Ok(conversion)
}

/// The module's ELF header and section header table, as read, and a working copy of its
/// section names (the new sections' names are appended to it).
struct SectionTable {
    header: FileHeader64<LE>,
    /// Where the section header table is in the file.
    shoff: usize,
    /// Index of the section-name table.
    shstrndx: usize,
    sections: Vec<SectionHeader64<LE>>,
    names: Vec<u8>,
}

/// Reads the ELF header (refusing anything but a 64-bit little-endian ELF), the section header
/// table and the section names.
fn read_sections(ko: &[u8]) -> Result<SectionTable, KlpElfError> {
    let header: FileHeader64<LE> = read(ko, 0)?;
    if ko.get(..4) != Some(b"\x7fELF") || ko.get(4) != Some(&2) || ko.get(5) != Some(&1) {
        return Err(KlpElfError::Malformed("not ELF64 little-endian"));
    }
    let shoff = usize_of(header.e_shoff.get(LE))?;
    let shnum = usize::from(header.e_shnum.get(LE));
    let shstrndx = usize::from(header.e_shstrndx.get(LE));
    let sections: Vec<SectionHeader64<LE>> = (0..shnum)
        .map(|i| read(ko, shoff + i * 64))
        .collect::<Result<_, _>>()?;
    let shstr = sections
        .get(shstrndx)
        .ok_or(KlpElfError::Malformed("no section names"))?;
    let names_at = usize_of(shstr.sh_offset.get(LE))?;
    let names_len = usize_of(shstr.sh_size.get(LE))?;
    let names = ko
        .get(names_at..names_at + names_len)
        .ok_or(KlpElfError::Malformed("section names out of file"))?
        .to_vec();
    Ok(SectionTable {
        header,
        shoff,
        shstrndx,
        sections,
        names,
    })
}

/// The name of section `s` in the section-name table `names`.
fn section_name(s: &SectionHeader64<LE>, names: &[u8]) -> String {
    c_str(
        names,
        usize::try_from(s.sh_name.get(LE)).unwrap_or(usize::MAX),
    )
}

/// Where the symbol table and its names are.
struct SymbolTable {
    /// Its section index.
    index: usize,
    /// Offset of its string table in the file.
    str_at: usize,
    /// Offset of its first entry in the file.
    sym_at: usize,
    /// Its number of entries.
    count: usize,
}

impl SymbolTable {
    /// The module's symbol table (its first `SHT_SYMTAB` section).
    fn find(sections: &[SectionHeader64<LE>]) -> Result<Self, KlpElfError> {
        let index = sections
            .iter()
            .position(|s| s.sh_type.get(LE) == SHT_SYMTAB)
            .ok_or(KlpElfError::Malformed("no symbol table"))?;
        let symtab = sections[index];
        let strtab = sections
            .get(usize_of(u64::from(symtab.sh_link.get(LE)))?)
            .ok_or(KlpElfError::Malformed("no string table"))?;
        let str_at = usize_of(strtab.sh_offset.get(LE))?;
        let sym_at = usize_of(symtab.sh_offset.get(LE))?;
        let count = usize_of(symtab.sh_size.get(LE))? / 24;
        Ok(Self {
            index,
            str_at,
            sym_at,
            count,
        })
    }
}

/// Marks every symbol named `.klp.sym.*` as a livepatch symbol (`SHN_LIVEPATCH`) in place and
/// pushes its name to `marked`; returns, by symbol index, whether it is one.
fn mark_livepatch_symbols(
    ko: &mut [u8],
    symtab: &SymbolTable,
    marked: &mut Vec<String>,
) -> Result<Vec<bool>, KlpElfError> {
    let mut klp = vec![false; symtab.count];
    for (i, is_klp) in klp.iter_mut().enumerate() {
        let at = symtab.sym_at + i * 24;
        let mut sym: Sym64<LE> = read(ko, at)?;
        let name = c_str(
            ko,
            symtab.str_at + usize_of(u64::from(sym.st_name.get(LE)))?,
        );
        if name.starts_with(KLP_SYM_PREFIX) {
            *is_klp = true;
            sym.st_shndx = U16::new(LE, SHN_LIVEPATCH);
            ko[at..at + 24].copy_from_slice(pod::bytes_of(&sym));
            marked.push(name);
        }
    }
    Ok(klp)
}

/// A new section: its header (offset not yet set) and its data.
type NewSection = (SectionHeader64<LE>, Vec<u8>);

/// Moves the relocations against livepatch symbols out of each relocation section into a new
/// `.klp.rela.vmlinux.<target>` section, whose name is appended to the section names; returns
/// the new sections, not yet placed in the file.
fn split_relocations(
    ko: &mut [u8],
    table: &mut SectionTable,
    klp: &[bool],
    symtab_index: usize,
    conversion: &mut Conversion,
) -> Result<Vec<NewSection>, KlpElfError> {
    let mut appended: Vec<NewSection> = Vec::new();
    for section in table.sections.iter_mut() {
        if section.sh_type.get(LE) != SHT_RELA {
            continue;
        }
        let moved = take_livepatch_relas(ko, section, klp)?;
        if moved.is_empty() {
            continue;
        }
        let target = usize_of(u64::from(section.sh_info.get(LE)))?;
        let target_name = section_name(
            sections_target_copy(&table.header, ko, table.shoff, target)?.as_ref(),
            &table.names,
        );
        let name = format!(".klp.rela.vmlinux.{target_name}");
        let name_offset = table.names.len();
        table.names.extend_from_slice(name.as_bytes());
        table.names.push(0);
        let header = SectionHeader64::<LE> {
            sh_name: U32::new(LE, u32::try_from(name_offset).unwrap_or(0)),
            sh_type: U32::new(LE, SHT_RELA),
            sh_flags: U64::new(LE, SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH),
            sh_addr: U64::new(LE, 0),
            sh_offset: U64::new(LE, 0),
            sh_size: U64::new(LE, (moved.len() * 24) as u64),
            sh_link: U32::new(LE, u32::try_from(symtab_index).unwrap_or(0)),
            sh_info: section.sh_info,
            sh_addralign: U64::new(LE, 8),
            sh_entsize: U64::new(LE, 24),
        };
        appended.push((
            header,
            moved
                .iter()
                .flat_map(|r| pod::bytes_of(r).to_vec())
                .collect(),
        ));
        conversion.sections.push(name);
    }
    Ok(appended)
}

/// Takes the entries against livepatch symbols out of relocation section `section`: the others
/// move to its front and it shrinks to them. Returns the entries taken; a section with none
/// is left as it was.
fn take_livepatch_relas(
    ko: &mut [u8],
    section: &mut SectionHeader64<LE>,
    klp: &[bool],
) -> Result<Vec<Rela64<LE>>, KlpElfError> {
    let at = usize_of(section.sh_offset.get(LE))?;
    let count = usize_of(section.sh_size.get(LE))? / 24;
    let relas: Vec<Rela64<LE>> = (0..count)
        .map(|i| read(ko, at + i * 24))
        .collect::<Result<_, _>>()?;
    let (moved, kept): (Vec<_>, Vec<_>) = relas.into_iter().partition(|r| {
        let sym = usize::try_from(r.r_info.get(LE) >> 32).unwrap_or(usize::MAX);
        klp.get(sym).copied().unwrap_or(false)
    });
    if moved.is_empty() {
        return Ok(moved);
    }
    let mut bytes: Vec<u8> = kept
        .iter()
        .flat_map(|r| pod::bytes_of(r).to_vec())
        .collect();
    bytes.resize(count * 24, 0);
    ko[at..at + count * 24].copy_from_slice(&bytes);
    section.sh_size = U64::new(LE, (kept.len() * 24) as u64);
    Ok(moved)
}

/// Appends the new sections' data, the names and the new section header table, and points the
/// ELF header at the table.
fn append_tables(
    ko: &mut Vec<u8>,
    table: SectionTable,
    mut appended: Vec<NewSection>,
) -> Result<(), KlpElfError> {
    let SectionTable {
        header,
        shstrndx,
        mut sections,
        names,
        ..
    } = table;
    for (section, data) in &mut appended {
        pad_to(ko, 8);
        section.sh_offset = U64::new(LE, ko.len() as u64);
        ko.extend_from_slice(data);
    }
    let names_offset = ko.len();
    ko.extend_from_slice(&names);
    sections[shstrndx].sh_offset = U64::new(LE, names_offset as u64);
    sections[shstrndx].sh_size = U64::new(LE, names.len() as u64);
    pad_to(ko, 8);
    let new_shoff = ko.len();
    for section in sections.iter().chain(appended.iter().map(|(h, _)| h)) {
        ko.extend_from_slice(pod::bytes_of(section));
    }
    let mut header = header;
    header.e_shoff = U64::new(LE, new_shoff as u64);
    let total = u16::try_from(sections.len() + appended.len())
        .map_err(|_| KlpElfError::Malformed("too many sections"))?;
    header.e_shnum = U16::new(LE, total);
    ko[..64].copy_from_slice(pod::bytes_of(&header));
    Ok(())
}

/// Re-reads section header `index` from the original table (the working copy is borrowed
/// mutably while relocation sections are split).
fn sections_target_copy(
    header: &FileHeader64<LE>,
    ko: &[u8],
    shoff: usize,
    index: usize,
) -> Result<Box<SectionHeader64<LE>>, KlpElfError> {
    if index >= usize::from(header.e_shnum.get(LE)) {
        return Err(KlpElfError::Malformed("relocation target out of range"));
    }
    read(ko, shoff + index * 64).map(Box::new)
}
