#!/usr/bin/env python3
"""The docs check: what the README and the book say must hold.

Two parts:

- links (`--links`, no server needed): every relative link in the README, the
  changelog, the book (`docs/`) and `bench/README.md` points at a file that
  exists, and every `#anchor` at a heading of that file; every chapter under
  `docs/` is listed in `docs/SUMMARY.md`, and every entry there exists;
- commands (the default: links, then commands): every fenced `sh` and
  `python` block is run against a live inferd started here on free loopback
  ports (`localhost:8080` and `:8081` in a block mean its HTTP and gRPC
  ports), from the repository root, with `target/release` first on the PATH.
  A block must exit 0; when a `json` block follows it, the output must be JSON
  of the same shape (the same keys, recursively, and the same types: values
  such as scores and cache flags may differ). A block that cannot run here
  says so, with the reason, in an HTML comment on the line before it:
  `<!-- not run: needs a Docker engine -->`. A block that talks to the
  repository API runs against a server of its own (it unloads models).

Usage: check_docs.py [--links] [--only FILE...]
Needs INFERD_BIN (default target/release/inferd) and, for `python` blocks,
DOCS_PYTHON: an interpreter with tritonclient and numpy (the conformance venv).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
RUNNABLE = {"sh", "bash", "python"}
BLOCK_TIMEOUT_S = 120


def doc_files():
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "bench/README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if f.exists()]


def slug(heading):
    """A heading's anchor as GitHub and mdBook make it."""
    s = heading.strip().lower()
    s = re.sub(r"`", "", s)
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def outside_fences(text):
    """The lines of `text` that are not inside fenced code blocks."""
    out, fenced = [], False
    for line in text.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return out


def anchors(path):
    lines = outside_fences(path.read_text())
    return {slug(l.lstrip("#")) for l in lines if re.match(r"^#{1,6} ", l)}


def check_links(files):
    errors = []
    for f in files:
        for n, line in enumerate(outside_fences(f.read_text()), 1):
            # Inline code is not a link.
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                dest = (f.parent / path).resolve() if path else f
                where = f"{f.relative_to(ROOT)}:{n}"
                if not dest.exists():
                    errors.append(f"{where}: {target}: no such file")
                    continue
                if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    errors.append(f"{where}: {target}: no heading `#{anchor}` in {dest.name}")
    summary = ROOT / "docs/SUMMARY.md"
    listed = {(summary.parent / t).resolve() for t in LINK.findall(summary.read_text())}
    for chapter in (ROOT / "docs").rglob("*.md"):
        if chapter != summary and chapter.resolve() not in listed:
            errors.append(f"docs/SUMMARY.md: does not list {chapter.relative_to(ROOT)}")
    return errors


def blocks(path):
    """(line, language, code, expected JSON or None, reason not run or None)."""
    lines = path.read_text().split("\n")
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(2):
            i += 1
            continue
        lang, start = m.group(2), i
        j = i + 1
        while j < len(lines) and not FENCE.match(lines[j]):
            j += 1
        code = "\n".join(lines[i + 1 : j])
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        reason = NOT_RUN.match(lines[k]).group(1) if k >= 0 and NOT_RUN.match(lines[k]) else None
        expected = None
        nxt = FENCE.match(lines[j + 1]) if j + 1 < len(lines) else None
        if nxt and nxt.group(2) == "json":
            e = j + 2
            while e < len(lines) and not FENCE.match(lines[e]):
                e += 1
            expected = "\n".join(lines[j + 2 : e])
        out.append((start + 1, lang, code, expected, reason))
        i = j + 1
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An inferd on free loopback ports with the embedded defaults."""

    def __init__(self, extra_args=(), env=None):
        self.http, self.grpc = free_port(), free_port()
        self.dir = tempfile.mkdtemp(prefix="inferd-docs-")
        binary = os.environ.get("INFERD_BIN", str(ROOT / "target/release/inferd"))
        args = [binary, "serve", "--listen", f"127.0.0.1:{self.http}",
                "--grpc-listen", f"127.0.0.1:{self.grpc}",
                "--predlog-path", f"{self.dir}/predictions.jsonl",
                "--predlog-spill-path", f"{self.dir}/spill.jsonl", *extra_args]
        self.log = open(f"{self.dir}/server.log", "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"inferd exited at start: see {self.dir}/server.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("inferd did not become ready within 120 s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def same_shape(want, got, path="$"):
    """Differences in keys and types between two JSON values."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: expected an object"]
        diffs = []
        if set(want) != set(got):
            diffs.append(f"{path}: keys {sorted(got)} where the docs show {sorted(want)}")
        for k in set(want) & set(got):
            diffs += same_shape(want[k], got[k], f"{path}.{k}")
        return diffs
    if isinstance(want, list):
        if not isinstance(got, list):
            return [f"{path}: expected an array"]
        return [d for w, g in zip(want, got) for d in same_shape(w, g, f"{path}[]")][:5]
    number = (int, float)
    if isinstance(want, number) and isinstance(got, number) and not isinstance(got, bool):
        return []
    if type(want) is not type(got):
        return [f"{path}: {type(got).__name__} where the docs show {type(want).__name__}"]
    return []


def run_block(lang, code, server, env):
    code = code.replace("localhost:8080", f"127.0.0.1:{server.http}")
    code = code.replace("127.0.0.1:8080", f"127.0.0.1:{server.http}")
    code = code.replace("localhost:8081", f"127.0.0.1:{server.grpc}")
    if lang == "python":
        python = os.environ.get("DOCS_PYTHON")
        if not python:
            return 1, "", "DOCS_PYTHON is not set: no interpreter with tritonclient"
        cmd = [python, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           timeout=BLOCK_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as e:
        # What it printed so far says where it was stuck (a build, a server).
        so_far = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return 124, "", f"{so_far}\nstill running after {BLOCK_TIMEOUT_S} s"
    return p.returncode, p.stdout, p.stderr


def check_commands(files):
    errors, ran, skipped = [], 0, []
    env = {**os.environ, "PATH": f"{ROOT / 'target/release'}:{os.environ.get('PATH', '')}"}
    pending = []
    for f in files:
        for line, lang, code, expected, reason in blocks(f):
            if lang not in RUNNABLE:
                continue
            where = f"{f.relative_to(ROOT)}:{line}"
            if reason:
                skipped.append((where, reason))
            else:
                pending.append((where, lang, code, expected))
    shared = [b for b in pending if "/repository/" not in b[2]]
    own = [b for b in pending if "/repository/" in b[2]]
    admin = "docs-admin-key"
    for group, args in ((shared, ()), *(([b], ("--admin-keys", admin)) for b in own)):
        if not group:
            continue
        server = Server(args)
        try:
            for where, lang, code, expected in group:
                started = time.monotonic()
                rc, out, err = run_block(lang, code, server, {**env, "INFERD_ADMIN_KEY": admin})
                ran += 1
                took = time.monotonic() - started
                if rc != 0:
                    errors.append(f"{where}: exit {rc} ({took:.1f} s)\n{err.strip()[-2000:]}")
                    continue
                if expected is not None:
                    try:
                        got = json.loads(out)
                    except ValueError:
                        errors.append(f"{where}: the docs show JSON but it printed:\n{out[:500]}")
                        continue
                    diffs = same_shape(json.loads(expected), got)
                    if diffs:
                        errors.append(f"{where}: output differs from the docs: " + "; ".join(diffs))
                print(f"ran   {where} ({took:.1f} s)")
        finally:
            server.stop()
    for where, reason in skipped:
        print(f"not run {where}: {reason}")
    print(f"{ran} blocks run, {len(skipped)} marked not runnable")
    return errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--links", action="store_true", help="links only (no server)")
    ap.add_argument("--only", nargs="*", help="check these files only")
    a = ap.parse_args()
    files = [Path(p).resolve() for p in a.only] if a.only else doc_files()
    errors = check_links(doc_files())
    if not a.links and not errors:
        errors += check_commands(files)
    for e in errors:
        print(f"FAIL {e}")
    if errors:
        sys.exit(1)
    print("docs: links and anchors resolve" + ("" if a.links else "; every runnable command ran"))


if __name__ == "__main__":
    main()
