"""Shared helpers for the deployment checks: where things are, and running tools
that must exist (a missing tool fails the test; nothing here is skipped)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """The path of a command-line tool: the venv's own first (k6, hadolint,
    yamllint, kubernetes-validate), then PATH and /usr/sbin (nginx)."""
    for candidate in (VENV_BIN / name, shutil.which(name), Path("/usr/sbin") / name):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"`{name}` is not installed: scripts/test.sh installs it")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    """Runs a command and fails the test with its output when it exits non-zero."""
    kw.setdefault("cwd", ROOT)
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def inferd_bin() -> Path:
    b = Path(os.environ.get("INFERD_BIN", ROOT / "target/release/inferd"))
    if not b.is_file():
        pytest.fail(f"no inferd binary at {b}: cargo build --release")
    return b


# Where each layer defines the metrics it registers into the server's one
# registry (the span exporter's process-wide counters included).
METRIC_SOURCES = (
    "crates/inferd-core/src/metrics.rs",
    "crates/inferd-core/src/quality/score.rs",
    "crates/inferd-api/src/state.rs",
    "crates/inferd-predlog/src/metrics.rs",
    "crates/inferd-telemetry/src/trace.rs",
    "src/listen.rs",
)


def exported_metrics() -> set[str]:
    """Metric families the server defines, the names dashboards and alerts
    may use."""
    src = "".join((ROOT / f).read_text() for f in METRIC_SOURCES)
    return set(re.findall(r'"(inferd_[a-z0-9_]+)"', src))


def family(name: str) -> str:
    """`inferd_x_bucket` -> `inferd_x`: histogram series belong to one family."""
    return re.sub(r"_(bucket|sum|count)$", "", name)
