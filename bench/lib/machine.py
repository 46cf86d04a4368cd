"""Facts about the machine a benchmark ran on, for the report's "Machine" lines."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def codec_line() -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "runtime", "--version"], check=False, capture_output=True, text=True
    )
    return (completed.stdout or completed.stderr).strip().replace("\n", "; ")


def source_revision() -> str:
    """The checked-out commit, read from .git without running git (and '+ changes' is not known)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:12] + f" ({ref.removeprefix('refs/heads/')})"
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12] + f" ({ref.removeprefix('refs/heads/')})"
    except OSError:
        pass
    return "unknown"


def machine_lines(perf_analyzer: Path, threads: int) -> list[str]:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    completed = subprocess.run([str(perf_analyzer), "--version"], check=False, capture_output=True, text=True)
    version = (completed.stdout + completed.stderr).strip()
    return [
        f"- CPU: {cpu_model()}, {cores} logical cores ({usable} usable by this process), {memory_gib()} RAM",
        f"- OS: {platform.platform()}",
        (
            f"- Python {platform.python_version()}, onnxruntime {ort.__version__} "
            f"(providers: {', '.join(ort.get_available_providers())}), {version or 'perf_analyzer ?'}"
        ),
        f"- model-runtime: {codec_line()}; source {source_revision()}",
        f"- ONNX Runtime intra-op threads: {threads} everywhere (server, naive server, in-process)",
        (
            "- Nothing pinned: perf_analyzer, the server's event loop and its ONNX Runtime thread share "
            f"all {usable} cores, so client CPU time is taken from the server."
        ),
    ]


def busy_warning(load_before: str) -> list[str]:
    """A warning line when something else was already using the cores as the run began."""
    try:
        one_minute = float(load_before.split()[0])
    except (ValueError, IndexError):
        return []
    if one_minute < 0.5:
        return []
    return [
        (
            f"- **Warning:** the 1-minute load average was {one_minute:.2f} before the run started: other work "
            "shared the cores, so these figures are noisy. Re-run on an idle machine."
        )
    ]


def proc_status(pid: int, key: str) -> int | None:
    """A number from /proc/<pid>/status (the first field after `key:`), or None if it has no such line."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return None
