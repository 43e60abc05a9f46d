#!/usr/bin/env python3
"""Checks two rules of Petrel's tree that the compiler does not:

1. No import cycle between modules: within each crate, between sibling modules (the files of
   one directory, and the top-level modules of the crate), a module that uses another (through
   `crate::...` or `super::...` paths) must not be used back by it, directly or around a loop.
   A module using its own parent's items is not a cycle (that is how Rust nests modules).
2. No `unsafe` outside crates/sandbox, the one crate allowed it: every other crate forbids it
   (the workspace lint), and no other file may so much as allow it.

    scripts/check-tree.py [ROOT]     # prints what breaks a rule; exits 1 if anything does

It reads the sources as text (paths in `use` lines and in code), which is enough for a tree
written the way this one is; run by scripts/test.sh before the tests.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else __file__).resolve()
ROOT = ROOT if len(sys.argv) > 1 else ROOT.parent.parent
UNSAFE_CRATE = "sandbox"


def module_of(src: pathlib.Path, f: pathlib.Path) -> tuple:
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def paths_used(text: str, here: tuple) -> list:
    """Module paths (as tuples) this file's code names, resolved to absolute ones."""
    out = []
    code = strip_comments(text)
    # `crate::{a, b::c}` and `super::{a, b}`: one path per item of the group.
    for m in re.finditer(r"\b(crate|super)::\{([^}]*)\}", code):
        base = () if m.group(1) == "crate" else here[:-1]
        for item in m.group(2).split(","):
            item = item.strip()
            if item and item != "self":
                out.append(base + tuple(item.split("::")[0:1]))
    for m in re.finditer(r"\b(crate::|(?:super::)+)((?:[a-z_][a-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)", code):
        head, rest = m.group(1), m.group(2).split("::")
        if head == "crate::":
            base = ()
        else:
            ups = head.count("super")
            base = here[: len(here) - ups] if ups <= len(here) else ()
        out.append(base + tuple(rest))
    return out


def resolve(path: tuple, modules: set) -> tuple:
    """The longest prefix of `path` that is a module of the crate."""
    for n in range(len(path), -1, -1):
        if path[:n] in modules:
            return path[:n]
    return ()


def find_cycles(graph: dict) -> list:
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    return cycles


def check_cycles() -> list:
    problems = []
    for crate in sorted((ROOT / "crates").iterdir()):
        src = crate / "src"
        if not src.is_dir():
            continue
        files = {module_of(src, f): f for f in src.rglob("*.rs")}
        modules = set(files)
        # sibling graphs: parent module -> {child -> {child it uses}}
        graphs: dict = {}
        for mod, f in files.items():
            for p in paths_used(f.read_text(), mod):
                target = resolve(p, modules)
                common = 0
                while common < min(len(mod), len(target)) and mod[common] == target[common]:
                    common += 1
                if common == len(target) or common == len(mod):
                    continue  # the module itself, an ancestor, or a descendant
                parent = mod[:common]
                a, b = mod[common], target[common]
                graphs.setdefault(parent, {}).setdefault(a, set()).add(b)
        for parent, graph in sorted(graphs.items()):
            for c in find_cycles(graph):
                where = "::".join(parent) or "the crate root"
                problems.append(
                    f"crates/{crate.name}: an import cycle among the modules of {where}: "
                    + " -> ".join(c)
                )
    return problems


def check_unsafe() -> list:
    problems = []
    pattern = re.compile(r"\bunsafe\s*(\{|fn\b|impl\b|extern\b)|allow\(unsafe_code\)")
    for f in sorted((ROOT / "crates").rglob("*.rs")):
        rel = f.relative_to(ROOT)
        if rel.parts[1] == UNSAFE_CRATE or "target" in rel.parts:
            continue
        for n, line in enumerate(strip_comments(f.read_text()).splitlines(), 1):
            if pattern.search(line):
                problems.append(f"{rel}:{n}: unsafe code outside crates/{UNSAFE_CRATE}: {line.strip()}")
    for toml in sorted((ROOT / "crates").glob("*/Cargo.toml")):
        crate = toml.parent.name
        text = toml.read_text()
        if crate != UNSAFE_CRATE and "[lints]\nworkspace = true" not in text:
            problems.append(f"crates/{crate}/Cargo.toml: does not take the workspace's lints (which forbid unsafe code)")
    root = (ROOT / "Cargo.toml").read_text()
    if 'unsafe_code = "forbid"' not in root:
        problems.append("Cargo.toml: the workspace's lints must forbid unsafe_code")
    return problems


def main() -> int:
    problems = check_cycles() + check_unsafe()
    for p in problems:
        print(p)
    if problems:
        return 1
    print("check-tree: no import cycle; no unsafe code outside crates/sandbox")
    return 0


if __name__ == "__main__":
    sys.exit(main())
