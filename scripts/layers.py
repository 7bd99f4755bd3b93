#!/usr/bin/env python3
"""The server crate's module graph, and the checks that keep its layers one-way.

Reads every `src/**/*.rs` file, collects the modules it refers to through
`crate::` and `super::` paths (in `use` trees and inline), and prints one line
per module: `module -> dependencies`. Then it checks, and exits 1 on any failure:

- no import cycle between files;
- layers point down only: leaves (config, metrics, predlog, telemetry) <- core
  <- api (front doors) <- server (lifecycle) <- the crate root and main;
- no file under src/core mentions axum, hyper or the http crate;
- no source file is longer than MAX_LINES.

Usage: scripts/layers.py [--root DIR] [--quiet]   (DIR: the repository, default .)
"""

import argparse
import re
import sys
from pathlib import Path

MAX_LINES = 600
LEAVES = {"config", "metrics", "predlog", "ratelimit", "telemetry"}
RANK = {"core": 1, "api": 2, "listen": 3, "server": 3, "main": 4, "crate": 4}
# Words that may not appear in the core: the web framework and its HTTP crates.
# Matched as identifiers in code (paths, imports), not in prose: "HTTP" in a
# doc comment is fine, `http::StatusCode` is not.
FORBIDDEN_IN_CORE = re.compile(r"\b(axum|hyper|http)\s*::|\b(?:use|extern crate)\s+(axum|hyper|http)\b")


def module_of(src: Path, f: Path) -> str:
    """`src/api/v2/infer.rs` -> `api::v2::infer`; mod.rs is its directory."""
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], []):
        return "crate"
    return "::".join(parts)


def strip_test_modules(text: str) -> str:
    """Drops `#[cfg(test)] mod name { ... }` blocks: the graph is of the code
    that ships, and a test module's `super` is not its file's parent."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def strip_comments(text: str) -> str:
    """Drops comments and the contents of string and char literals (SQL, JSON,
    URLs, messages), keeping code."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) and re.match(r'r#*"', text[i : i + 8]):
            opener = re.match(r'r(#*)"', text[i : i + 8])
            end = '"' + opener.group(1)
            j = text.find(end, i + len(opener.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\[^']{1,10}|[^'\\])'", text[i : i + 14]):
            i += len(re.match(r"'(\\[^']{1,10}|[^'\\])'", text[i : i + 14]).group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand(tree: str) -> list[str]:
    """Expands a use tree `a::{b, c::{d, e}}` into its paths."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    out, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    if cur:
        out.append(cur)
    return [p for part in out for p in expand(prefix + part)]


def resolve(path: str, here: str, modules: set[str]) -> str | None:
    """The module a `crate::`/`super::`/`self::` path points into."""
    parts = path.split("::")
    if parts[0] == "crate":
        base: list[str] = []
        parts = parts[1:]
    elif parts[0] in ("super", "self"):
        base = [] if here == "crate" else here.split("::")
        if parts[0] == "self":
            parts = parts[1:]
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
    else:
        return None
    full = base + [p for p in parts if p not in ("*", "self")]
    for n in range(len(full), 0, -1):
        cand = "::".join(full[:n])
        if cand in modules:
            return cand
    return "crate" if not full or full == [""] else None


def layer(module: str) -> str:
    return module.split("::")[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=".")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    src = Path(args.root) / "src"
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(src, f) for f in files}

    graph: dict[str, set[str]] = {m: set() for m in modules}
    problems: list[str] = []

    for f in files:
        here = module_of(src, f)
        raw = f.read_text()
        text = strip_test_modules(strip_comments(raw))
        # A `#[path = "x_tests.rs"] mod tests;` file is test code, like the above.
        if f.stem.endswith("_tests"):
            text = ""
        # Paths from the crate root, the parent, and this module's own children
        # (`use error::ApiError;` in a mod.rs names its child `error`).
        children = {m.rsplit("::", 1)[-1] for m in modules if m.startswith(here + "::") and m.count("::") == here.count("::") + 1}
        if here == "crate":
            children = {m for m in modules if "::" not in m}
        paths = []
        for m in re.finditer(r"\buse\s+([a-z_][\w:]*::[^;]+);", text):
            paths += expand(m.group(1))
        paths += re.findall(r"(?<![\w:])[a-z_]\w*(?:::\w+)+", text)
        paths = [p if p.split("::")[0] in ("crate", "super", "self") or p.split("::")[0] not in children
                 else "self::" + p for p in paths]
        for p in paths:
            p = re.sub(r"\bas\s*\w+$", "", p.replace(" ", "")).rstrip(":")
            target = resolve(p, here, modules)
            if target and target != here:
                graph[here].add(target)
        lines = raw.count("\n")
        if lines > MAX_LINES:
            problems.append(f"{f}: {lines} lines (limit {MAX_LINES})")
        if here.split("::")[0] == "core":
            for n, line in enumerate(strip_comments(raw).splitlines(), 1):
                if FORBIDDEN_IN_CORE.search(line):
                    problems.append(f"{f}:{n}: the core mentions a web crate: {line.strip()}")

    # Layering: an edge may not point to a higher layer.
    def rank(m: str) -> int:
        top = layer(m)
        return 0 if top in LEAVES else RANK.get(top, 4)

    for a, deps in graph.items():
        for b in deps:
            if rank(b) > rank(a):
                problems.append(f"layering: {a} ({layer(a)}) depends on {b} ({layer(b)}), a higher layer")
            if layer(a) in LEAVES and layer(b) not in LEAVES:
                problems.append(f"layering: leaf {a} depends on {b}")

    # Cycles between files (Tarjan's strongly connected components).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    for comp in sccs:
        problems.append(f"import cycle between {len(comp)} modules: {', '.join(comp)}")

    if not args.quiet:
        for m in sorted(graph, key=lambda m: (rank(m), m)):
            deps = ", ".join(sorted(graph[m])) or "-"
            print(f"{m} -> {deps}")
        print(f"\n{len(graph)} modules, {sum(len(d) for d in graph.values())} edges, {len(sccs)} cycles")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if not problems:
        print("layers: one-way, no cycles, core free of web crates, every file within "
              f"{MAX_LINES} lines")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
