"""Memory readings of the current process (Linux /proc), shared by the benchmarks."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def peak_mb() -> float:
    """Peak RSS of this process since it started (getrusage)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    """Current resident set size of this process."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> None:
    """Restart the kernel's peak-RSS count (VmHWM) of this process from its current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def hwm_mb() -> float:
    """Peak RSS since the last `reset_peak` (since the start, if none)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")
