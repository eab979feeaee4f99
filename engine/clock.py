"""Device profiles (configs/devices/*.yaml) and the virtual clock that turns FLOPs and bytes into seconds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import yaml
from pydantic import Field

from engine.errors import ConfigError
from engine.strict import DuplicateKeyError, load_yaml

DEVICES_DIR = Path(__file__).resolve().parents[1] / "configs" / "devices"
_KEY = "resources.device_profile"


class DeviceProfile(pydantic.BaseModel, extra="forbid", frozen=True):
    """What a simulated client device can do: compute, memory, network and availability."""

    name: str
    flops_per_s: float = Field(gt=0)  # sustained training throughput, FLOP/s
    memory_mb: int = Field(gt=0)  # RAM available to training, MiB (2**20 bytes)
    uplink_mbps: float = Field(gt=0)  # megabits (1e6 bits) per second
    downlink_mbps: float = Field(gt=0)
    latency_ms: float = Field(default=0.0, ge=0)  # one way, per message
    availability: float = Field(default=1.0, gt=0, le=1)  # probability of showing up in a round
    num_cpus: float = Field(default=1.0, gt=0)  # Ray CPUs of a worker emulating it
    num_gpus: float = Field(default=0.0, ge=0)  # Ray GPUs (a fraction shares one) of such a worker

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 2**20


def list_device_profiles() -> list[str]:
    """Names of the profiles shipped in configs/devices."""
    return sorted(p.stem for p in DEVICES_DIR.glob("*.yaml"))


def _describe(err: Mapping[str, Any]) -> str:
    ctx = err.get("ctx", {})
    kind = err["type"]
    if kind == "greater_than":
        return f"must be > {ctx['gt']}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        known = ", ".join(DeviceProfile.model_fields)
        return f"unknown field (known: {known})"
    return str(err["msg"])


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        if not path.is_file():
            raise ConfigError(_KEY, f"no such device profile file: {name_or_path}")
        return path
    if name_or_path in list_device_profiles():
        return DEVICES_DIR / f"{name_or_path}.yaml"
    known = ", ".join(list_device_profiles())
    raise ConfigError(
        _KEY,
        f"unknown device profile {name_or_path!r}; use one of {known} or a path to a YAML file",
    )


def load_device_profile(name_or_path: str) -> DeviceProfile:
    """A shipped profile by name (configs/devices/<name>.yaml) or any profile YAML by path."""
    path = _resolve(name_or_path)
    try:
        raw = load_yaml(path.read_text())
    except DuplicateKeyError as e:
        raise ConfigError(_KEY, f"{path} {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(_KEY, f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(_KEY, f"{path} must hold a mapping of profile fields")
    raw.setdefault("name", path.stem)
    try:
        return DeviceProfile.model_validate(raw)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{_KEY}.{field}", f"{_describe(err)} (in {path})") from None


def client_time_s(
    profile: DeviceProfile, *, flops: float, bytes_down: int, bytes_up: int, messages: int = 2
) -> dict[str, float]:
    """Virtual seconds one client spends in a round: download, compute, upload and message latency."""
    download_s = bytes_down * 8 / (profile.downlink_mbps * 1e6)
    compute_s = flops / profile.flops_per_s
    upload_s = bytes_up * 8 / (profile.uplink_mbps * 1e6)
    latency_s = messages * profile.latency_ms / 1000
    return {
        "download_s": download_s,
        "compute_s": compute_s,
        "upload_s": upload_s,
        "latency_s": latency_s,
        "total_s": download_s + compute_s + upload_s + latency_s,
    }


def round_time_s(client_times: Mapping[int, float]) -> tuple[float, int]:
    """Synchronous FL waits for its slowest client: (round time, straggler id); ties -> smallest id."""
    if not client_times:
        raise ValueError("round_time_s needs at least one client time")
    straggler = min(client_times, key=lambda cid: (-client_times[cid], cid))
    return float(client_times[straggler]), straggler


def assign_profiles(
    mix: Mapping[str, float] | None, default: str, num_clients: int, seed: int
) -> list[DeviceProfile]:
    """Each client's device: `mix` shares turned into counts (largest remainder), seeded shuffle.

    With no mix every client gets `default`. Counts are exact: shares 0.5/0.3/0.2 of 10 clients
    give 5/3/2 devices whatever the seed; the seed only decides which client gets which.
    """
    if not mix:
        return [load_device_profile(default)] * num_clients
    names = list(mix)
    profiles = {}
    for name in names:
        try:
            profiles[name] = load_device_profile(name)
        except ConfigError as exc:
            raise ConfigError(f"devices.mix.{name}", exc.message) from None
    shares = np.array([mix[n] for n in names], dtype=np.float64)
    exact = shares / shares.sum() * num_clients
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: num_clients - counts.sum()]:
        counts[i] += 1
    slots = [n for n, c in zip(names, counts, strict=True) for _ in range(c)]
    order = np.random.default_rng([seed, DEVICE_STREAM]).permutation(num_clients)
    return [profiles[slots[i]] for i in order]


DEVICE_STREAM = 7  # seed stream of the device assignment
