# The logic of scripts/check-layout (the rules, why, and how to run it: see the comment at the
# top of that script). Standard library only. Importable: scripts/check_layout_test.py builds
# small fake crates and runs `check` on them.
#
# It reads Rust through a small lexer (comments, strings, raw strings, char literals and
# lifetimes are told apart, so braces inside them do not count) and then walks the tokens: test
# code (`#[cfg(test)]` items) is left out, `mod x;` declarations give each crate's module tree the
# way rustc finds the files, and `use` trees and `crate::`/`super::`/`self::` paths in code give the
# edges between files.

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE = 700
MAX_FN = 120
TOP = 20

# ---------------------------------------------------------------------------------------------
# Lexer

IDENT, PUNCT, LIT, LIFETIME = "ident", "punct", "lit", "lifetime"

KEYWORDS = {
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move",
    "mut", "pub", "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true",
    "type", "unsafe", "use", "where", "while", "union", "macro_rules",
}

_RAW_STR = re.compile(r'(?:b|c)?r(#*)"')
_IDENT = re.compile(r"(?:r#)?[^\W\d]\w*")
_NUMBER = re.compile(r"\d[\w]*(?:\.(?![.\w])|\.\d[\w]*)?")


@dataclass
class Tok:
    kind: str
    value: str
    line: int


def tokenize(text):
    """Rust source -> tokens (comments dropped, literals as one `lit` token)."""
    toks = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c.isspace():
            i += 1
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):  # block comments nest in Rust
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            line += text.count("\n", i, j)
            i = j
            continue
        m = _RAW_STR.match(text, i)
        if m:
            end = text.find('"' + m.group(1), m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            toks.append(Tok(LIT, "str", line))
            line += text.count("\n", i, j)
            i = j
            continue
        if c == '"' or (c in "bc" and text.startswith('"', i + 1)):
            j = i + (1 if c == '"' else 2)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            toks.append(Tok(LIT, "str", line))
            line += text.count("\n", i, j)
            i = j
            continue
        if c == "'" or (c == "b" and text.startswith("'", i + 1)):
            q = i if c == "'" else i + 1
            if text.startswith("\\", q + 1):  # '\n', '\'', '\u{..}'
                end = text.find("'", q + 3)
                i = n if end < 0 else end + 1
                toks.append(Tok(LIT, "char", line))
                continue
            if q + 2 < n and text[q + 2] == "'" and text[q + 1] != "\n":  # 'x'
                i = q + 3
                toks.append(Tok(LIT, "char", line))
                continue
            m = _IDENT.match(text, q + 1)  # a lifetime or a label: 'a, 'static, 'outer:
            j = m.end() if m else q + 1
            toks.append(Tok(LIFETIME, text[i:j], line))
            i = j
            continue
        m = _IDENT.match(text, i)
        if m:
            toks.append(Tok(IDENT, m.group(0), line))
            i = m.end()
            continue
        m = _NUMBER.match(text, i)
        if m:
            toks.append(Tok(LIT, "num", line))
            i = m.end()
            continue
        if text.startswith("::", i):
            toks.append(Tok(PUNCT, "::", line))
            i += 2
            continue
        toks.append(Tok(PUNCT, c, line))
        i += 1
    return toks


def match_brackets(toks):
    """Index of each bracket -> index of its partner (both ways); unbalanced ones are left out."""
    pairs, stack = {}, []
    close = {")": "(", "]": "[", "}": "{"}
    for i, t in enumerate(toks):
        if t.kind != PUNCT:
            continue
        if t.value in "([{":
            stack.append(i)
        elif t.value in close:
            # Pop to the nearest matching opener (tolerates a stray bracket in macro input).
            k = len(stack) - 1
            while k >= 0 and toks[stack[k]].value != close[t.value]:
                k -= 1
            if k >= 0:
                o = stack[k]
                del stack[k:]
                pairs[o], pairs[i] = i, o
    return pairs


# ---------------------------------------------------------------------------------------------
# One file


@dataclass
class Ref:
    """A path in non-test code that may name an item of another module of the crate."""

    mod: tuple  # the inline module (relative to the file's module) it occurs in
    segs: tuple
    line: int
    text: str


@dataclass
class Func:
    name: str
    start: int
    end: int

    @property
    def lines(self):
        return self.end - self.start + 1


@dataclass
class FileInfo:
    path: Path
    total_lines: int = 0
    test_lines: int = 0
    whole_file_test: bool = False
    generated: bool = False
    funcs: list = field(default_factory=list)
    refs: list = field(default_factory=list)
    mod_decls: list = field(default_factory=list)  # (inline mod, name, line)
    test_mod_decls: list = field(default_factory=list)  # `#[cfg(test)] mod x;`
    inline_mods: set = field(default_factory=set)
    imports: dict = field(default_factory=dict)  # inline mod -> {bound name: path}
    globs: dict = field(default_factory=dict)  # inline mod -> [path of `use path::*`]
    items: dict = field(default_factory=dict)  # inline mod -> {names defined there}

    @property
    def code_lines(self):
        return self.total_lines - self.test_lines


_GENERATED = re.compile(r"@generated|automatically generated|do not edit", re.I)
_BLOCK_ITEMS = {"fn", "mod", "impl", "trait", "enum", "struct", "union", "extern", "macro_rules"}
_FN_QUALIFIERS = {"pub", "const", "async", "unsafe", "extern", "default"}
_ITEM_KEYWORDS = {"struct", "enum", "union", "trait", "type", "const", "static", "mod"}


def _is_attr(toks, i):
    """`#[` (outer) or `#![` (inner) at i: (is inner, index of the `[`) or None."""
    if toks[i].value != "#" or toks[i].kind != PUNCT or i + 1 >= len(toks):
        return None
    if toks[i + 1].value == "[":
        return (False, i + 1)
    if toks[i + 1].value == "!" and i + 2 < len(toks) and toks[i + 2].value == "[":
        return (True, i + 2)
    return None


def _is_cfg_test(toks, lo, hi):
    """Whether the attribute tokens toks[lo:hi] (inside the brackets) are cfg(test) or
    cfg(all(.., test, ..))."""
    vals = [t.value for t in toks[lo:hi]]
    if vals == ["cfg", "(", "test", ")"]:
        return True
    if vals[:4] == ["cfg", "(", "all", "("]:
        depth = 0
        for v in vals[4:]:
            if v == "(":
                depth += 1
            elif v == ")":
                depth -= 1
            elif v == "test" and depth == 0:
                return True
    return False


def _item_end(toks, pairs, i):
    """The index of the last token of the item (or statement, or field) starting at i."""
    n = len(toks)
    block = False
    for j in range(i, n):
        v = toks[j].value
        if v in ("{", ";", "=") or toks[j].kind == LIT:
            break
        if toks[j].kind == IDENT and v in _BLOCK_ITEMS:
            block = True
            break
    j = i
    while j < n:
        t = toks[j]
        if t.kind == PUNCT:
            if t.value in "([{":
                if j not in pairs:
                    return n - 1
                if t.value == "{" and (block or j == i):
                    return pairs[j]
                j = pairs[j] + 1
                continue
            if t.value in ")]}":
                return j - 1
            if t.value == ";" or (t.value == "," and not block):
                return j
        j += 1
    return n - 1


def _test_regions(toks, pairs):
    """Token ranges [start, end] of `#[cfg(test)]` items (their attributes included); and
    whether the file is all test code (`#![cfg(test)]` among its own attributes)."""
    i, n, whole = 0, len(toks), False
    while i < n and (a := _is_attr(toks, i)) and a[0]:
        close = pairs.get(a[1], n - 1)
        whole = whole or _is_cfg_test(toks, a[1] + 1, close)
        i = close + 1
    regions = []
    while i < n:
        if not _is_attr(toks, i):
            i += 1
            continue
        start, test = i, False
        while i < n and (a := _is_attr(toks, i)):  # the attributes of one item
            close = pairs.get(a[1], n - 1)
            test = test or (not a[0] and _is_cfg_test(toks, a[1] + 1, close))
            i = close + 1
        if test and i < n:
            end = _item_end(toks, pairs, i)
            regions.append((start, end))
            i = end + 1
    return regions, whole


def _parse_use(toks, pairs, i, end):
    """The `use` tree in toks[i:end] -> [(path, line, bound name or None, is glob)]."""
    out = []

    def tree(j, prefix):
        segs = list(prefix)
        if j < end and toks[j].value == "::":
            segs.append("::")
            j += 1
        while j < end:
            t = toks[j]
            if t.value == "{":
                close = min(pairs.get(j, end), end)
                j += 1
                while j < close:
                    j = tree(j, segs)
                    if j < close and toks[j].value == ",":
                        j += 1
                return close + 1
            if t.value == "*":
                out.append((tuple(segs), t.line, None, True))
                return j + 1
            if t.kind != IDENT:
                return j + 1
            segs.append(t.value)
            line = t.line
            j += 1
            if j < end and toks[j].value == "::":
                j += 1
                continue
            if segs[-1] == "self" and len(segs) > 1:
                segs.pop()
            name = segs[-1]
            if j + 1 < end and toks[j].value == "as":
                name = toks[j + 1].value
                j += 2
            out.append((tuple(segs), line, None if name == "_" else name, False))
            return j
        return j

    tree(i, ())
    return out


def _path_at(toks, i):
    """The path `a::b::c` starting at token i -> (segments, index after it)."""
    segs = [toks[i].value]
    j = i + 1
    while j + 1 < len(toks) and toks[j].value == "::" and toks[j + 1].kind == IDENT:
        segs.append(toks[j + 1].value)
        j += 2
    return tuple(segs), j


def _impl_name(toks, pairs, i, brace):
    """The type an `impl` block at i..brace is for (last path segment)."""
    j, lo = i + 1, i + 1
    if j < brace and toks[j].value == "<":  # impl<T: X>: skip the generics
        depth = 0
        while j < brace:
            depth += {"<": 1, ">": -1}.get(toks[j].value, 0)
            j += 1
            if depth == 0:
                break
        lo = j
    for k in range(lo, brace):
        if toks[k].value == "for" and toks[k].kind == IDENT:
            lo = k + 1
    name = None
    for k in range(lo, brace):
        t = toks[k]
        if t.value in ("<", "where"):
            break
        if t.kind == IDENT and t.value not in ("dyn", "mut", "const", "unsafe"):
            name = t.value
    return name or "impl"


def _fn_start(toks, pairs, k):
    """First token of `pub(crate) const async unsafe extern "C" fn` before the `fn` at k."""
    start, j = k, k - 1
    while j >= 0:
        t = toks[j]
        if t.kind == IDENT and t.value in _FN_QUALIFIERS:
            start = j
        elif t.kind == LIT and j > 0 and toks[j - 1].value == "extern":
            start = j
        elif t.value == ")" and j in pairs and pairs[j] > 0 and toks[pairs[j] - 1].value == "pub":
            j = pairs[j] - 1
            start = j
        else:
            break
        j -= 1
    return start


def analyze(path, text=None):
    """Read one .rs file: its length (test code apart), its functions, its module declarations,
    imports and the paths it names."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    info = FileInfo(path=Path(path))
    lines = text.splitlines()
    info.total_lines = len(lines)
    info.generated = any(_GENERATED.search(ln) for ln in lines[:5])
    toks = tokenize(text)
    pairs = match_brackets(toks)
    regions, info.whole_file_test = _test_regions(toks, pairs)
    test_lines = set()
    for s, e in regions:
        test_lines.update(range(toks[s].line, toks[e].line + 1))
    info.test_lines = len(test_lines)
    _Walker(toks, pairs, info, dict(regions)).run()
    return info


class _Walker:
    """One pass over the tokens of a file, test regions skipped, keeping the stack of open
    braces (inline `mod`, `impl`, `trait`, `fn`, other blocks) to know the module and the owner
    of what it finds."""

    def __init__(self, toks, pairs, info, skip):
        self.toks, self.pairs, self.info, self.skip = toks, pairs, info, skip
        self.stack = []  # (index of the closing brace, kind, name)
        self.pending = {}  # index of an opening brace -> (kind, name)

    def run(self):
        toks, n, i = self.toks, len(self.toks), 0
        while i < n:
            while self.stack and self.stack[-1][0] <= i:
                self.stack.pop()
            self.cur = tuple(name for _, kind, name in self.stack if kind == "mod")
            self.module_level = all(kind == "mod" for _, kind, _ in self.stack)
            if i in self.skip:
                i = self.test_item(i)
            elif toks[i].kind == PUNCT and toks[i].value == "{":
                kind, name = self.pending.pop(i, ("block", None))
                self.stack.append((self.pairs.get(i, n), kind, name))
                i += 1
            elif toks[i].kind == IDENT:
                i = self.ident(i)
            else:
                i += 1

    def at(self, i):
        return self.toks[i] if 0 <= i < len(self.toks) else Tok(PUNCT, "", 0)

    def item(self, name):
        if self.module_level:
            self.info.items.setdefault(self.cur, set()).add(name)

    def body(self, j):
        """The `{` that opens the body of the item whose header goes on at j, or None (`;`)."""
        while j < len(self.toks):
            t = self.toks[j]
            if t.kind == PUNCT and t.value in "([" and j in self.pairs:
                j = self.pairs[j] + 1
                continue
            if t.kind == PUNCT and t.value in "{;}":
                return j if t.value == "{" else None
            j += 1
        return None

    def test_item(self, i):
        """Skip a `#[cfg(test)]` item; `#[cfg(test)] mod x;` names a file of test code."""
        end = self.skip[i]
        for k in range(i, end):
            if self.at(k).value == "mod" and self.at(k + 1).kind == IDENT:
                if self.at(end).value == ";":
                    decl = (self.cur, self.at(k + 1).value, self.at(k).line)
                    self.info.test_mod_decls.append(decl)
                break
        return end + 1

    def ident(self, i):
        t, prev, nxt = self.at(i), self.at(i - 1).value, self.at(i + 1)
        v = t.value
        if v == "mod" and nxt.kind == IDENT:
            return self.mod(i)
        if v == "fn" and nxt.kind == IDENT:
            return self.fn(i)
        if v == "impl" and prev in ("", "}", ";", "{", "]", "unsafe", "default"):
            brace = self.body(i + 1)
            if brace is not None:
                self.pending[brace] = ("impl", _impl_name(self.toks, self.pairs, i, brace))
            return i + 1
        if v == "trait" and nxt.kind == IDENT:
            brace = self.body(i + 2)
            if brace is not None:
                self.pending[brace] = ("trait", nxt.value)
            self.item(nxt.value)
            return i + 2
        if v in _ITEM_KEYWORDS and nxt.kind == IDENT and nxt.value not in KEYWORDS:
            self.item(nxt.value)
            return i + 2
        if v == "macro_rules" and nxt.value == "!" and self.at(i + 2).kind == IDENT:
            self.item(self.at(i + 2).value)
            return i + 3
        if v == "use" and prev != "+" and nxt.value != "<":
            return self.use(i)
        if nxt.value == "::" and prev not in ("::", "$") and (
            v in ("crate", "super", "self") or v not in KEYWORDS
        ):
            return self.path(i)
        return i + 1

    def mod(self, i):
        name, after = self.at(i + 1).value, self.at(i + 2).value
        if after == ";":
            self.info.mod_decls.append((self.cur, name, self.at(i).line))
        elif after == "{":
            self.pending[i + 2] = ("mod", name)
            self.info.inline_mods.add(self.cur + (name,))
        self.item(name)
        return i + 2

    def fn(self, i):
        name = self.at(i + 1).value
        brace = self.body(i + 2)
        if brace is not None:  # a trait's `fn f(&self);` has no body: not a function
            owners = [n for _, kind, n in self.stack if kind in ("impl", "trait", "fn")]
            end = self.pairs.get(brace, len(self.toks) - 1)
            start = _fn_start(self.toks, self.pairs, i)
            self.info.funcs.append(
                Func("::".join(owners + [name]), self.toks[start].line, self.toks[end].line)
            )
            self.pending[brace] = ("fn", name)
        self.item(name)
        return i + 2  # on into the signature: its types are paths too

    def use(self, i):
        toks, end = self.toks, i + 1
        while end < len(toks) and toks[end].value != ";":
            end = self.pairs.get(end, end) + 1 if toks[end].value == "{" else end + 1
        for segs, line, name, glob in _parse_use(toks, self.pairs, i + 1, end):
            shown = ("::" if segs[:1] == ("::",) else "") + "::".join(s for s in segs if s != "::")
            shown += "::*" if glob else ""
            self.info.refs.append(Ref(self.cur, segs, line, "use " + shown))
            if self.module_level and glob:
                self.info.globs.setdefault(self.cur, []).append(segs)
            elif self.module_level and name:
                self.info.imports.setdefault(self.cur, {})[name] = segs
        return end + 1

    def path(self, i):
        segs, j = _path_at(self.toks, i)
        # `pub(in crate::a)` is a visibility, not a use of crate::a
        visibility = self.at(i - 1).value == "in" and self.at(i - 2).value == "(" and (
            self.at(i - 3).value == "pub"
        )
        if not visibility and len(segs) > 1:
            self.info.refs.append(Ref(self.cur, segs, self.at(i).line, "::".join(segs)))
        return j


# ---------------------------------------------------------------------------------------------
# Module trees and the graph between files


@dataclass
class Tree:
    """One crate root (the library, the binary in main.rs, each src/bin/*.rs) and its files."""

    label: str
    root: Path
    modules: dict = field(default_factory=dict)  # module path -> file
    files: dict = field(default_factory=dict)  # file -> module path
    imports: dict = field(default_factory=dict)  # module path -> {name: path}
    globs: dict = field(default_factory=dict)
    items: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)  # (file, line, module) declared but not found


def _child_dir(file, is_root):
    """Where `mod x;` in this file looks for x.rs / x/mod.rs."""
    if is_root or file.name == "mod.rs":
        return file.parent
    return file.parent / file.stem


def build_tree(label, root, infos, test_files):
    """Follow `mod x;` from the root the way rustc does; files under `#[cfg(test)] mod x;` go
    to test_files instead."""
    tree = Tree(label, root)
    queue = [(root, (), False)]
    seen = set()
    while queue:
        file, modpath, test = queue.pop(0)
        if (file, test) in seen:
            continue
        seen.add((file, test))
        if file not in infos:
            infos[file] = analyze(file)
        info = infos[file]
        if test or info.whole_file_test:
            test_files.add(file)
            test = True
        else:
            tree.files[file] = modpath
            tree.modules[modpath] = file
            for rel in info.inline_mods:
                tree.modules.setdefault(modpath + rel, file)
            for rel, names in info.imports.items():
                tree.imports[modpath + rel] = names
            for rel, globs in info.globs.items():
                tree.globs[modpath + rel] = globs
            for rel, names in info.items.items():
                tree.items[modpath + rel] = names
        base = _child_dir(file, file == root)
        decls = [(d, test) for d in info.mod_decls] + [(d, True) for d in info.test_mod_decls]
        for (rel, name, line), child_test in decls:
            d = base.joinpath(*rel)
            for cand in (d / f"{name}.rs", d / name / "mod.rs"):
                if cand.is_file():
                    queue.append((cand, modpath + rel + (name,), child_test))
                    break
            else:
                if not child_test:
                    tree.missing.append((file, line, modpath + rel + (name,)))
    return tree


def _anchor(cur, segs):
    """Where a path used in module `cur` starts, when it starts with `crate`, `self` or `super`:
    (that module, the rest of the path); the module is None when `super` climbs above the root.
    None for a path that starts otherwise."""
    first = segs[0]
    if first == "crate":
        return (), segs[1:]
    if first == "self":
        return cur, segs[1:]
    if first == "super":
        base, rest = cur, segs
        while rest and rest[0] == "super":
            if not base:
                return None, rest
            base, rest = base[:-1], rest[1:]
        return base, rest
    return None


def _resolve(tree, cur, segs, depth=0):
    """The file a path used in module `cur` names an item of, or None (another crate)."""
    if depth > 12 or not segs:
        return None
    first = segs[0]
    anchored = _anchor(cur, segs)
    if anchored is not None:
        base, rest = anchored
    elif first == "::":
        return None
    elif cur + (first,) in tree.modules:
        base, rest = cur, segs
    else:
        bound = tree.imports.get(cur, {}).get(first)
        if bound is None or bound == segs[:1]:
            return None
        return _resolve(tree, cur, bound + segs[1:], depth + 1)
    if base not in tree.modules:
        return None
    mod, k = base, 0
    while k < len(rest) and mod + (rest[k],) in tree.modules:
        mod, k = mod + (rest[k],), k + 1
    if k < len(rest) and rest[k] not in tree.items.get(mod, ()):
        # Not defined here: an item the module imports (a re-export such as lib.rs's
        # `pub use exit::ExitClass`) lives in the file it is imported from.
        name = rest[k]
        bound = tree.imports.get(mod, {}).get(name)
        if bound is not None:
            return _resolve(tree, mod, bound + rest[k + 1:], depth + 1)
        for glob in tree.globs.get(mod, []):
            target = _resolve_module(tree, mod, glob)
            if target is not None and (
                name in tree.items.get(target, ()) or name in tree.imports.get(target, {})
            ):
                return _resolve(tree, mod, glob + rest[k:], depth + 1)
    return tree.modules[mod]


def _resolve_module(tree, cur, segs):
    """The module path `segs` (used in `cur`) names exactly, or None."""
    if not segs:
        return None
    anchored = _anchor(cur, segs)
    if anchored is not None:
        mod, rest = anchored
    elif cur + (segs[0],) in tree.modules:
        mod, rest = cur, segs
    else:
        return None
    if mod is None:
        return None
    mod = mod + tuple(rest)
    return mod if mod in tree.modules else None


def edges(tree, infos):
    """file -> {file it depends on: [(line, text), ...]} (non-test code; no self-loops)."""
    graph = {f: {} for f in tree.files}
    for file, modpath in tree.files.items():
        for ref in infos[file].refs:
            target = _resolve(tree, modpath + ref.mod, ref.segs)
            if target is not None and target != file and target in tree.files:
                graph[file].setdefault(target, []).append((ref.line, ref.text))
    return graph


def circles(graph):
    """Strongly connected components with more than one file (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# The whole check


@dataclass
class Circle:
    crate: str
    tree: str
    files: list  # names relative to src/
    edges: list  # (from, to, line, text, how many references in all)

    def describe(self):
        where = f"crate {self.crate}" + ("" if self.tree == "lib" else f" ({self.tree})")
        if len(self.files) == 2:
            (a, b, la, ta, na), (_, _, lb, tb, nb) = self.edges
            return (
                f"circle in {where}: {a} -> {b} (line {la}: {ta}{_more(na)}) "
                f"-> {a} (line {lb}: {tb}{_more(nb)})"
            )
        head = f"circle in {where}: {len(self.files)} files import each other: " + ", ".join(
            self.files
        )
        rows = [f"    {a} -> {b} (line {ln}: {text}{_more(k)})" for a, b, ln, text, k in self.edges]
        return "\n".join([head] + rows)


def _more(k):
    if k <= 1:
        return ""
    return f"; {k - 1} more reference" + ("s" if k > 2 else "")


@dataclass
class Result:
    files: list = field(default_factory=list)  # (shown path, FileInfo)
    funcs: list = field(default_factory=list)  # (shown path, Func)
    circles: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # (shown path, line, module)
    crates: list = field(default_factory=list)

    def violations(self, max_file=MAX_FILE, max_fn=MAX_FN):
        out = [c.describe() for c in self.circles]
        for shown, info in self.files:
            if info.code_lines > max_file:
                out.append(f"{shown}: {info.code_lines} lines of non-test code (limit {max_file})")
        for shown, fn in self.funcs:
            if fn.lines > max_fn:
                out.append(
                    f"{shown}:{fn.start}: function {fn.name} is {fn.lines} lines (limit {max_fn})"
                )
        return out


def _shown(path, root):
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def check(root, only_crate=None):
    """Analyze every crate under root/crates (or only one): files, functions, circles."""
    root = Path(root)
    crate_dirs = sorted(p for p in (root / "crates").iterdir() if (p / "src").is_dir())
    if only_crate is not None:
        crate_dirs = [p for p in crate_dirs if p.name == only_crate]
        if not crate_dirs:
            raise ValueError(f"no crate named {only_crate!r} under {root / 'crates'}")
    res = Result()
    for crate in crate_dirs:
        res.crates.append(crate.name)
        src = crate / "src"
        roots = []
        if (src / "lib.rs").is_file():
            roots.append(("lib", src / "lib.rs"))
        if (src / "main.rs").is_file():
            roots.append(("binary main.rs", src / "main.rs"))
        bindir = src / "bin"
        if bindir.is_dir():
            for p in sorted(bindir.iterdir()):
                if p.suffix == ".rs" and p.is_file():
                    roots.append((f"binary bin/{p.name}", p))
                elif (p / "main.rs").is_file():
                    roots.append((f"binary bin/{p.name}/main.rs", p / "main.rs"))
        infos, test_files, in_tree = {}, set(), set()
        for label, rootfile in roots:
            tree = build_tree(label, rootfile, infos, test_files)
            in_tree.update(tree.files)
            for file, line, mod in tree.missing:
                res.missing.append((_shown(file, root), line, "::".join(mod)))
            graph = edges(tree, infos)
            for comp in circles(graph):
                rows = []
                for a in comp:
                    for b in comp:
                        refs = graph[a].get(b)
                        if refs:
                            ln, text = min(refs)
                            rows.append((_shown(a, src), _shown(b, src), ln, text, len(refs)))
                res.circles.append(
                    Circle(crate.name, label, [_shown(f, src) for f in comp], rows)
                )
        # Length rules: every .rs under src/ that is not test code or generated, also a file no
        # `mod` reaches (it is still source someone reads).
        for path in sorted(src.rglob("*.rs")):
            if path in test_files and path not in in_tree:
                continue
            if path not in infos:
                infos[path] = analyze(path)
            info = infos[path]
            if info.generated or info.whole_file_test:
                continue
            shown = _shown(path, root)
            res.files.append((shown, info))
            res.funcs.extend((shown, fn) for fn in info.funcs)
    return res


def report(res, max_file, max_fn, out):
    circ = res.circles
    print(f"== circles between the files of a crate: {len(circ)}", file=out)
    for c in circ:
        print(c.describe(), file=out)
    files = sorted(res.files, key=lambda f: (-f[1].code_lines, f[0]))
    print(f"\n== longest files (lines of non-test code; limit {max_file}), top {TOP}", file=out)
    for shown, info in files[:TOP]:
        mark = "  OVER" if info.code_lines > max_file else ""
        print(f"{info.code_lines:6} non-test {info.total_lines:6} total  {shown}{mark}", file=out)
    funcs = sorted(res.funcs, key=lambda f: (-f[1].lines, f[0], f[1].start))
    print(f"\n== longest functions (lines; limit {max_fn}), top {TOP}", file=out)
    for shown, fn in funcs[:TOP]:
        mark = "  OVER" if fn.lines > max_fn else ""
        print(f"{fn.lines:6}  {shown}:{fn.start}  {fn.name}{mark}", file=out)
    if res.missing:
        print("\n== `mod` declarations whose file was not found", file=out)
        for shown, line, mod in res.missing:
            print(f"{shown}:{line}: mod {mod}", file=out)


def _count(k, what):
    return f"{k} {what}" + ("" if k == 1 else "s")


def summary(res, max_file, max_fn):
    nfiles = sum(1 for _, i in res.files if i.code_lines > max_file)
    nfns = sum(1 for _, f in res.funcs if f.lines > max_fn)
    return (
        f"{_count(len(res.circles), 'circle')}, {_count(nfiles, 'file')} over {max_file} lines, "
        f"{_count(nfns, 'function')} over {max_fn} lines ({_count(len(res.crates), 'crate')}, "
        f"{_count(len(res.files), 'file')}, {_count(len(res.funcs), 'function')} checked)"
    )


def main(argv=None, root=None):
    ap = argparse.ArgumentParser(
        prog="check-layout",
        description="No import circles between the files of a crate; files and functions small "
        "enough to read (non-test code).",
    )
    ap.add_argument("--max-file", type=int, default=MAX_FILE, metavar="N",
                    help=f"lines of non-test code per file (default {MAX_FILE})")
    ap.add_argument("--max-fn", type=int, default=MAX_FN, metavar="N",
                    help=f"lines per function (default {MAX_FN})")
    ap.add_argument("--crate", metavar="NAME", help="check only crates/NAME")
    ap.add_argument("--report", action="store_true",
                    help="print every circle and the longest files and functions; exit 0")
    ap.add_argument("--root", metavar="DIR", help="the workspace (default: this script's ..)")
    args = ap.parse_args(argv)
    root = Path(args.root or root or Path(__file__).resolve().parent.parent)
    try:
        res = check(root, args.crate)
    except (ValueError, OSError) as e:
        ap.error(str(e))
    if args.report:
        report(res, args.max_file, args.max_fn, sys.stdout)
        print(f"\ncheck-layout: {summary(res, args.max_file, args.max_fn)}")
        return 0
    bad = res.violations(args.max_file, args.max_fn)
    if bad:
        for line in bad:
            print(line, file=sys.stderr)
        print(f"check-layout: FAILED: {summary(res, args.max_file, args.max_fn)}", file=sys.stderr)
        return 1
    print(f"check-layout: ok: {summary(res, args.max_file, args.max_fn)}")
    return 0
