"""tools/drift.py: the lock's pins read back, and the differences `make test-latest` prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("drift", ROOT / "tools" / "drift.py")
drift = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(drift)

LOCK = """\
# locked on 2026-12-02 by `make lock`
torch==2.13.0+cpu \\
    --hash=sha256:6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b
    # via
    #   -c constraints-cpu.txt
Jinja2==3.1.6 \\
    --hash=sha256:aaaa
typing_extensions==4.16.0 ; python_version < "3.12" \\
    --hash=sha256:bbbb
"""


def test_the_lock_reads_as_canonical_names_and_versions(tmp_path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(LOCK)
    assert drift.read_lock(lock) == {
        "torch": "2.13.0+cpu",
        "jinja2": "3.1.6",
        "typing-extensions": "4.16.0",
    }


def test_drift_lists_changed_new_and_gone_packages_only() -> None:
    lock = {"torch": "2.13.0+cpu", "transformers": "5.23.0", "gone": "1.0"}
    env = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "new-dep": "0.1"}
    assert drift.drift(lock, env) == [
        ("gone", "1.0", "-"),
        ("new-dep", "-", "0.1"),
        ("transformers", "5.23.0", "5.24.0"),
    ]


def test_the_committed_lock_pins_the_stack_each_with_a_hash() -> None:
    lines = (ROOT / "lock-cpu.txt").read_text().splitlines()
    pins = drift.read_lock(ROOT / "lock-cpu.txt")
    for name in ("torch", "transformers", "peft", "ray", "deepspeed", "wandb", "pytest", "ruff"):
        assert name in pins, name
    assert pins["torch"].endswith("+cpu")  # the CPU build, not the multi-GB CUDA one
    pinned = [i for i, line in enumerate(lines) if drift.PIN.match(line)]
    assert len(pinned) == len(pins)
    for i in pinned:  # `pip install --require-hashes` needs a hash on every pin
        assert lines[i + 1].strip().startswith("--hash=sha256:"), lines[i]
