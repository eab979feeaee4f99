"""The versions of fedray and of the stack a run used (summary.json, `fedray --version`)."""

from __future__ import annotations

import platform
from importlib import metadata

# The packages whose releases change fedray's numbers or break it; recorded in every summary.json.
STACK = ("torch", "transformers", "peft", "ray", "deepspeed")


def package_version(name: str) -> str:
    """The installed distribution's version, or "not installed"; reads metadata, imports nothing."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def stack_versions() -> dict[str, str]:
    """{"fedray": ..., "python": ..., "torch": ..., ...} of this process's environment."""
    return {
        "fedray": package_version("fedray"),
        "python": platform.python_version(),
        **{name: package_version(name) for name in STACK},
    }


def version_line() -> str:
    """`fedray 0.1.0 (python 3.11.7; torch 2.13.0+cpu, transformers 5.24.0, ...)`."""
    v = stack_versions()
    stack = ", ".join(f"{name} {v[name]}" for name in STACK)
    return f"fedray {v['fedray']} (python {v['python']}; {stack})"
