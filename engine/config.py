"""The run config: a typed pydantic schema, YAML loading and dotted `key=value` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from engine.errors import ConfigError
from engine.methods import get_method, method_params_union
from engine.strategies import resolve
from engine.strict import DuplicateKeyError, StrictModel, load_yaml


class _Section(StrictModel):
    """A config section: unknown keys, inf/nan and booleans as numbers are errors."""


class ModelConfig(_Section):
    # An embedded name (all-minilm-l6-v2), a tiny random builder (tiny-bert-random), a hub name or a local path.
    name: str = "all-minilm-l6-v2"
    task: Literal["classification", "causal_lm"] = "classification"
    max_length: int = Field(128, ge=8, le=8192)
    # Sentence representation of encoder classifiers: auto = what the checkpoint declares
    # (mean for sentence encoders such as all-MiniLM), cls = BERT's [CLS] pooler.
    pooling: Literal["auto", "cls", "mean"] = "auto"


class PartitionConfig(_Section):
    kind: Literal["iid", "dirichlet", "natural"] = "iid"
    alpha: float | None = Field(None, gt=0)  # Dirichlet concentration; required for kind=dirichlet


class DataConfig(_Section):
    # An embedded name (amazon_reviews, fortunes, austen), a local .csv/.jsonl/.parquet path, or hf:<name>[:<config>].
    name: str = "amazon_reviews"
    text_key: str = "text"
    label_key: str | None = "label"
    group_key: str | None = None  # column of the natural split (category, book)
    train_split: str = "train"
    test_split: str = "test"
    max_train_samples: int | None = Field(None, ge=1)
    max_test_samples: int | None = Field(None, ge=1)
    # Share of the training rows held out (seeded) before the clients' split: no client trains on
    # them; eval.split: validation evaluates on them (what a sweep tunes on, never the test split).
    validation_fraction: float = Field(0.0, ge=0, le=0.5)
    partition: PartitionConfig = PartitionConfig()

    @model_validator(mode="after")
    def _alpha_for_dirichlet(self) -> DataConfig:
        if self.partition.kind == "dirichlet" and self.partition.alpha is None:
            raise ValueError("partition.alpha: dirichlet needs alpha > 0 (e.g. 1.0)")
        return self


class FederationConfig(_Section):
    num_clients: int = Field(10, ge=1)
    clients_per_round: int = Field(5, ge=1)
    rounds: int = Field(5, ge=1)
    aggregation: Literal["weighted", "unweighted"] = "weighted"
    # Synchronous rounds with a deadline in virtual seconds: a client whose download + compute +
    # upload would end later is dropped (the server stops waiting at the deadline). null: no deadline.
    round_deadline_s: float | None = Field(None, gt=0)
    # What a client too slow for the deadline does: `drop` (it trains fully, arrives late, is
    # dropped) or `partial` (it runs only the local steps that fit before the deadline and its
    # partial update is aggregated; a client that fits no step is dropped).
    deadline_policy: Literal["drop", "partial"] = "drop"
    # Sample ceil(clients_per_round * oversample) clients and aggregate the first clients_per_round
    # reports (by virtual finish time) that arrive: absorbs unavailable, failed and late clients.
    oversample: float = Field(1.0, ge=1.0, le=10.0)
    # How a round's clients are drawn: `fixed` = exactly clients_per_round distinct clients;
    # `poisson` = each client independently with probability clients_per_round / num_clients (a
    # varying number, possibly none): the sampling privacy accountants assume (privacy.dp).
    sampling: Literal["fixed", "poisson"] = "fixed"
    # The federated optimization strategy (engine/strategies/): fedavg, fedprox, fedavgm, fedadam,
    # fedyogi, fedadagrad; its parameters are in the `strategy` section.
    strategy: str = "fedavg"

    @model_validator(mode="after")
    def _fits(self) -> FederationConfig:
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round: {self.clients_per_round} > federation.num_clients "
                f"({self.num_clients}); lower it or add clients"
            )
        if self.sampling == "poisson" and self.oversample != 1.0:
            raise ValueError(
                "oversample: over-sampling draws a fixed number of clients; with "
                "federation.sampling: poisson leave it at 1"
            )
        if self.deadline_policy == "partial" and self.round_deadline_s is None:
            raise ValueError(
                "deadline_policy: partial needs federation.round_deadline_s; set a deadline "
                "or use drop"
            )
        return self


class TrainConfig(_Section):
    local_epochs: int = Field(1, ge=1)
    local_steps: int | None = Field(None, ge=1)  # when set, overrides local_epochs
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float | None = Field(None, gt=0)  # None: the method's default learning rate
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    group_by_length: bool = True
    # Autocast precision of client training and evaluation; weights, gradients and the uploaded
    # state stay fp32. auto: bf16 on a worker whose GPU supports it, fp32 on a CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


class StrategyConfig(_Section):
    """federation.strategy's parameters; null = that strategy's default. A key the chosen strategy
    does not use is an error (docs/config.md lists which strategy reads which key)."""

    server_lr: float | None = Field(None, gt=0)  # fedavgm, fedadam, fedyogi, fedadagrad
    momentum: float | None = Field(None, ge=0, lt=1)  # fedavgm's server momentum
    beta1: float | None = Field(None, ge=0, lt=1)  # fedadam, fedyogi, fedadagrad
    beta2: float | None = Field(None, ge=0, lt=1)  # fedadam, fedyogi
    tau: float | None = Field(None, gt=0)  # adaptivity: fedadam, fedyogi, fedadagrad
    mu: float | None = Field(None, ge=0)  # fedprox's proximal weight


class EvalConfig(_Section):
    every: int = Field(
        1, ge=1
    )  # evaluate the global model every N rounds (and always after the last)
    batch_size: int = Field(64, ge=1)
    # test: the data set's test split; validation: the rows data.validation_fraction holds out.
    split: Literal["test", "validation"] = "test"
    # Model selection. last: the final evaluation is the result. validation: every evaluation
    # also scores the held-out rows (data.validation_fraction) as val/*, and summary.json's
    # `selected` holds the test metrics at the round whose validation score was best.
    select: Literal["last", "validation"] = "last"


class ResourcesConfig(_Section):
    num_workers: int | Literal["auto"] = "auto"
    # A client worker's Ray request. null: its device profile's num_cpus / num_gpus (a worker group
    # per distinct request, actors/groups.py); a value gives every device that request.
    client_num_cpus: float | None = Field(None, gt=0)
    client_memory_mb: int | None = Field(None, ge=1)
    # auto: on a cluster with GPUs, as many workers per GPU as one client step's measured memory
    # allows (actors/gpu_share.py); on a CPU-only cluster (and in sweeps) the profile's num_gpus.
    client_num_gpus: Annotated[float, Field(ge=0)] | Literal["auto"] | None = "auto"
    device_profile: str = "laptop"
    task_timeout_s: float = Field(900.0, gt=0)
    torch_threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _workers(self) -> ResourcesConfig:
        if isinstance(self.num_workers, int) and self.num_workers < 1:
            raise ValueError("num_workers: must be >= 1 or 'auto'")
        return self


class DevicesConfig(_Section):
    """A heterogeneous population: device profiles assigned to clients by proportion (seeded)."""

    # profile name (configs/devices) or YAML path -> share of the clients; null: every client is
    # resources.device_profile. Shares are normalised; each client's profile is in partition.json.
    mix: dict[str, Annotated[float, Field(gt=0)]] | None = None
    # A device's memory budget (profile memory_mb) is enforced: a client whose training peak
    # exceeds it fails with the reason recorded (clients/failed), as an out-of-memory app would.
    enforce_memory: bool = True
    # Each sampled client shows up with its profile's availability probability (seeded).
    use_availability: bool = True
    # Workers also ask Ray for their device's memory_mb (resources.client_memory_mb wins when set).
    reserve_memory: bool = False


class FaultsConfig(_Section):
    """Fault injection for testing a setup (off by default); every draw is seeded."""

    client_kill_prob: float = Field(0.0, ge=0, le=1)  # a client task kills its worker process
    client_delay_prob: float = Field(0.0, ge=0, le=1)  # a client task first sleeps client_delay_s
    client_delay_s: float = Field(0.0, ge=0)  # wall seconds (the virtual clock is not affected)
    server_kill_round: int | None = Field(
        None, ge=1
    )  # the server actor dies mid-request this round
    # A client task whose worker died: retried this many times on the replaced worker (the same
    # seed, so the result is what it would have been), then counted in clients/failed.
    client_retries: int = Field(1, ge=0, le=5)


class PrivacyConfig(_Section):
    """Client-level DP for FedAvg (DP-FedAvg): clip each client's update, add Gaussian noise."""

    dp: bool = False
    clip_norm: float = Field(1.0, gt=0)  # L2 norm bound of one client's update (all tensors)
    noise_multiplier: float = Field(1.0, ge=0)  # noise std = noise_multiplier * clip_norm / m
    delta: float = Field(1e-5, gt=0, lt=1)  # the delta of the reported (epsilon, delta)


class RayConfig(_Section):
    address: str | None = None  # None: start a local Ray; "auto" or host:port: connect to a cluster
    num_cpus: int | None = Field(None, ge=1)  # local Ray only
    dashboard: bool = False


class CheckpointConfig(_Section):
    every: int = Field(1, ge=1)
    keep: int = Field(2, ge=1)


class WandbConfig(_Section):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "fedray"
    entity: str | None = None
    log_artifact: bool = True


class SplitConfig(_Section):
    """SFPrompt's cut and what the client trains (algorithm: sfprompt)."""

    head_layers: int = Field(0, ge=0)  # blocks after the embeddings kept on the client
    tail_layers: int = Field(
        0, ge=0
    )  # last blocks kept on the client (before norm/pooler/classifier)
    prompt_length: int = Field(10, ge=0, le=4096)
    train_head: bool = False
    train_tail: bool = True
    compress: Literal["none", "fp16"] = "none"  # dtype of activations/gradients on the wire
    split_training: bool = True  # the phase through the server body (off: local-loss only)
    # the pretrained encoder weights the client trains (embeddings, its blocks, pooler or final
    # norm) step at this rate; the prompts and the task head at train.lr. null: train.lr for all
    encoder_lr: float | None = Field(None, gt=0)


class ServerConfig(_Section):
    """The DeepSpeed server actor that holds the body (SFPrompt)."""

    zero_stage: int = Field(0, ge=0, le=3)
    train_body: bool = False  # SplitFed baseline: the server trains the body
    lr: float = Field(1e-4, gt=0)  # body learning rate when train_body
    # auto: bf16 where the server's own device supports it (a GPU), else fp32; bf16 needs num_gpus
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int = Field(1, ge=1)


class PruningConfig(_Section):
    """Per-round dataset pruning on each client (SFPrompt phase 1)."""

    enabled: bool = True
    keep_ratio: float = Field(0.5, gt=0, le=1)
    score: Literal["el2n", "loss", "random"] = "el2n"
    per_class: bool = True  # keep the hardest fraction within each label (false: over all samples)
    score_with: Literal["local", "split"] = "local"  # local: head -> tail, no communication


class LocalLossConfig(_Section):
    """The local-loss update: head straight into the tail, no communication (SFPrompt phase 2)."""

    enabled: bool = True
    epochs: int = Field(1, ge=1)


class FedPTConfig(_Section):
    """FedPT (algorithm: fedpt): clients tune a small LM; the server proxy-tunes a black-box large LM."""

    # model.name is the black-box large LM (e.g. smollm2-135m-instruct); this is the clients' small
    # LM (same tokenizer) by name or path; null: a layer-drop emulator of the large LM.
    small_model: str | None = None
    emulator_layers: str = "first2+last2"  # layers of the large LM the emulator keeps
    emulator_distill_steps: int = Field(0, ge=0)  # distil the emulator from the large LM first
    emulator_distill_lr: float = Field(1e-3, gt=0)
    alpha: float = Field(1.0, ge=0)  # proxy strength: large + alpha * (tuned - base)
    # More proxy strengths evaluated beside alpha (eval/proxy@A_perplexity ...), for alpha curves.
    eval_alphas: list[Annotated[float, Field(ge=0)]] = []
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    # Server-side public text: "public" = a seeded fraction of the train split no client holds,
    # or the name of another split of the data set.
    public_split: str = "public"
    public_fraction: float = Field(0.05, gt=0, lt=1)
    distill: bool = True  # distil the proxy-tuned large LM into the small LM every round
    # What the proxy adds: global = the aggregated small LM (the paper's loop; after distillation
    # it holds the large LM's knowledge too), clients = only the clients' own accumulated updates.
    proxy_from: Literal["global", "clients"] = "global"
    distill_steps: int = Field(20, ge=1)
    distill_lr: float = Field(1e-3, gt=0)
    distill_temperature: float = Field(1.0, gt=0)
    distill_batch_size: int = Field(8, ge=1)
    logits_dtype: Literal["fp32", "fp16"] = "fp32"  # the black box's answers on the wire
    server_num_cpus: float = Field(1.0, ge=0)
    server_num_gpus: float = Field(0.0, ge=0)  # the black box's Ray GPUs (0: it runs on CPUs)
    # The black box's compute dtype, decided inside its actor (auto: bf16 on a GPU that has it).
    server_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    kernel_inject: bool = (
        False  # DeepSpeed's fused inference kernels (GPU only; JIT-built with nvcc)
    )
    generate: int = Field(3, ge=0)  # greedy samples written to the run directory at the end
    generate_tokens: int = Field(40, ge=1)


class RunConfig(_Section):
    name: str = "run"
    seed: int = Field(0, ge=0)  # numpy's generators refuse negative seeds
    algorithm: Literal["fedavg", "centralized", "sfprompt", "fedpt"] = "fedavg"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: method_params_union() = Field(default_factory=lambda: _default_method())  # type: ignore[valid-type]
    federation: FederationConfig = FederationConfig()
    strategy: StrategyConfig = StrategyConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()
    devices: DevicesConfig = DevicesConfig()
    faults: FaultsConfig = FaultsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    ray: RayConfig = RayConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    wandb: WandbConfig = WandbConfig()
    split: SplitConfig = SplitConfig()
    server: ServerConfig = ServerConfig()
    pruning: PruningConfig = PruningConfig()
    local_loss: LocalLossConfig = LocalLossConfig()
    fedpt: FedPTConfig = FedPTConfig()

    @model_validator(mode="after")
    def _validation(self) -> RunConfig:
        if self.eval.split == "validation" and self.data.validation_fraction == 0:
            raise ValueError(
                "eval.split: validation needs rows to evaluate; set data.validation_fraction "
                "(e.g. 0.1)"
            )
        if self.eval.select == "validation":
            if self.eval.split != "test":
                raise ValueError(
                    "eval.select: validation selects a round of the test split by the held-out "
                    "rows; set eval.split: test (or eval.select: last)"
                )
            if self.data.validation_fraction == 0:
                raise ValueError(
                    "eval.select: validation needs held-out rows; set data.validation_fraction "
                    "(e.g. 0.1)"
                )
        return self

    @model_validator(mode="after")
    def _strategy(self) -> RunConfig:
        try:
            strategy, _ = resolve(self.federation.strategy, self.strategy.model_dump())
        except ConfigError as exc:
            raise ValueError(f"{exc.key}: {exc.message}") from None
        if self.algorithm not in strategy.algorithms:
            raise ValueError(
                f"federation.strategy: {strategy.name} does not apply to algorithm "
                f"{self.algorithm} (only {', '.join(strategy.algorithms)}); choose another strategy"
            )
        if self.privacy.dp and not strategy.dp:
            raise ValueError(
                f"federation.strategy: {strategy.name} does not compose with privacy.dp; "
                "turn DP off or choose another strategy"
            )
        return self


def _default_method() -> Any:
    return get_method("lora").params_type(name="lora")


def parse_value(text: str) -> Any:
    """A CLI override value is YAML: `3` is an int, `1e-3` a float, `[a, b]` a list, `null` None."""
    try:
        value = load_yaml(text) if text.strip() else ""
    except DuplicateKeyError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    except Exception:  # noqa: BLE001 - YAML's constructors raise ValueError, KeyError ... too
        raise ValueError(f"{text!r} is not a YAML value; quote it or fix the syntax") from None
    # YAML 1.1 reads 1e-3 as a string; the user meant a number.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict (a copy); unknown keys are caught by the schema."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key.path=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section")
            node = child
        try:
            node[parts[-1]] = parse_value(text)
        except ValueError as exc:
            raise ConfigError(key.strip(), str(exc)) from None
    return out


def _error_from_validation(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    # Discriminated unions insert the tag into the location (method.lora.r): drop it.
    if len(loc) >= 2 and loc[0] == "method" and loc[1] not in {"name"}:
        loc = [loc[0], *loc[2:]]
    key = ".".join(loc)
    msg = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    if kind == "extra_forbidden":
        return ConfigError(key, "unknown key; check its spelling against docs/config.md")
    if kind == "union_tag_invalid":
        return ConfigError("method.name", f"unknown method {err['input'].get('name')!r}; {msg}")
    if kind == "missing":
        return ConfigError(key, "is required")
    if ": " in msg and kind == "value_error":
        sub, _, rest = msg.partition(": ")
        return ConfigError(f"{key}.{sub}" if key else sub, rest)
    return ConfigError(key or "config", f"{msg} (got {err.get('input')!r})")


def validate_config(raw: dict[str, Any]) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError("config", "the top level must be a mapping of sections")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise _error_from_validation(exc) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("CONFIG", f"no such file {str(p)!r}; pass the path of a YAML config")
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ConfigError("CONFIG", f"{p} is not UTF-8 text; pass a YAML config") from None
    try:
        raw = load_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError("CONFIG", f"{p} {exc}") from None
    except Exception as exc:  # noqa: BLE001 - YAML's constructors raise ValueError, KeyError ... too
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("CONFIG", f"{p} is not valid YAML{where}; fix the syntax") from None
    if raw is None:  # an empty file is a truncated or wrong file, not "every default"
        raise ConfigError("CONFIG", f"{p} is empty; write {{}} to run every default")
    if not isinstance(raw, dict):
        raise ConfigError(
            "CONFIG", f"{p} must be a mapping of sections, not a {type(raw).__name__}"
        )
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply dotted overrides and validate it against the schema."""
    return validate_config(apply_overrides(read_yaml(path), overrides or []))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
