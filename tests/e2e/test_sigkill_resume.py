"""`fedray run` killed by SIGKILL, then `fedray resume`: bit-for-bit the run that was never stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.checkpoint import load_checkpoint
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
# One client worker: startup is most of each run's time, and a second worker doubles it.
# FedAdam: the checkpoints carry the server optimizer's slots too, and resume must restore them.
OVERRIDES = tiny_overrides(
    **{
        "federation.rounds": 4,
        "federation.strategy": "fedadam",
        "checkpoint.every": 1,
        "ray.num_cpus": 2,
        "resources.num_workers": 1,
        "wandb.mode": "disabled",
    }
)
LAST = "round_00004"
TIMEOUT_S = 300.0


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env["RAY_AUTH_MODE"] = "disabled"
    env.pop("RAY_ADDRESS", None)  # each subprocess starts its own local Ray, never joins one
    return env


@dataclass
class Job:
    """One `fedray` subprocess in its own session (so its process group is its whole Ray)."""

    proc: subprocess.Popen
    log: Path

    def finish(self) -> str:
        try:
            self.proc.wait(timeout=TIMEOUT_S)
        finally:
            self.stop()
        text = self.log.read_text()
        assert self.proc.returncode == 0, text[-4000:]
        return text

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _start(args: list[str], log: Path) -> Job:
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedray", *args],
            cwd=ROOT,
            env=_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Job(proc, log)


def _proc_stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, ppid, start time, name) of a process, None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and brackets
    return rest[0], int(rest[1]), int(rest[19]), text[text.index("(") + 1 : text.rindex(")")]


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every process under `root`: (start time, name) by pid, found through parents."""
    stats = {int(d): _proc_stat(int(d)) for d in os.listdir("/proc") if d.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            st = stats[child]
            if st is not None and child not in found:
                found[child] = (st[2], st[3])
                todo.append(child)
    return found


def _alive(procs: dict[int, tuple[int, str]]) -> dict[int, str]:
    """Those of `procs` still running (same pid and start time, not a zombie)."""
    out = {}
    for pid, (start, name) in procs.items():
        st = _proc_stat(pid)
        if st is not None and st[2] == start and st[0] != "Z":
            out[pid] = name
    return out


@dataclass
class Killed:
    run_dir: Path
    rounds_at_kill: list[int]
    checkpoints_at_kill: list[str]
    tracked: list[str]  # names of the processes under the run when it was killed
    leaked: dict[int, str]


def _rounds(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)["round"])
        except json.JSONDecodeError:
            break  # a line the kill cut short
    return out


def _kill_after_checkpoint(job: Job, run_dir: Path, rnd: int) -> Killed:
    """SIGKILL the whole process group once round `rnd`'s checkpoint is complete on disk."""
    meta = run_dir / "checkpoints" / f"round_{rnd:05d}" / "meta.json"
    deadline = time.monotonic() + TIMEOUT_S
    while not meta.is_file():  # the folder is renamed into place whole, meta.json included
        assert job.proc.poll() is None, job.log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    ours = _descendants(job.proc.pid)
    os.killpg(job.proc.pid, signal.SIGKILL)
    job.proc.wait()
    # Ray may start workers in sessions of their own, out of killpg's reach: they must exit
    # by themselves once their raylet is gone.
    deadline = time.monotonic() + 30.0
    while _alive(ours) and time.monotonic() < deadline:
        time.sleep(0.2)
    leaked = _alive(ours)
    for pid in leaked:  # clean up what this test started, then fail on it
        os.kill(pid, signal.SIGKILL)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("round_*"))
    return Killed(run_dir, _rounds(run_dir), ckpts, sorted(n for _, n in ours.values()), leaked)


def _rows(path: Path, drop: str) -> list[dict]:
    """The JSON lines of `path`, without the keys that contain `drop`."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if drop not in k} for r in rows]


def _summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in ("wall_s", "startup_s")}


def _printed_rounds(log: str) -> list[int]:
    return [int(ln.split(":")[0].split()[1]) for ln in log.splitlines() if ln.startswith("round ")]


def _assert_same_run(run: Path, ref: Path) -> None:
    """Every number but wall-clock times, and the final global state byte for byte."""
    for name, clock in (("metrics.jsonl", "wall"), ("clients.jsonl", "cpu_s")):
        assert _rows(run / name, clock) == _rows(ref / name, clock), name
    assert _summary(run) == _summary(ref)
    blob, meta = load_checkpoint(run / "checkpoints" / LAST)
    ref_blob, ref_meta = load_checkpoint(ref / "checkpoints" / LAST)
    assert blob == ref_blob
    assert meta["ledger"] == ref_meta["ledger"] and meta["virtual_s"] == ref_meta["virtual_s"]


def _flip_tensor_byte(state: Path) -> None:
    """Corrupt one byte of tensor data, past the header: the file still parses as safetensors."""
    data = bytearray(state.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # u64 header length, then the JSON header
    data[(start + len(data)) // 2] ^= 0x5A
    state.write_bytes(bytes(data))


@dataclass
class Runs:
    reference: Path  # the run never stopped
    killed: Killed
    resume_killed: Job
    corrupted: Path  # a copy of the reference with its newest checkpoint corrupted
    checkpoints_before: list[str]
    resume_corrupted: Job


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four subprocesses overlapped two by two: each spends most of its time starting Ray."""
    root = tmp_path_factory.mktemp("sigkill")
    ref, killed, corrupted = root / "reference", root / "killed", root / "corrupted"
    jobs = [
        _start(["run", QUICKSTART, *OVERRIDES, "--out", str(d)], root / f"{d.name}.log")
        for d in (ref, killed)
    ]
    try:
        report = _kill_after_checkpoint(jobs[1], killed, 2)
        jobs.append(_start(["resume", str(killed)], root / "resume_killed.log"))
        jobs[0].finish()
        shutil.copytree(ref, corrupted)
        before = sorted(p.name for p in (corrupted / "checkpoints").iterdir())
        _flip_tensor_byte(corrupted / "checkpoints" / LAST / "state.safetensors")
        jobs.append(_start(["resume", str(corrupted)], root / "resume_corrupted.log"))
        yield Runs(ref, report, jobs[2], corrupted, before, jobs[3])
    finally:
        for job in jobs:
            job.stop()


def test_resume_after_sigkill_is_bit_for_bit(runs: Runs) -> None:
    killed = runs.killed
    # The leak check watched the run's own Ray (raylet, client worker), and none of it outlived it.
    assert "raylet" in killed.tracked and "ray::ClientWork" in killed.tracked, killed.tracked
    assert not killed.leaked, f"Ray processes outlived the killed run: {killed.leaked}"
    # Killed mid-run (no summary yet), with round 2's checkpoint (at least) on disk.
    assert not (killed.run_dir / "summary.json").exists()
    assert killed.rounds_at_kill[:2] == [1, 2]
    assert "round_00002" in killed.checkpoints_at_kill
    newest = int(killed.checkpoints_at_kill[-1].removeprefix("round_"))
    text = runs.resume_killed.finish()
    # It went on from its newest checkpoint (not from scratch), redoing any round cut short.
    assert _printed_rounds(text) == list(range(newest + 1, 5))
    _assert_same_run(killed.run_dir, runs.reference)


def test_corrupted_newest_checkpoint_is_refused_and_the_previous_used(runs: Runs) -> None:
    assert runs.checkpoints_before == ["round_00003", LAST]
    text = runs.resume_corrupted.finish()
    refused = [ln for ln in text.splitlines() if "skipping checkpoint" in ln]
    assert len(refused) == 1, text[-4000:]
    assert f"{LAST}/state.safetensors" in refused[0] and "corrupted" in refused[0]
    assert _printed_rounds(text) == [4]  # round 3's checkpoint used: only round 4 is redone
    _assert_same_run(runs.corrupted, runs.reference)
