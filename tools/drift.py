"""Print how this environment's packages differ from a pip-compile lock (used by `make test-latest`)."""

# Usage: python tools/drift.py lock-cpu.txt   (in the venv to compare; exit 0 whatever differs)

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{name: version} of the lock's `name==version` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    """{name: version} of this interpreter's distributions, less fedray and pip (not in the lock)."""
    found = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for tool in ("fedray", "pip"):
        found.pop(tool, None)
    return found


def drift(lock: dict[str, str], env: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, locked, installed) for each package whose version differs, is new or is gone."""
    rows = []
    for name in sorted(set(lock) | set(env)):
        locked, now = lock.get(name, "-"), env.get(name, "-")
        if locked != now:
            rows.append((name, locked, now))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("usage: python tools/drift.py LOCK_FILE", file=sys.stderr)
        return 2
    lock_path = Path(argv[0])
    rows = drift(read_lock(lock_path), installed())
    if not rows:
        print(f"drift: none; every package is at its {lock_path.name} version")
        return 0
    width = max(len(r[0]) for r in rows)
    print(f"drift from {lock_path.name}: {len(rows)} packages ('-' = not there)")
    print(f"  {'package':<{width}}  {'locked':<14} newest")
    for name, locked, now in rows:
        print(f"  {name:<{width}}  {locked:<14} {now}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
