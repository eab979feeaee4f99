"""Tests for engine/clock.py: device profiles, their validation, client and round virtual times."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.clock import (
    DEVICES_DIR,
    DeviceProfile,
    client_time_s,
    list_device_profiles,
    load_device_profile,
    round_time_s,
)
from engine.errors import ConfigError

PROFILE = DeviceProfile(
    name="t",
    flops_per_s=1e9,
    memory_mb=1024,
    uplink_mbps=8,
    downlink_mbps=16,
    latency_ms=50,
)


def test_client_time_by_hand() -> None:
    # 2 MB down at 16 Mbit/s = 1 s; 1 MB up at 8 Mbit/s = 1 s; 3e9 FLOPs at 1 GFLOP/s = 3 s;
    # 2 messages x 50 ms = 0.1 s
    t = client_time_s(PROFILE, flops=3e9, bytes_down=2_000_000, bytes_up=1_000_000)
    assert t == pytest.approx(
        {"download_s": 1.0, "compute_s": 3.0, "upload_s": 1.0, "latency_s": 0.1, "total_s": 5.1}
    )
    t4 = client_time_s(PROFILE, flops=0, bytes_down=0, bytes_up=0, messages=4)
    assert t4["total_s"] == pytest.approx(0.2)


def test_round_time_is_the_straggler() -> None:
    assert round_time_s({0: 1.0, 5: 3.5, 2: 2.0}) == (3.5, 5)
    assert round_time_s({7: 2.0, 3: 2.0, 4: 1.0}) == (2.0, 3)  # tie -> smallest id
    with pytest.raises(ValueError):
        round_time_s({})


def test_every_shipped_profile_loads() -> None:
    names = list_device_profiles()
    assert {"laptop", "phone-low", "phone-mid", "raspberry-pi-4", "jetson-nano"} <= set(names)
    for name in names:
        path = DEVICES_DIR / f"{name}.yaml"
        assert path.read_text().startswith("# use with: fedray run ")
        profile = load_device_profile(name)
        assert profile.name == name
        assert load_device_profile(str(path)) == profile
    laptop = load_device_profile("laptop")
    assert laptop.flops_per_s == 5e10 and laptop.memory_bytes == 8192 * 2**20


def _write(tmp_path: Path, body: str) -> str:
    path = tmp_path / "dev.yaml"
    path.write_text(body)
    return str(path)


GOOD = "flops_per_s: 1.0e+9\nmemory_mb: 512\nuplink_mbps: 1\ndownlink_mbps: 2\n"


def test_profile_from_path_defaults(tmp_path: Path) -> None:
    profile = load_device_profile(_write(tmp_path, GOOD))
    assert profile.name == "dev"  # the file stem when the file names none
    assert (profile.latency_ms, profile.availability, profile.num_cpus) == (0.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("flops_per_s: 0\n", "resources.device_profile.flops_per_s", "must be > 0"),
        ("latency_ms: -1\n", "resources.device_profile.latency_ms", "must be >= 0"),
        ("availability: 1.5\n", "resources.device_profile.availability", "must be <= 1"),
        ("memory_gb: 4\n", "resources.device_profile.memory_gb", "unknown field"),
        ("uplink_mbps: fast\n", "resources.device_profile.uplink_mbps", "number"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, extra: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        field = extra.split(":")[0]
        kept = "".join(ln for ln in GOOD.splitlines(keepends=True) if not ln.startswith(field))
        load_device_profile(_write(tmp_path, kept + extra))
    assert info.value.key == key
    assert message in info.value.message


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_device_profile(_write(tmp_path, GOOD + "flops_per_s: 1.0\n"))
    assert info.value.key == "resources.device_profile"
    assert f"line {GOOD.count(chr(10)) + 1}: key 'flops_per_s' is given twice" in info.value.message


def test_missing_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_device_profile(_write(tmp_path, "flops_per_s: 1.0e+9\n"))
    assert info.value.key == "resources.device_profile.memory_mb"
    assert "required" in info.value.message


def test_unknown_profile_and_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_device_profile("toaster")
    assert info.value.key == "resources.device_profile"
    assert "unknown device profile 'toaster'" in info.value.message
    assert "laptop" in info.value.message and "path to a YAML file" in info.value.message
    with pytest.raises(ConfigError, match="no such device profile file"):
        load_device_profile("nowhere/dev.yaml")
