"""Typed schema of params.yaml: the only place params are parsed.

Every block forbids unknown keys and every field is required, so params.yaml is the single
source of truth and a typo fails before any work with one line naming the key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from codexlm.errors import UserError

PARAMS_FILE = "params.yaml"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats.

    PyYAML implements YAML 1.1, where `3e-4` (no dot) is a string. `dvc exp run -S
    train.lr=3e-4` writes exactly that, so without this resolver lr would be "3e-4".
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _Block(BaseModel):
    # strict: "yes" is not a bool and "8" is not an int; ints are still accepted as floats
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PositiveInt = Field(gt=0)


class Data(_Block):
    source: str = Field(min_length=1)
    include: list[str] = Field(min_length=1)
    text_column: str = Field(min_length=1)
    min_chars: int = Field(ge=0)
    max_chars: int = Field(gt=0)
    val_fraction: float = Field(gt=0, lt=0.5)
    test_fraction: float = Field(gt=0, lt=0.5)
    scrub_secrets: bool


class Tokenizer(_Block):
    vocab_size: int = Field(ge=260, le=1_000_000)
    min_frequency: int = Field(ge=1)
    max_train_mb: float = Field(gt=0)


class Model(_Block):
    init: str = Field(min_length=1)
    arch: Literal["llama", "gpt2"]
    n_layer: int = PositiveInt
    n_head: int = PositiveInt
    d_model: int = PositiveInt
    context: int = Field(ge=8)
    dropout: float = Field(ge=0, lt=1)

    @field_validator("d_model")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        n_head = info.data.get("n_head")
        if n_head and v % n_head:
            raise ValueError(f"must be a multiple of model.n_head ({n_head}), got {v}")
        return v

    @property
    def from_scratch(self) -> bool:
        return self.init == "scratch"

    @model_validator(mode="after")
    def _init_is_a_model(self) -> Model:
        """A checkpoint to start from must exist and support the context: checked here, so
        no stage does any work with a path that cannot be used."""
        if self.from_scratch:
            return self
        config = Path(self.init) / "config.json"
        if not Path(self.init).is_dir():
            raise ValueError(f"model.init: {self.init!r} is not 'scratch' or a folder")
        if not config.is_file():
            raise ValueError(
                f"model.init: {self.init} is not a Hugging Face model folder (no config.json)"
            )
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except ValueError:
            raise ValueError(f"model.init: {config} is not valid JSON") from None
        limit = cfg.get("max_position_embeddings") or cfg.get("n_positions")
        if isinstance(limit, int) and self.context > limit:
            raise ValueError(
                f"model.context: {self.context} exceeds what {self.init} supports ({limit})"
            )
        return self


class Lora(_Block):
    enabled: bool
    r: int = PositiveInt
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: Literal["auto"] | list[str]


# torch.compile's modes; reduce-overhead adds CUDA graphs, max-autotune tunes matmul kernels
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class Train(_Block):
    steps: int = PositiveInt
    batch_size: int = PositiveInt
    grad_accum: int = PositiveInt
    lr: float = Field(gt=0, le=1)
    min_lr: float = Field(ge=0, le=1)
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    grad_clip: float = Field(ge=0)
    precision: Literal["auto", "fp32", "bf16"]
    compile: bool
    compile_mode: CompileMode
    eval_every: int = PositiveInt
    eval_batches: int = PositiveInt
    log_every: int = PositiveInt
    checkpoint_every: int = PositiveInt
    keep_checkpoints: int = PositiveInt
    resume: Literal["auto", "never"]
    final: Literal["last", "best"]
    max_bad_steps: int = PositiveInt
    nproc: int = PositiveInt
    strategy: Literal["ddp", "fsdp"]

    @model_validator(mode="after")
    def _fsdp_needs_processes(self) -> Train:
        if self.strategy == "fsdp" and self.nproc < 2:
            raise ValueError(
                "train.strategy: fsdp shards the model over processes; set train.nproc >= 2 "
                f"(got {self.nproc})"
            )
        return self

    @model_validator(mode="after")
    def _mode_needs_compile(self) -> Train:
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(
                f"train.compile_mode: {self.compile_mode!r} has no effect with train.compile "
                "false; set train.compile: true or train.compile_mode: default"
            )
        return self

    @field_validator("min_lr")
    @classmethod
    def _min_below_max(cls, v: float, info: Any) -> float:
        lr = info.data.get("lr")
        if lr is not None and v > lr:
            raise ValueError(f"must not exceed train.lr ({lr}), got {v}")
        return v


class Evaluate(_Block):
    batch_size: int = PositiveInt
    max_tokens: int = Field(ge=0)  # 0 = the whole split
    prompts: list[str] = Field(min_length=1)
    max_new_tokens: int = PositiveInt
    temperature: float = Field(ge=0)
    top_k: int = Field(ge=0)


class Export(_Block):
    merge_lora: bool
    parity_atol: float = Field(gt=0)
    gguf: Literal["none", "f32", "f16", "q8_0"]
    license: str = Field(min_length=1)  # "auto" (the corpus's) or a Hub licence id


class Params(_Block):
    seed: int = Field(ge=0)
    data: Data
    tokenizer: Tokenizer
    model: Model
    lora: Lora
    train: Train
    evaluate: Evaluate
    export: Export

    @model_validator(mode="after")
    def _lora_needs_a_base(self) -> Params:
        if self.lora.enabled and self.model.from_scratch:
            raise ValueError(
                "lora.enabled: LoRA adapts a pretrained model; set model.init to its folder"
            )
        if self.lora.enabled and self.train.strategy == "fsdp":
            raise ValueError(
                "train.strategy: fsdp with lora.enabled is not supported (a frozen base "
                "with small adapters is what DDP is for); use train.strategy: ddp"
            )
        return self

    @model_validator(mode="after")
    def _gguf_needs_full_weights(self) -> Params:
        if self.export.gguf != "none" and self.lora.enabled and not self.export.merge_lora:
            raise ValueError(
                "export.gguf: an adapter export (export.merge_lora: false) has no full "
                "weights to write as GGUF; set export.gguf: none or export.merge_lora: true"
            )
        return self


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: missing key"
    msg = err["msg"].removeprefix("Value error, ")
    if not key or msg.startswith(f"{key}."):  # a check across fields names its keys itself
        return msg
    if "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return f"{key}: {msg}"


def parse(raw: Any, origin: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; raise UserError with one line naming every bad key."""
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a mapping of blocks, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{origin}: " + "; ".join(_describe(x) for x in e.errors())) from None


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def load(path: str | Path = PARAMS_FILE) -> Params:
    return parse(load_yaml(path), origin=str(path))
