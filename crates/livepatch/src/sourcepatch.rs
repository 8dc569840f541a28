//! The source patch a fix arrives as (a unified diff against the kernel source, `-p1`), and the
//! first refusals: what a function-level patch cannot carry is refused here, before anything is
//! compiled — changes to headers, to anything but C files, and to the bodies of structure,
//! union or enum definitions (a layout change breaks every existing object of that type).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::io_error::{io, IoError};

/// Errors reading, checking or applying a source patch.
#[derive(Debug, thiserror::Error)]
pub enum SourcePatchError {
    /// The file has no `+++`/`---` pairs.
    #[error("{0} is not a unified diff")]
    NotADiff(PathBuf),
    /// The patch touches a file that is not a C unit.
    #[error("refused: the patch changes {file}, which is not a C source file ({why})")]
    NotAUnit { file: PathBuf, why: &'static str },
    /// The patch changes a structure, union or enum definition.
    #[error(
        "refused: the patch changes the layout of `{name}` in {file} (line {line}); \
         live patching replaces functions and cannot change data structures"
    )]
    LayoutChange {
        file: PathBuf,
        name: String,
        line: usize,
    },
    /// `patch` rejected a hunk.
    #[error("the patch does not apply to {release}'s source: {detail}")]
    DoesNotApply { release: String, detail: String },
    /// Filesystem error.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// One changed line range of a file, in old and new line numbers (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedLines {
    /// Lines removed, numbered in the old file.
    pub removed: Vec<usize>,
    /// Lines added, numbered in the new file.
    pub added: Vec<usize>,
}

/// A file the patch changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchedFile {
    /// Path relative to the source top (the `-p1` path).
    pub path: PathBuf,
    /// Its changed lines.
    pub lines: ChangedLines,
}

/// A parsed source patch.
#[derive(Debug, Clone)]
pub struct SourcePatch {
    /// The patch file.
    pub file: PathBuf,
    /// The files it changes.
    pub touched: Vec<TouchedFile>,
}

fn strip_one(path: &str) -> PathBuf {
    let path = path.split('\t').next().unwrap_or(path).trim();
    match path.split_once('/') {
        Some((_, rest)) => PathBuf::from(rest),
        None => PathBuf::from(path),
    }
}

/// Parses the hunks of a unified diff.
pub fn parse(file: &Path, text: &str) -> Result<SourcePatch, SourcePatchError> {
    let mut touched: Vec<TouchedFile> = Vec::new();
    let (mut old_line, mut new_line) = (0usize, 0usize);
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(old) = line.strip_prefix("--- ") {
            if let Some(new) = lines.peek().and_then(|l| l.strip_prefix("+++ ")) {
                let path = if new.starts_with("/dev/null") {
                    strip_one(old)
                } else {
                    strip_one(new)
                };
                touched.push(TouchedFile {
                    path,
                    lines: ChangedLines {
                        removed: Vec::new(),
                        added: Vec::new(),
                    },
                });
                lines.next();
                continue;
            }
        }
        if let Some(header) = line.strip_prefix("@@ ") {
            // @@ -a,b +c,d @@
            let mut fields = header.split_whitespace();
            let start = |f: Option<&str>| {
                f.and_then(|f| f.get(1..))
                    .and_then(|f| f.split(',').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            old_line = start(fields.next());
            new_line = start(fields.next());
            continue;
        }
        let Some(current) = touched.last_mut() else {
            continue;
        };
        match line.chars().next() {
            Some('+') => {
                current.lines.added.push(new_line);
                new_line += 1;
            }
            Some('-') => {
                current.lines.removed.push(old_line);
                old_line += 1;
            }
            Some(' ') | None => {
                old_line += 1;
                new_line += 1;
            }
            _ => {}
        }
    }
    if touched.is_empty() {
        return Err(SourcePatchError::NotADiff(file.to_path_buf()));
    }
    Ok(SourcePatch {
        file: file.to_path_buf(),
        touched,
    })
}

impl SourcePatch {
    /// Reads and parses a patch file, refusing files that are not C units.
    pub fn read(file: &Path) -> Result<SourcePatch, SourcePatchError> {
        let text = fs::read_to_string(file).map_err(io(file))?;
        let patch = parse(file, &text)?;
        for t in &patch.touched {
            let ext = t.path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let why = match ext {
                "c" => continue,
                "h" => "a header can change structure layouts and every unit that includes it",
                _ => "only changes to function bodies in .c files can be live-patched",
            };
            return Err(SourcePatchError::NotAUnit {
                file: t.path.clone(),
                why,
            });
        }
        Ok(patch)
    }

    /// Applies the patch to copies of the touched files: `before/<path>` is the original,
    /// `after/<path>` the patched one, both under `work`. Then refuses layout changes.
    pub fn apply(
        &self,
        source: &Path,
        release: &str,
        work: &Path,
    ) -> Result<(PathBuf, PathBuf), SourcePatchError> {
        let before = work.join("before-src");
        let after = work.join("after-src");
        for t in &self.touched {
            for side in [&before, &after] {
                let dest = side.join(&t.path);
                if let Some(dir) = dest.parent() {
                    fs::create_dir_all(dir).map_err(io(dir))?;
                }
                let orig = source.join(&t.path);
                fs::copy(&orig, &dest).map_err(io(&orig))?;
            }
        }
        let file = fs::canonicalize(&self.file).map_err(io(&self.file))?;
        let out = Command::new("patch")
            .args([
                "-p1",
                "--batch",
                "--forward",
                "--no-backup-if-mismatch",
                "-d",
            ])
            .arg(&after)
            .arg("-i")
            .arg(&file)
            .output()
            .map_err(io(Path::new("patch")))?;
        if !out.status.success() {
            return Err(SourcePatchError::DoesNotApply {
                release: release.into(),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        for t in &self.touched {
            let old = fs::read_to_string(before.join(&t.path)).map_err(io(&t.path))?;
            let new = fs::read_to_string(after.join(&t.path)).map_err(io(&t.path))?;
            check_layout(&t.path, &old, &t.lines.removed)?;
            check_layout(&t.path, &new, &t.lines.added)?;
        }
        Ok((before, after))
    }
}

/// A type definition's extent in a file: name and first/last line (1-based, inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeBody {
    /// `struct foo`, `union bar`, `enum baz`.
    pub name: String,
    /// First line (the one with the opening brace).
    pub first: usize,
    /// Last line (the closing brace).
    pub last: usize,
}

/// Finds structure, union and enum definitions at file scope (the bodies whose change alters a
/// layout). Initialisers such as `struct foo x = { ... };` are not definitions.
pub fn type_bodies(text: &str) -> Vec<TypeBody> {
    let mut bodies = Vec::new();
    let mut open: Option<(String, usize, i32)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let code = line.split("//").next().unwrap_or("");
        if let Some((name, first, depth)) = open.as_mut() {
            *depth += brace_delta(code);
            if *depth <= 0 {
                bodies.push(TypeBody {
                    name: name.clone(),
                    first: *first,
                    last: number,
                });
                open = None;
            }
            continue;
        }
        let trimmed = code.trim_start();
        let trimmed = trimmed.strip_prefix("typedef ").unwrap_or(trimmed);
        let kind = ["struct", "union", "enum"]
            .into_iter()
            .find(|k| trimmed.starts_with(k) && trimmed[k.len()..].starts_with([' ', '{']));
        let (Some(kind), Some(brace)) = (kind, code.find('{')) else {
            continue;
        };
        let head = &trimmed[kind.len()..trimmed.find('{').unwrap_or(trimmed.len())];
        // `struct foo {` defines; `struct foo x = {` initialises.
        if head.contains('=') || head.contains('(') || head.split_whitespace().count() > 1 {
            continue;
        }
        let name = format!("{kind} {}", head.trim()).trim().to_string();
        let depth = brace_delta(&code[brace..]);
        if depth <= 0 {
            bodies.push(TypeBody {
                name,
                first: number,
                last: number,
            });
        } else {
            open = Some((name, number, depth));
        }
    }
    bodies
}

fn brace_delta(code: &str) -> i32 {
    code.chars().fold(0, |d, c| match c {
        '{' => d + 1,
        '}' => d - 1,
        _ => d,
    })
}

fn check_layout(path: &Path, text: &str, changed: &[usize]) -> Result<(), SourcePatchError> {
    let bodies = type_bodies(text);
    for line in changed {
        if let Some(body) = bodies.iter().find(|b| (b.first..=b.last).contains(line)) {
            return Err(SourcePatchError::LayoutChange {
                file: path.to_path_buf(),
                name: body.name.clone(),
                line: *line,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "\
--- a/fs/proc/version.c
+++ b/fs/proc/version.c
@@ -9,7 +9,8 @@
 static int version_proc_show(struct seq_file *m, void *v)
 {
-\tseq_printf(m, linux_proc_banner,
+\tseq_puts(m, \"patched \");
+\tseq_printf(m, linux_proc_banner,
 \t\tutsname()->sysname,
";

    #[test]
    fn parses_paths_and_line_numbers() {
        let p = parse(Path::new("x.patch"), DIFF).unwrap();
        assert_eq!(p.touched.len(), 1);
        assert_eq!(p.touched[0].path, PathBuf::from("fs/proc/version.c"));
        assert_eq!(p.touched[0].lines.removed, vec![11]);
        assert_eq!(p.touched[0].lines.added, vec![11, 12]);
    }

    #[test]
    fn finds_struct_bodies_but_not_initialisers() {
        let text = "struct a {\n\tint x;\n};\nstatic struct b y = {\n\t.x = 1,\n};\n\
                    typedef union u { int i; } u_t;\nenum e {\n\tA,\n};\n";
        let bodies = type_bodies(text);
        let names: Vec<_> = bodies.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["struct a", "union u", "enum e"]);
        assert_eq!((bodies[0].first, bodies[0].last), (1, 3));
        assert!(check_layout(Path::new("f.c"), text, &[2]).is_err());
        assert!(check_layout(Path::new("f.c"), text, &[5]).is_ok());
    }

    #[test]
    fn refuses_headers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.patch");
        fs::write(&file, DIFF.replace("version.c", "internal.h")).unwrap();
        let err = SourcePatch::read(&file).unwrap_err();
        assert!(err.to_string().contains("header"), "{err}");
    }
}
