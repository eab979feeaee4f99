"""The versions a run records: read from the installed distributions, the same as the imported modules."""

from __future__ import annotations

import platform

import peft
import pytest
import torch
import transformers

from engine import versions
from fedray.cli import main


def test_stack_versions_are_the_imported_modules_versions() -> None:
    v = versions.stack_versions()
    assert list(v) == ["fedray", "python", *versions.STACK]
    assert v["torch"] == torch.__version__
    assert v["transformers"] == transformers.__version__
    assert v["peft"] == peft.__version__
    assert v["python"] == platform.python_version()
    assert v["fedray"] != "not installed"  # the project itself is installed (editable)


def test_a_missing_package_reads_not_installed() -> None:
    assert versions.package_version("no-such-distribution-fedray") == "not installed"


def test_fedray_version_prints_one_line_and_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["--version"])
    assert ended.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    v = versions.stack_versions()
    assert lines == [
        f"fedray {v['fedray']} (python {v['python']}; torch {v['torch']}, "
        f"transformers {v['transformers']}, peft {v['peft']}, ray {v['ray']}, "
        f"deepspeed {v['deepspeed']})"
    ]
