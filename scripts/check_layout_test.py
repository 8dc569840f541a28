#!/usr/bin/env python3
# Tests of scripts/check-layout (logic in check_layout.py): small fake crates in a temp dir.
# Run: python3 scripts/check_layout_test.py [-v] [Circles.test_root_reexport_is_no_false_circle]

import contextlib
import io
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True

import check_layout as cl  # noqa: E402


def fn_of(lines, name="long"):
    """A function `name` exactly `lines` lines long (fn line to closing brace)."""
    body = [f"    let x{i} = {i};" for i in range(lines - 2)]
    return "\n".join([f"pub fn {name}() {{"] + body + ["}"]) + "\n"


class Workspace:
    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)

    def write(self, rel, text):
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def check(self, crate=None):
        return cl.check(self.root, crate)

    def close(self):
        self.tmp.cleanup()


class Base(unittest.TestCase):
    def setUp(self):
        self.ws = Workspace()

    def tearDown(self):
        self.ws.close()

    def crate(self, files, name="demo"):
        for rel, text in files.items():
            self.ws.write(f"crates/{name}/src/{rel}", text)
        return self.ws.check(name)

    def circles(self, files):
        """The files of each circle in a crate of `files`."""
        return [c.files for c in self.crate(files).circles]

    def graph(self, name="demo", root="lib.rs"):
        src = self.ws.root / "crates" / name / "src"
        infos = {}
        tree = cl.build_tree("lib", src / root, infos, set())
        g = cl.edges(tree, infos)
        return {
            str(a.relative_to(src)): {str(b.relative_to(src)): refs for b, refs in e.items()}
            for a, e in g.items()
        }

    def fn(self, res, name):
        found = [f for _, f in res.funcs if f.name == name]
        self.assertEqual(len(found), 1, f"{name} in {[f.name for _, f in res.funcs]}")
        return found[0]


class Circles(Base):
    def test_two_files_through_use_crate(self):
        res = self.crate({
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a.rs": "use crate::b::X;\npub struct Y;\n",
            "b.rs": "pub struct X;\n\n\nfn f() -> crate::a::Y { crate::a::Y }\n",
        })
        self.assertEqual(len(res.circles), 1)
        c = res.circles[0]
        self.assertEqual(c.files, ["a.rs", "b.rs"])
        self.assertEqual(
            c.describe(),
            "circle in crate demo: a.rs -> b.rs (line 1: use crate::b::X) "
            "-> a.rs (line 4: crate::a::Y; 1 more reference)",
        )

    def test_no_circle_when_arrows_go_one_way(self):
        self.assertEqual(self.circles({
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a.rs": "use crate::b::X;\n",
            "b.rs": "pub struct X;\n",
        }), [])

    def test_parent_mod_rs_and_child_through_super(self):
        res = self.crate({
            "lib.rs": "pub mod p;\n",
            "p/mod.rs": "mod c;\npub struct P;\npub fn f() { self::c::g() }\n",
            "p/c.rs": "use super::P;\npub fn g() {}\n",
        })
        self.assertEqual([c.files for c in res.circles], [["p/c.rs", "p/mod.rs"]])
        self.assertIn("(line 1: use super::P)", res.circles[0].describe())
        self.assertIn("(line 3: self::c::g)", res.circles[0].describe())

    def test_parent_file_and_child_through_super_in_code(self):
        self.assertEqual(self.circles({
            "lib.rs": "pub mod p;\n",
            "p.rs": "mod c;\npub use c::G;\npub struct P;\n",
            "p/c.rs": "pub struct G;\nfn g() { let _ = super::P; }\n",
        }), [["p/c.rs", "p.rs"]])

    def test_a_mod_declaration_alone_is_no_edge(self):
        self.assertEqual(self.circles({
            "lib.rs": "pub mod p;\npub struct Root;\n",
            "p/mod.rs": "pub mod c;\nuse crate::Root;\n",
            "p/c.rs": "use super::super::Root;\nuse crate::p;\n",
        }), [])
        g = self.graph()
        self.assertEqual(set(g["p/c.rs"]), {"lib.rs", "p/mod.rs"})
        self.assertEqual(set(g["lib.rs"]), set())

    def test_root_reexport_is_no_false_circle(self):
        self.assertEqual(self.circles({
            "lib.rs": "pub mod a;\npub mod exit;\npub use exit::ExitClass;\npub use a::run;\n",
            "exit.rs": "pub enum ExitClass { Ok }\n",
            "a.rs": "pub fn run() -> crate::ExitClass {\n    use crate::ExitClass as E;\n"
                    "    E::Ok\n}\n",
        }), [])
        g = self.graph()
        self.assertEqual(set(g["a.rs"]), {"exit.rs"})
        self.assertEqual(set(g["lib.rs"]), {"a.rs", "exit.rs"})

    def test_an_item_defined_in_the_root_is_an_edge_to_it(self):
        self.assertEqual(self.circles({
            "lib.rs": "pub mod a;\npub use a::run;\npub struct Root;\n",
            "a.rs": "pub fn run() { let _ = crate::Root; }\n",
        }), [["a.rs", "lib.rs"]])

    def test_reexport_from_a_module_goes_to_where_it_comes_from(self):
        self.crate({
            "lib.rs": "pub mod a;\npub mod b;\npub mod c;\n",
            "a.rs": "pub use crate::b::Thing;\n",
            "b.rs": "pub struct Thing;\n",
            "c.rs": "use crate::a::Thing;\nuse crate::a::{self};\n",
        })
        g = self.graph()
        self.assertEqual(set(g["c.rs"]), {"a.rs", "b.rs"})

    def test_braces_and_multiline_use(self):
        res = self.crate({
            "lib.rs": "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n",
            "a.rs": "pub struct X;\nuse crate::c::Z;\n",
            "b.rs": "pub struct Y;\npub mod inner {}\n",
            "d.rs": "pub struct W;\n",
            "c.rs": textwrap.dedent("""\
                use std::{
                    fmt,
                    io::{self, Read},
                };
                use crate::{
                    a::X,
                    b::{
                        self,
                        Y as Why,
                    },
                };
                pub struct Z;
                """),
        })
        self.assertEqual([c.files for c in res.circles], [["a.rs", "c.rs"]])
        self.assertIn("-> a.rs (line 6: use crate::a::X)", res.circles[0].describe())
        g = self.graph()
        self.assertEqual(set(g["c.rs"]), {"a.rs", "b.rs"})
        self.assertEqual(
            sorted(g["c.rs"]["b.rs"]), [(8, "use crate::b"), (9, "use crate::b::Y")]
        )

    def test_use_tree_parser(self):
        toks = cl.tokenize("use ::ext::{a::{self as aa, b}, c::*, d as _, e};")
        got = cl._parse_use(toks, cl.match_brackets(toks), 1, len(toks) - 1)
        self.assertEqual(
            [(segs, name, glob) for segs, _, name, glob in got],
            [
                (("::", "ext", "a"), "aa", False),
                (("::", "ext", "a", "b"), "b", False),
                (("::", "ext", "c"), None, True),
                (("::", "ext", "d"), None, False),
                (("::", "ext", "e"), "e", False),
            ],
        )

    def test_paths_in_test_code_and_comments_are_no_edges(self):
        self.assertEqual(self.circles({
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a.rs": "use crate::b::X;\n",
            "b.rs": textwrap.dedent("""\
                //! See [`crate::a::Y`]; "crate::a::Y" is in a string.
                pub struct X; // crate::a::Y
                /* crate::a::Y */
                #[cfg(test)]
                mod tests {
                    use crate::a::Y;
                }
                """),
        }), [])

    def test_code_after_a_cfg_test_item_still_counts(self):
        self.crate({
            "lib.rs": "pub mod a;\npub mod b;\n#[cfg(test)]\nmod tests;\npub fn f() { b::g() }\n",
            "a.rs": "#[cfg(test)]\nuse crate::b::X;\npub fn f() { crate::b::g() }\n",
            "b.rs": "pub fn g() {}\n",
        })
        g = self.graph()
        self.assertEqual(g["a.rs"], {"b.rs": [(3, "crate::b::g")]})
        self.assertEqual(set(g["lib.rs"]), {"b.rs"})

    def test_visibility_paths_are_no_edges(self):
        self.assertEqual(self.circles({
            "lib.rs": "pub mod a;\n",
            "a/mod.rs": "pub mod b;\nuse self::b::X;\n",
            "a/b.rs": "pub(in crate::a) struct X;\npub(super) fn f() {}\n",
        }), [])

    def test_inline_modules_and_deepest_existing_file(self):
        self.crate({
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a.rs": "pub mod inner {\n    pub fn f() { super::super::b::g() }\n}\n",
            "b.rs": "pub fn g() { crate::a::inner::f(); crate::a::missing::h() }\n",
        })
        g = self.graph()
        self.assertEqual(set(g["a.rs"]), {"b.rs"})
        self.assertEqual([ln for ln, _ in g["b.rs"]["a.rs"]], [1, 1])

    def test_each_binary_is_its_own_tree(self):
        res = self.crate({
            "lib.rs": "pub mod cmd;\n",
            "cmd.rs": "pub fn lib_cmd() {}\n",
            "main.rs": "mod cmd;\npub struct Cli;\nfn main() { cmd::run() }\n",
            "cmd/mod.rs": "pub fn run() {}\n",  # not reached: main's cmd is cmd.rs too
            "bin/tool.rs": "mod helper;\npub struct T;\nfn main() { helper::h() }\n",
            "bin/helper.rs": "pub fn h() { let _ = crate::T; }\n",
        })
        self.assertEqual(
            [(c.tree, c.files) for c in res.circles],
            [("binary bin/tool.rs", ["bin/helper.rs", "bin/tool.rs"])],
        )
        self.assertIn("circle in crate demo (binary bin/tool.rs): ", res.circles[0].describe())

    def test_a_bigger_circle_lists_every_edge(self):
        res = self.crate({
            "lib.rs": "pub mod a;\npub mod b;\npub mod c;\n",
            "a.rs": "use crate::b::B;\npub struct A;\n",
            "b.rs": "use crate::c::C;\npub struct B;\n",
            "c.rs": "use crate::a::A;\npub struct C;\n",
        })
        self.assertEqual(
            res.circles[0].describe(),
            "circle in crate demo: 3 files import each other: a.rs, b.rs, c.rs\n"
            "    a.rs -> b.rs (line 1: use crate::b::B)\n"
            "    b.rs -> c.rs (line 1: use crate::c::C)\n"
            "    c.rs -> a.rs (line 1: use crate::a::A)",
        )


class Functions(Base):
    def test_121_lines_is_flagged_120_is_not(self):
        res = self.crate({"lib.rs": fn_of(120, "fits") + "\n" + fn_of(121, "too_long")})
        self.assertEqual(self.fn(res, "fits").lines, 120)
        self.assertEqual(self.fn(res, "too_long").lines, 121)
        self.assertEqual(
            res.violations(),
            ["crates/demo/src/lib.rs:122: function too_long is 121 lines (limit 120)"],
        )

    def test_strings_raw_strings_chars_and_lifetimes_do_not_break_braces(self):
        src = textwrap.dedent("""\
            pub struct S<'a> { s: &'a str }
            impl<'a> S<'a> {
                pub(crate) async unsafe fn tricky<'b>(&'b self) -> &'a str where 'a: 'b {
                    let _ = "{ not a brace";
                    let _ = "}} \\" still a string {";
                    let _ = r"{ raw";
                    let _ = r#"a "quoted" } raw"#;
                    let _ = br##"}"#}"##;
                    let _ = '{';
                    let _ = '}';
                    let _ = '\\'';
                    let _ = b'{';
                    let _ = '\\u{7d}';
                    'outer: loop { break 'outer; }
                    // a comment {
                    /* a { block /* nested } */ comment */
                    self.s
                }
            }
            pub fn after() {
                let _ = 1;
            }
            """)
        res = self.crate({"lib.rs": src})
        tricky = self.fn(res, "S::tricky")
        self.assertEqual((tricky.start, tricky.end), (3, 18))
        after = self.fn(res, "after")
        self.assertEqual((after.start, after.end), (20, 22))

    def test_signature_on_several_lines_counts_from_the_fn_line(self):
        src = "#[inline]\npub\nconst fn f(\n    x: u8,\n) -> u8 {\n    x\n}\n"
        res = self.crate({"lib.rs": src})
        f = self.fn(res, "f")
        self.assertEqual((f.start, f.end), (2, 7))

    def test_trait_declarations_without_body_are_not_functions(self):
        res = self.crate({"lib.rs": textwrap.dedent("""\
            pub trait T {
                fn declared(&self) -> u8;
                fn declared_long(
                    &self,
                ) -> Vec<u8>;
                fn provided(&self) -> u8 {
                    1
                }
            }
            type F = fn(u8) -> u8;
            """)})
        self.assertEqual([f.name for _, f in res.funcs], ["T::provided"])

    def test_functions_in_test_modules_are_not_counted(self):
        tests = "#[cfg(test)]\nmod tests {\n" + fn_of(200) + "}\n"
        res = self.crate({"lib.rs": "pub fn f() {}\n" + tests})
        self.assertEqual([f.name for _, f in res.funcs], ["f"])
        self.assertEqual(res.violations(), [])


class Files(Base):
    def test_test_module_at_the_end_is_not_counted(self):
        code = "pub fn f() {}\n" * 700
        tests = "#[cfg(test)]\nmod tests {\n" + "    // test\n" * 300 + "}\n"
        res = self.crate({"lib.rs": code + tests})
        (shown, info), = res.files
        self.assertEqual((info.total_lines, info.code_lines), (1003, 700))
        self.assertEqual(res.violations(), [])

    def test_test_module_in_the_middle_is_subtracted(self):
        middle = "#[cfg(test)]\npub(crate) mod synth {\n    pub fn s() {}\n}\n"
        res = self.crate({"lib.rs": "pub fn f() {}\n" * 400 + middle + "pub fn g() {}\n" * 301})
        (shown, info), = res.files
        self.assertEqual(info.code_lines, 701)
        self.assertEqual(
            res.violations(), ["crates/demo/src/lib.rs: 701 lines of non-test code (limit 700)"]
        )

    def test_out_of_line_test_modules_and_generated_files_are_left_out(self):
        res = self.crate({
            "lib.rs": "pub mod gen;\n#[cfg(test)]\nmod tests;\n",
            "tests.rs": fn_of(300),
            "gen.rs": "// @generated by a tool\n" + fn_of(300),
        })
        self.assertEqual([s for s, _ in res.files], ["crates/demo/src/lib.rs"])
        self.assertEqual(res.violations(), [])

    def test_a_file_that_is_all_test_code_is_left_out(self):
        res = self.crate({
            "lib.rs": "pub mod helpers;\n",
            "helpers.rs": "//! Test helpers.\n#![allow(dead_code)]\n#![cfg(test)]\n" + fn_of(300),
        })
        self.assertEqual([s for s, _ in res.files], ["crates/demo/src/lib.rs"])
        self.assertEqual(res.violations(), [])


class CommandLine(Base):
    def run_main(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cl.main(["--root", str(self.ws.root), *argv])
        return code, out.getvalue(), err.getvalue()

    def setUp(self):
        super().setUp()
        self.crate({
            "lib.rs": "pub mod a;\npub mod b;\n" + fn_of(130, "big"),
            "a.rs": "use crate::b::X;\npub struct Y;\n",
            "b.rs": "use crate::a::Y;\npub struct X;\n",
        })
        self.crate({"lib.rs": "pub fn small() {}\n"}, name="clean")

    def test_violations_exit_1_with_one_line_each(self):
        code, out, err = self.run_main()
        self.assertEqual(code, 1)
        lines = err.splitlines()
        self.assertEqual(lines[0], "circle in crate demo: a.rs -> b.rs (line 1: use crate::b::X) "
                                   "-> a.rs (line 1: use crate::a::Y)")
        self.assertEqual(
            lines[1], "crates/demo/src/lib.rs:3: function big is 130 lines (limit 120)"
        )
        self.assertTrue(
            lines[2].startswith("check-layout: FAILED: 1 circle, 0 files over 700 lines, "
                                "1 function over 120 lines")
        )

    def test_limits_and_one_crate(self):
        self.assertEqual(self.run_main("--crate", "clean")[0], 0)
        code, out, err = self.run_main("--crate", "clean", "--max-fn", "0")
        self.assertEqual(code, 1)
        self.assertIn("function small is 1 lines (limit 0)", err)
        code, out, _ = self.run_main("--crate", "demo", "--max-fn", "130", "--max-file", "1000")
        self.assertEqual(code, 1)  # the circle is still there

    def test_an_unknown_crate_is_a_usage_error(self):
        with self.assertRaises(SystemExit) as e:
            self.run_main("--crate", "nope")
        self.assertEqual(e.exception.code, 2)

    def test_clean_tree_exits_0_with_one_line(self):
        code, out, err = self.run_main("--crate", "clean")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(len(out.splitlines()), 1)
        self.assertTrue(out.startswith("check-layout: ok: 0 circles"))

    def test_report_prints_everything_and_exits_0(self):
        code, out, err = self.run_main("--report")
        self.assertEqual(code, 0)
        self.assertIn("circle in crate demo: a.rs -> b.rs", out)
        self.assertIn("crates/demo/src/lib.rs:3  big  OVER", out)
        self.assertIn("crates/clean/src/lib.rs", out)


if __name__ == "__main__":
    unittest.main()
