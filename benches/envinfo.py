"""The environment line printed beside every benchmark table."""

from __future__ import annotations

import importlib
import os
import platform


def environment() -> str:
    """CPU, cores, Python and the versions of the libraries the figures
    depend on, and whether modeltap is a release build."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores", f"Python {platform.python_version()}"]
    for name in ("numpy", "pandas", "pyarrow", "polars", "modeltap"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        parts.append(f"{name} {getattr(mod, '__version__', '?')}")
    try:
        from modeltap import _core

        parts[-1] += f" ({'debug' if _core.DEBUG_BUILD else 'release'} build)"
    except ImportError:
        pass
    return "Environment: " + "; ".join(parts)
