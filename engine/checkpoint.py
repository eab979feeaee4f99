"""Checkpoints: safetensors + JSON (no pickle), written atomically, verified by checksum on load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from engine.ledger import deserialize_state, serialize_state

STATE_FILE = "state.safetensors"
META_FILE = "meta.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    ckpt_dir: Path, round: int, state_blob: bytes, meta: dict[str, Any], keep: int
) -> Path:
    """Write checkpoints/round_NNNNN/ atomically (a folder renamed into place) and prune old ones."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"round_{round:05d}"
    tmp = ckpt_dir / f".round_{round:05d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    atomic_write(tmp / STATE_FILE, state_blob)
    meta = {**meta, "round": round, "state_sha256": hashlib.sha256(state_blob).hexdigest()}
    atomic_write(tmp / META_FILE, json.dumps(meta, indent=1, sort_keys=True))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("round_*") if p.is_dir())


def load_checkpoint(path: Path) -> tuple[bytes, dict[str, Any]]:
    """Read one checkpoint; raises ValueError if it is incomplete or its checksum does not match."""
    meta_path, state_path = path / META_FILE, path / STATE_FILE
    if not meta_path.is_file() or not state_path.is_file():
        raise ValueError(f"{path} is incomplete")
    meta = json.loads(meta_path.read_text())
    if _sha256(state_path) != meta.get("state_sha256"):
        raise ValueError(f"{path / STATE_FILE} does not match its checksum (corrupted)")
    return state_path.read_bytes(), meta


def latest_good_checkpoint(ckpt_dir: Path) -> tuple[Path, bytes, dict[str, Any]] | None:
    """The newest checkpoint that verifies; corrupted ones are skipped with a warning."""
    import warnings

    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            blob, meta = load_checkpoint(path)
        except (ValueError, json.JSONDecodeError) as exc:
            warnings.warn(f"skipping checkpoint: {exc}", stacklevel=2)
            continue
        return path, blob, meta
    return None


# ---------------------------------------------------------------- a server's state in a checkpoint

SERVER_PREFIX = "server/"  # checkpoint keys of a server's own state (never sent to clients)


def merge_state(client_blob: bytes, server_blob: bytes | None) -> bytes:
    """One checkpoint payload: the clients' global state plus the server's own state, if any
    (SFPrompt's trained body, FedPT's memory of the clients' updates)."""
    if not server_blob:
        return client_blob
    body = {SERVER_PREFIX + k: v for k, v in deserialize_state(server_blob).items()}
    return serialize_state({**deserialize_state(client_blob), **body})


def split_state(blob: bytes) -> tuple[bytes, bytes | None]:
    """Inverse of `merge_state`: (client global state, server state or None)."""
    state = deserialize_state(blob)
    body = {k[len(SERVER_PREFIX) :]: v for k, v in state.items() if k.startswith(SERVER_PREFIX)}
    if not body:
        return blob, None
    client = {k: v for k, v in state.items() if not k.startswith(SERVER_PREFIX)}
    return serialize_state(client), serialize_state(body)


def add_tensors(blob: bytes, extra: dict[str, Any]) -> bytes:
    """A checkpoint payload with `extra` tensors (already prefixed, e.g. the strategy's slots)."""
    if not extra:
        return blob
    return serialize_state({**deserialize_state(blob), **extra})


def take_prefixed(blob: bytes, prefix: str) -> tuple[bytes, dict[str, Any]]:
    """Inverse of `add_tensors` for one prefix: (the payload without them, the tensors taken)."""
    state = deserialize_state(blob)
    taken = {k: v for k, v in state.items() if k.startswith(prefix)}
    if not taken:
        return blob, {}
    return serialize_state({k: v for k, v in state.items() if k not in taken}), taken
