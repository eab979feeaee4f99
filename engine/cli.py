"""The `fedray` command line: run, resume (tune and report arrive with their issues)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from engine.errors import ConfigError, FedRayRuntimeError

USAGE_EXIT = 2
RUNTIME_EXIT = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own contract)
        print(f"error: {message} (see fedray --help)", file=sys.stderr)
        raise SystemExit(USAGE_EXIT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fedray",
        description="Ray-native simulation of federated fine-tuning of pretrained models.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run an experiment config", description="Run CONFIG.")
    run.add_argument("config", metavar="CONFIG", help="YAML experiment config")
    run.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    run.add_argument("--out", help="run directory (default: runs/<name>-<N>)")
    run.add_argument("--address", help="Ray cluster address (overrides ray.address)")
    res = sub.add_parser("resume", help="continue a run from its last checkpoint")
    res.add_argument("run_dir", metavar="RUN_DIR")
    res.add_argument("--address", help="Ray cluster address (overrides ray.address)")
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
    try:
        from engine.config import load_config
        from engine.runner import resume_run, start_run

        if args.command == "run":
            cfg = load_config(args.config, args.overrides)
            start_run(cfg, out=args.out, address=args.address)
        elif args.command == "resume":
            resume_run(args.run_dir, address=args.address)
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    except FedRayRuntimeError as exc:
        print(
            f"error: {exc} (the run directory can be resumed with fedray resume)", file=sys.stderr
        )
        return RUNTIME_EXIT
    except KeyboardInterrupt:
        print("interrupted: resume with fedray resume RUN_DIR", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - show what broke, keep the exit contract
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return RUNTIME_EXIT


if __name__ == "__main__":
    sys.exit(main())
