"""Config fuzzing: hundreds of seeded, truly invalid configs each stop `fedray run` with exit 2 and one line."""

from __future__ import annotations

import copy
import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

import engine.runner
from engine.config import RunConfig, parse_value
from engine.methods import get_method
from fedray.cli import main

ROOT = Path(__file__).resolve().parents[2]
BASES = [
    "configs/quickstart.yaml",
    "configs/fedpetuning/centralized_lora.yaml",
    "configs/fedpetuning/table.yaml",
    "configs/sfprompt/amazon_reviews.yaml",
    "configs/sfprompt/fashion_mnist.yaml",
    "configs/fedpt/austen.yaml",
]
SEED = 20250611
QUOTA = 30  # distinct cases per generated kind
KINDS = (
    "wrong_type",  # str for int, list for dict, dict for str, bool for float ...
    "null",  # null where the schema has no None
    "negative",  # -1 / 0 below a field's lower bound
    "huge",  # 1e30 / 2**63 above an upper bound (or past any int)
    "nonfinite",  # .inf / .nan for a float
    "unknown_enum",  # a value outside a Literal (incl. algorithm and method.name)
    "unknown_key",  # at the top level, in every section, in data.partition and method
    "missing_required",  # method without name, dirichlet without alpha
    "malformed_yaml",  # brackets, tabs, bare scalar documents, empty and binary files ...
    "bad_override",  # key=value on the command line that cannot be applied
    "unknown_name",  # schema-valid names that prepare() rejects (loads inputs: few, ~1 s each)
)


@dataclass(frozen=True)
class Case:
    kind: str
    desc: str  # shown when the case fails
    text: bytes  # the config file
    overrides: tuple[str, ...] = ()


# ------------------------------------------------------------------------------ schema lookups


def _accepts(annotation: Any) -> set[str]:
    """What a field's annotation takes: int, float, str, bool, none, literal, list, dict, model."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_accepts(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {"literal"}
    if origin in (list, dict):
        return {origin.__name__}
    if annotation is type(None):
        return {"none"}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"model"}
    return {annotation.__name__}


def _section_model(path: tuple[str, ...], raw: dict) -> type[BaseModel]:
    """The pydantic model of the section at `path` (method: the base config's method)."""
    if path == ("method",):
        return get_method(raw.get("method", {}).get("name", "lora")).params_type
    model: type[BaseModel] = RunConfig
    for part in path:
        model = model.model_fields[part].annotation
    return model


SECTIONS = [(), ("data", "partition"), ("method",)] + [
    (name,) for name, f in RunConfig.model_fields.items() if "model" in _accepts(f.annotation)
]


def _leaves(raw: dict) -> list[tuple[tuple[str, ...], Any, bool]]:
    """(path, FieldInfo, in a fedray section) of every non-section field."""
    out = []
    for sec in SECTIONS:
        model = _section_model(sec, raw)
        for name, field in model.model_fields.items():
            acc = _accepts(field.annotation)
            if "model" not in acc and not (sec == () and name == "method"):
                out.append(((*sec, name), field, sec != ("method",)))
    return out


def _bound(field: Any, kind: type) -> float | None:
    return next(
        (getattr(m, kind.__name__.lower()) for m in field.metadata if isinstance(m, kind)), None
    )


def _below(field: Any) -> list[Any]:
    """Values under the field's lower bound."""
    ge, gt = _bound(field, Ge), _bound(field, Gt)
    return [v for v in (-1, 0) if (ge is not None and v < ge) or (gt is not None and v <= gt)]


def _above(field: Any, acc: set[str]) -> list[Any]:
    """Values over the field's upper bound; 1e30 is no int (pydantic stops at 64 bits)."""
    if _bound(field, Le) is not None or _bound(field, Lt) is not None:
        return [1e30, 2**63]
    return [1e30] if "int" in acc and "float" not in acc else []


# ------------------------------------------------------------------------------ generation


def _bogus(rng: np.random.Generator) -> str:
    return "bogus_" + "".join(
        rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(2, 7))
    )


def _wrong_types(acc: set[str], in_section: bool) -> list[Any]:
    bad: list[Any] = []
    if "dict" not in acc:
        bad.append({"x": 1})
    if "list" not in acc:
        bad.append([1, 2])
    if acc & {"int", "float"} and not acc & {"str", "literal"}:
        bad.append("twelve")
    if not acc & {"int", "float"}:
        bad.append(3.5)
    if "bool" in acc and len(acc) == 1:
        bad += ["maybe", 7]
    elif "bool" not in acc and (in_section or not acc & {"int", "float"}):
        bad.append(True)  # method params (not a fedray section) still read true as 1
    return bad


def _leaf_values(kind: str, path, field, in_section: bool, rng) -> list[Any]:
    acc = _accepts(field.annotation)
    if kind == "wrong_type":
        return _wrong_types(acc, in_section)
    if kind == "null":
        return [] if "none" in acc else [None]
    if kind == "negative" and acc & {"int", "float"}:
        return _below(field) + ([0, -1] if path == ("resources", "num_workers") else [])
    if kind == "huge" and acc & {"int", "float"}:
        return _above(field, acc)
    if kind == "nonfinite" and "float" in acc and (in_section or path[-1] == "lr"):
        return [float("inf"), float("-inf"), float("nan")]
    if kind == "unknown_enum" and "literal" in acc:
        return [_bogus(rng)]
    return []


def _override_text(value: Any) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        text = ".nan" if np.isnan(value) else (".inf" if value > 0 else "-.inf")
    elif value is None or isinstance(value, bool):
        text = yaml.safe_dump(value).split("\n")[0]
    elif isinstance(value, (int, float, str)):
        text = repr(value) if isinstance(value, float) else str(value)
    else:
        text = yaml.safe_dump(value, default_flow_style=True).strip()
    back = parse_value(text)
    assert back == value or (back != back and value != value), (text, value)  # round trip
    return text


def _set(raw: dict, path: tuple[str, ...], value: Any) -> dict:
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return raw


def _deliver(kind, base, raw, path, value, rng) -> Case:
    """Put `value` at `path` in the file, or (a third of the time) as a key=value override."""
    key = ".".join(str(p) for p in path)
    if rng.random() < 1 / 3:
        ov = f"{key}={_override_text(value)}"
        return Case(kind, f"{base} + override {ov!r}", _dump(raw), (ov,))
    return Case(kind, f"{base} with {key}: {value!r}", _dump(_set(raw, path, value)))


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: ~10x faster


def _dump(raw: Any) -> bytes:
    return yaml.dump(raw, Dumper=_DUMPER, sort_keys=False, allow_unicode=True).encode()


@functools.cache
def _base(base: str) -> tuple[str, dict]:
    text = (ROOT / base).read_text()
    return text, yaml.safe_load(text)


def _raw(base: str) -> dict:
    return copy.deepcopy(_base(base)[1])


def _leaf_candidates(kind: str, rng: np.random.Generator) -> list[tuple[str, tuple, Any]]:
    """Every (base, path, value) of a field-value kind (an unknown enum: a fresh bogus word)."""
    out = []
    for base in BASES:
        raw = _base(base)[1]
        for path, field, in_section in _leaves(raw):
            out += [(base, path, v) for v in _leaf_values(kind, path, field, in_section, rng)]
        for sec in SECTIONS[1:]:  # whole sections of the wrong container type, or null
            if kind == "wrong_type":
                out += [(base, sec, v) for v in ([1, 2], "lora", 3, True)]
            if kind == "null":
                out.append((base, sec, None))
    return out


WEIRD_KEYS = ["", " ", "a b", "x\ny", "ключ", "1", 1, None, True]


def _unknown_key_case(base, raw, rng) -> Case:
    """A typo of a real key, a made-up word or a weird key, at a random level."""
    sec = SECTIONS[rng.integers(len(SECTIONS))]
    fields = sorted(_section_model(sec, raw).model_fields)
    real = fields[rng.integers(len(fields))]
    typos = [real + "s", real[:-1], real.upper(), real + "_", real.replace("_", "-")]
    key = [typos[rng.integers(len(typos))], _bogus(rng), WEIRD_KEYS[rng.integers(len(WEIRD_KEYS))]][
        rng.integers(3)
    ]
    if key in fields:
        key = _bogus(rng)
    if isinstance(key, str) and key.strip() and not set(key) & set("\n.="):  # fits key=value
        return _deliver("unknown_key", base, raw, (*sec, key), 1, rng)
    where = ".".join(sec) or "top level"
    return Case("unknown_key", f"{base} {where} key {key!r}", _dump(_set(raw, (*sec, key), 1)))


def _missing_case(base, raw, rng) -> Case | None:
    part = raw.get("data", {}).get("partition", {})
    choice = rng.integers(3)
    if choice == 0 and "method" in raw:
        raw["method"].pop("name")
        return Case("missing_required", f"{base} without method.name", _dump(raw))
    if choice == 0:
        return _deliver("missing_required", base, raw, ("method",), {"r": 4}, rng)
    if choice == 1 and part.get("kind") == "dirichlet":
        part.pop("alpha")
        return Case("missing_required", f"{base} dirichlet without alpha", _dump(raw))
    if choice == 1:
        return _deliver(
            "missing_required", base, raw, ("data", "partition", "kind"), "dirichlet", rng
        )
    if part.get("kind") == "dirichlet":
        ov = "data.partition.alpha=null"
        return Case("missing_required", f"{base} + {ov}", _dump(raw), (ov,))
    return Case("missing_required", f"{base} with method: {{}}", _dump({**raw, "method": {}}))


def _malformed_case(base, text: str, rng) -> Case:
    lines = text.splitlines()
    values = [i for i, s in enumerate(lines) if ": " in s and not s.lstrip().startswith("#")]
    indented = [i for i in values if lines[i].startswith(" ")]
    i, j = values[rng.integers(len(values))], indented[rng.integers(len(indented))]
    key, _, val = lines[i].partition(": ")
    variants = {
        "unbalanced [": (i, f"{key}: [{val}"),
        "unbalanced {": (i, f"{key}: {{{val}"),
        "tab indent": (j, "\t" + lines[j].lstrip(" ")),
        "value: value": (i, f"{key}: {val.split('#')[0].rstrip()}: x"),
        "undefined alias": (i, f"{key}: *nowhere"),
        "bad !!int": (i, f"{key}: !!int twelve"),
        "impossible date": (i, f"{key}: 2024-13-45"),
        "python tag": (i, f"{key}: !!python/object:os.system {{}}"),
        "control char": (i, f"{key}: a\x01b"),
    }
    name = sorted(variants)[rng.integers(len(variants))]
    at, line = variants[name]
    new = "\n".join([*lines[:at], line, *lines[at + 1 :]]) + "\n"
    return Case("malformed_yaml", f"{base} line {at + 1} {name}: {line!r}", new.encode())


WHOLE_FILE = {
    "empty file": b"",
    "blank file": b"\n\n",
    "only a comment": b"# nothing here\n",
    "empty document": b"---\n",
    "bare int": b"42\n",
    "bare string": b"quickstart\n",
    "bare float": b"3.5\n",
    "bare false": b"false\n",
    "bare zero": b"0\n",
    "list document": b"- name: x\n- seed: 1\n",
    "flow list": b"[1, 2]\n",
    "two documents": b"name: a\n---\nname: b\n",
    "deep nesting": b"x: " + b"[" * 600 + b"]" * 600 + b"\n",
    "utf-16": "name: x\n".encode("utf-16"),
    "latin-1": "name: caf\xe9\n".encode("latin-1"),
    "png header": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "nul bytes": b"name: a\x00b\n",
}


def _text_case(base, text, rng) -> Case:
    if rng.random() < 0.4:
        name = sorted(WHOLE_FILE)[rng.integers(len(WHOLE_FILE))]
        return Case("malformed_yaml", name, WHOLE_FILE[name])
    if rng.random() < 0.2:
        return Case(
            "malformed_yaml", "binary garbage", b"\xff\xfe" + rng.bytes(int(rng.integers(8, 200)))
        )
    return _malformed_case(base, text, rng)


BAD_OVERRIDES = [
    ["federation.rounds"],  # no '='
    ["name.sub=1"],  # into a value
    ["model.name.x=1"],
    ["model=3", "model.name=x"],
    ["nosuchsection.x=1"],
    ["federation.typo=3"],
    ["=3"],
    ["a..b=1"],
    ["name\nx=1"],
    ["model.name=[unclosed"],
    ["train.lr={a: [}"],
    ["seed=!!int abc"],
    ["name=2024-13-45"],
    ["name=!!python/object:os.system {}"],
    ["federation.rounds=" + "[" * 600],
    ["data.partition=iid"],
    ["method=lora"],
    ["method.name=nope"],
    ["algorithm=fedsgd"],
    ["federation.clients_per_round=1000"],
    ["train.lr=yes"],
    ["eval.every=on"],
]


def _semantic_cases() -> list[Case]:
    """Schema-valid configs that prepare() rejects: it loads the model config / data (slow)."""
    qs, sf = "configs/quickstart.yaml", "configs/sfprompt/amazon_reviews.yaml"
    rows = [
        (qs, ["data.name=bogus_dataset"]),
        (qs, ["model.name=/no/such/model"]),
        (qs, ["data.name=/no/such/file.csv"]),
        (sf, ["split.head_layers=5", "split.tail_layers=5"]),
    ]
    return [
        Case("unknown_name", f"{b} + {ov}", (ROOT / b).read_bytes(), tuple(ov)) for b, ov in rows
    ]


def _one(kind: str, base: str, rng: np.random.Generator) -> Case | None:
    text, raw = _base(base)[0], _raw(base)
    if kind == "unknown_key":
        return _unknown_key_case(base, raw, rng)
    if kind == "missing_required":
        return _missing_case(base, raw, rng)
    if kind == "malformed_yaml":
        return _text_case(base, text, rng)
    ov = BAD_OVERRIDES[rng.integers(len(BAD_OVERRIDES))]
    return Case(kind, f"{base} + overrides {ov!r}", text.encode(), tuple(ov))


def _kind_cases(kind: str, rng: np.random.Generator) -> typing.Iterator[Case | None]:
    if kind == "unknown_name":
        yield from _semantic_cases()
    elif kind in {"unknown_key", "missing_required", "malformed_yaml", "bad_override"}:
        for _ in range(QUOTA * 20):
            yield _one(kind, BASES[rng.integers(len(BASES))], rng)
    else:  # field values: a random sample of every possible one
        cands = _leaf_candidates(kind, rng)
        for i in rng.permutation(len(cands)):
            base, path, value = cands[i]
            yield _deliver(kind, base, _raw(base), path, value, rng)


def generate_cases(seed: int = SEED) -> list[Case]:
    """Up to QUOTA distinct corruptions per kind (same bytes + overrides = one case), seeded."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[bytes, tuple[str, ...]]] = set()
    cases: list[Case] = []
    for kind in KINDS:
        made = 0
        for case in _kind_cases(kind, rng):
            if case is not None and (case.text, case.overrides) not in seen:
                seen.add((case.text, case.overrides))
                cases.append(case)
                made += 1
                if made == QUOTA:
                    break
    return cases


@functools.cache
def _cases() -> tuple[Case, ...]:
    return tuple(generate_cases())


# ------------------------------------------------------------------------------ tests


def test_the_corpus_is_large_distinct_deterministic_and_covers_every_kind() -> None:
    cases = _cases()
    assert len(cases) >= 200
    assert len({(c.text, c.overrides) for c in cases}) == len(cases)
    counts = {k: sum(c.kind == k for c in cases) for k in KINDS}
    assert all(counts[k] >= 10 for k in KINDS if k != "unknown_name"), counts
    assert counts["unknown_name"] >= 1, counts
    assert tuple(generate_cases()) == cases  # same seed, same corpus
    assert generate_cases(SEED + 1) != list(cases)
    assert sum(bool(c.overrides) for c in cases) >= 30  # the command line is fuzzed too


class _WouldStart(Exception):
    """Raised instead of running: the config got past every check."""


def _check(case: Case, i: int, tmp: Path, capsys) -> list[str]:
    path, out = tmp / f"c{i}.yaml", tmp / f"out_{i}"
    path.write_bytes(case.text)
    ray_before = ray.is_initialized()
    try:
        code: Any = main(["run", str(path), *case.overrides, "--out", str(out)])
    except SystemExit as exc:  # argparse's exit: main() must return, not exit
        code = f"SystemExit({exc.code})"
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    problems = []
    if code != 2:
        problems.append(f"exit {code}")
    if len(lines) != 1 or not lines[0].startswith("error: ") or not lines[0][7:].strip():
        problems.append(f"stderr is not one 'error: ' line: {cap.err[-600:]!r}")
    if "Traceback" in cap.out + cap.err:
        problems.append("traceback printed")
    if out.exists():
        problems.append("--out folder created")
    if not ray_before and ray.is_initialized():
        problems.append("Ray started")
    return problems


def test_every_corrupted_config_exits_2_with_one_error_line(tmp_path, capsys, monkeypatch) -> None:
    # A config that slips through would start a real run: fail fast instead of training.
    def would_start(*args: Any, **kwargs: Any) -> None:
        raise _WouldStart("the corrupted config was accepted and the run would start")

    monkeypatch.setattr(engine.runner, "_execute", would_start)
    failures = []
    for i, case in enumerate(_cases()):
        problems = _check(case, i, tmp_path, capsys)
        if problems:
            failures.append(f"#{i} [{case.kind}] {case.desc}: {'; '.join(problems)}")
    assert not failures, f"{len(failures)} of {len(_cases())} corruptions:\n" + "\n".join(failures)


REGRESSIONS = [  # (file, overrides, expected in the line): bugs this fuzzer found
    (b"- 1\n- 2\n", ["name=x"], "error: CONFIG: "),  # was TypeError in apply_overrides
    (b"\xff\xfe\x00", [], "is not UTF-8 text"),  # was UnicodeDecodeError
    (b"name: 2024-13-45\n", [], "is not valid YAML"),  # was ValueError from the YAML constructor
    (b"x: " + b"[" * 600 + b"]" * 600, [], "is not valid YAML"),  # was RecursionError
    (b"", [], "is empty"),  # was a run with every default
    (b"0\n", [], "must be a mapping"),  # was a run with every default
    (b"seed: -1\n", [], "error: seed: "),  # was numpy's ValueError in prepare
    (b"train: {lr: .inf}\n", [], "error: train.lr: "),  # started a run
    (b"train: {lr: true}\n", [], "error: train.lr: expected a number"),  # started with lr=1.0
    (b"resources: {num_workers: true}\n", [], "error: resources.num_workers: "),
    (b"name: x\n", ["model.name=[unclosed"], "error: model.name: "),  # was yaml ParserError
    (b'"x\\ny": 1\n', [], "error: x\\ny: unknown key"),  # was two stderr lines
    # YAML keeps the last of a repeated key: a silently ignored setting
    (b"train:\n  lr: 0.1\n  lr: 0.2\n", [], "line 3: key 'lr' is given twice; keep one"),
    (b"name: x\n", ["train={lr: 1, lr: 2}"], "key 'lr' is given twice"),
    (b"method: {name: lora, r: true}\n", [], "error: method.r: expected a number"),  # ran r=1
    (b"method: {name: lora, alpha: .inf}\n", [], "error: method.alpha: "),  # ran alpha=inf
    # counts that size an allocation, checked against what they size (were MemoryError /
    # allocator RuntimeError tracebacks, or a misleading "not supported")
    (b"federation: {num_clients: 1000000000000}\n", [], "federation.num_clients: 1000000000000 "),
    (b"method: {name: lora, r: 1000000000}\n", [], "error: method.r: lora adds 9,216,000,"),
    (b"method: {name: adapter, dim: 1000000000}\n", [], "error: method.dim: adapter adds"),
    (
        b"method: {name: prompt, num_virtual_tokens: 1000000000}\n",
        [],
        "error: method.num_virtual_tokens: 1000000000 soft prompt tokens leave no position",
    ),
    (
        b"method: {name: prefix, num_virtual_tokens: 1000000000}\n",
        [],
        "error: method.num_virtual_tokens: a prefix of 1000000000 tokens",
    ),
    (b"model: {max_length: 600}\n", [], "error: model.max_length: 600 positions exceed the 512"),
    # strategies: parameters out of range, keys the strategy does not read, what it cannot join
    (b"federation: {strategy: fedprox}\nstrategy: {mu: -0.1}\n", [], "error: strategy.mu: "),
    (b"federation: {strategy: fedadam}\n", ["strategy.server_lr=0"], "error: strategy.server_lr: "),
    (b"federation: {strategy: fedyogi}\n", ["strategy.beta1=1"], "error: strategy.beta1: "),
    (b"federation: {strategy: fedadam}\n", ["strategy.beta2=-0.5"], "error: strategy.beta2: "),
    (b"strategy: {tau: 0.1}\n", [], "error: strategy.tau: fedavg does not use it"),
    (b"federation: {strategy: fedsgd}\n", [], "error: federation.strategy: unknown 'fedsgd'"),
    (
        b"federation: {strategy: scaffold}\nprivacy: {dp: true}\n",
        [],
        "error: federation.strategy: scaffold does not compose with privacy.dp",
    ),
]


@pytest.mark.parametrize(("text", "overrides", "expected"), REGRESSIONS)
def test_fixed_corruptions_name_their_key(text, overrides, expected, tmp_path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(text)
    assert main(["run", str(path), *overrides, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
