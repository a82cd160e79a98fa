"""params.yaml schema: every mistake fails before any work, with one line naming the key."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, default_params, fake_checkpoint, run_script

from codexlm import params
from codexlm.errors import UserError


def error_of(raw: object) -> str:
    with pytest.raises(UserError) as info:
        params.parse(raw)
    msg = str(info.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    return msg


def with_value(dotted: str, value: object) -> dict:
    p = copy.deepcopy(default_params())
    *blocks, key = dotted.split(".")
    node = p
    for b in blocks:
        node = node[b]
    node[key] = value
    return p


def without(dotted: str) -> dict:
    p = copy.deepcopy(default_params())
    *blocks, key = dotted.split(".")
    node = p
    for b in blocks:
        node = node[b]
    del node[key]
    return p


def params_text_with(line_pattern: str, replacement: str) -> str:
    """The repository's params.yaml text with one line rewritten (as `dvc exp run -S` would)."""
    text = (ROOT / "params.yaml").read_text()
    new, n = re.subn(line_pattern, replacement, text, count=1, flags=re.M)
    assert n == 1, line_pattern
    return new


def test_repository_params_parse() -> None:
    p = params.load(ROOT / "params.yaml")
    raw = default_params()
    assert p.seed == raw["seed"]
    assert p.data.source == raw["data"]["source"]
    assert p.tokenizer.vocab_size == raw["tokenizer"]["vocab_size"]
    assert p.model.n_layer == raw["model"]["n_layer"]
    assert p.train.lr == pytest.approx(float(raw["train"]["lr"]))
    assert p.model.from_scratch == (raw["model"]["init"] == "scratch")
    assert isinstance(p.train.lr, float) and isinstance(p.train.steps, int)


@pytest.mark.parametrize("written", ["3e-4", "0.0003", "3.0e-4", "3E-4", "+3e-4", "30e-5"])
def test_learning_rate_spellings_load_as_float(tmp_path: Path, written: str) -> None:
    # `dvc exp run -S train.lr=3e-4` writes `3e-4`, which YAML 1.1 (PyYAML) reads as a string
    f = tmp_path / "params.yaml"
    text = params_text_with(r"^  lr: .*$", f"  lr: {written}")
    text = re.sub(r"^  min_lr: .*$", "  min_lr: 1.0e-5", text, count=1, flags=re.M)
    f.write_text(text)
    p = params.load(f)
    assert type(p.train.lr) is float
    assert p.train.lr == pytest.approx(0.0003, rel=1e-12)


def test_exponent_float_spelling_is_accepted_for_min_lr_too(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text(params_text_with(r"^  min_lr: .*$", "  min_lr: 1e-5"))
    assert params.load(f).train.min_lr == pytest.approx(1e-5)


def test_integers_stay_integers(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text(params_text_with(r"^seed: .*$", "seed: 42"))
    p = params.load(f)
    assert type(p.seed) is int and p.seed == 42
    assert type(p.train.steps) is int


def test_integer_learning_rate_is_a_float(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    text = params_text_with(r"^  lr: .*$", "  lr: 1")
    f.write_text(text)
    assert params.load(f).train.lr == 1.0


def test_unknown_key_is_named() -> None:
    raw = default_params()
    raw["train"]["lrr"] = 0.1
    msg = error_of(raw)
    assert "train.lrr" in msg and "unknown key" in msg


def test_misspelt_block_is_named() -> None:
    raw = default_params()
    raw["trian"] = raw.pop("train")
    msg = error_of(raw)
    assert "trian" in msg and "unknown key" in msg
    # the block it should have been is reported too
    assert re.search(r"\btrain: missing key", msg)


@pytest.mark.parametrize("key", ["train.lr", "data.source", "seed", "export", "lora.r"])
def test_missing_key_is_named(key: str) -> None:
    msg = error_of(without(key))
    assert f"{key}: missing key" in msg


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.steps", "ten"),
        ("train.steps", 10.5),
        ("train.steps", True),
        ("train.compile", "yes"),
        ("train.compile", 1),
        ("train.lr", "abc"),
        ("data.include", "x"),
        ("data.include", [1]),
        # model.arch: checked against transformers by model.check_arch (tests/test_archs.py)
        ("train.precision", "fp16"),
        ("train.resume", "always"),
        ("evaluate.prompts", "def f():"),
        ("seed", "1337"),
    ],
)
def test_wrong_type_is_named(key: str, value: object) -> None:
    msg = error_of(with_value(key, value))
    assert msg.startswith("params.yaml: ")
    assert key in msg


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.steps", 0),
        ("train.batch_size", -1),
        ("train.grad_accum", 0),
        ("train.nproc", 0),
        ("model.n_layer", 0),
        ("model.n_head", -2),
        ("train.lr", 0.0),
        ("train.lr", -0.001),
        ("data.val_fraction", 0.0),
        ("data.test_fraction", 0.5),
        ("data.near_dup_threshold", 0),
        ("data.near_dup_threshold", -0.5),
        ("data.near_dup_threshold", 1.01),
        ("tokenizer.vocab_size", 100),
        ("tokenizer.max_train_mb", 0),
        ("model.context", 4),
        ("model.dropout", 1.0),
        ("seed", -1),
    ],
)
def test_out_of_range_is_named(key: str, value: object) -> None:
    msg = error_of(with_value(key, value))
    assert key in msg
    assert repr(value) in msg  # the offending value is shown


def test_near_dup_threshold_line() -> None:
    assert error_of(with_value("data.near_dup_threshold", 0)) == (
        "params.yaml: data.near_dup_threshold: Input should be greater than 0 (got 0)"
    )
    assert error_of(with_value("data.near_dup_threshold", 1.5)) == (
        "params.yaml: data.near_dup_threshold: Input should be less than or equal to 1 (got 1.5)"
    )
    assert params.parse(with_value("data.near_dup_threshold", 1)).data.near_dup_threshold == 1


def test_min_lr_above_lr() -> None:
    raw = with_value("train.lr", 1e-4)
    raw["train"]["min_lr"] = 1e-3
    msg = error_of(raw)
    assert "train.min_lr" in msg and "train.lr" in msg


def test_min_lr_equal_to_lr_is_fine() -> None:
    raw = with_value("train.lr", 1e-3)
    raw["train"]["min_lr"] = 1e-3
    assert params.parse(raw).train.min_lr == 1e-3


def test_d_model_must_divide_by_heads() -> None:
    raw = with_value("model.d_model", 130)
    raw["model"]["n_head"] = 4
    msg = error_of(raw)
    assert "model.d_model" in msg and "n_head" in msg


def test_d_model_divisible_by_heads_is_fine() -> None:
    raw = with_value("model.d_model", 96)
    raw["model"]["n_head"] = 3
    assert params.parse(raw).model.d_model == 96


def test_lora_needs_a_pretrained_model(tmp_path: Path) -> None:
    raw = with_value("lora.enabled", True)
    raw["model"]["init"] = "scratch"
    msg = error_of(raw)
    assert "lora.enabled" in msg and "model.init" in msg
    base = fake_checkpoint(tmp_path / "base", max_position_embeddings=512)
    raw["model"]["init"] = str(base)
    raw["train"]["optimizer"] = "adamw"  # Muon is refused with LoRA (below)
    assert params.parse(raw).lora.enabled


def test_fsdp_needs_several_processes() -> None:
    raw = with_value("train.strategy", "fsdp")
    raw["train"]["optimizer"] = "adamw"
    msg = error_of(raw)
    assert msg.startswith("params.yaml: train.strategy: ") and "train.nproc >= 2" in msg
    raw["train"]["nproc"] = 2
    assert params.parse(raw).train.strategy == "fsdp"


def test_fsdp_with_lora_is_refused(tmp_path: Path) -> None:
    base = fake_checkpoint(tmp_path / "base", max_position_embeddings=512)
    raw = with_value("lora.enabled", True)
    raw["model"]["init"] = str(base)
    raw["train"].update(strategy="fsdp", nproc=2, optimizer="adamw")
    msg = error_of(raw)
    assert "train.strategy" in msg and "lora.enabled" in msg and "ddp" in msg


def test_muon_is_refused_with_fsdp_and_with_lora(tmp_path: Path) -> None:
    raw = with_value("train.optimizer", "muon")
    raw["train"].update(strategy="fsdp", nproc=2)
    msg = error_of(raw)
    assert "train.optimizer: muon" in msg and "FSDP shards" in msg
    raw["train"]["strategy"] = "ddp"
    assert params.parse(raw).train.optimizer == "muon"
    raw["lora"]["enabled"] = True
    raw["model"]["init"] = str(fake_checkpoint(tmp_path / "base", max_position_embeddings=512))
    msg = error_of(raw)
    assert "train.optimizer: muon" in msg and "lora.enabled" in msg and "adamw" in msg
    raw["train"]["optimizer"] = "adamw"
    assert params.parse(raw).lora.enabled


def test_schedule_and_optimizer_are_checked() -> None:
    assert "train.optimizer" in error_of(with_value("train.optimizer", "sgd"))
    assert "train.schedule" in error_of(with_value("train.schedule", "linear"))
    assert "train.decay_fraction" in error_of(with_value("train.decay_fraction", 0))
    assert "train.embed_lr_scale" in error_of(with_value("train.embed_lr_scale", 0))
    # the embeddings' decay per step is lr x embed_lr_scale x weight_decay
    raw = with_value("train.embed_lr_scale", 100)
    raw["train"].update(lr=0.02, weight_decay=0.6)
    msg = error_of(raw)
    assert "train.weight_decay" in msg and "train.embed_lr_scale" in msg


def test_compile_mode_needs_compile() -> None:
    raw = with_value("train.compile_mode", "max-autotune")
    raw["train"]["compile"] = False
    msg = error_of(raw)
    assert msg.startswith("params.yaml: train.compile_mode: 'max-autotune'")
    assert "train.compile" in msg
    raw["train"]["compile"] = True
    assert params.parse(raw).train.compile_mode == "max-autotune"


def test_unknown_compile_mode_is_named() -> None:
    msg = error_of(with_value("train.compile_mode", "fast"))
    assert "train.compile_mode" in msg and "fast" in msg


def test_unknown_strategy_is_named() -> None:
    msg = error_of(with_value("train.strategy", "deepspeed"))
    assert "train.strategy" in msg and "deepspeed" in msg


def test_several_errors_in_one_line() -> None:
    raw = with_value("train.steps", 0)
    raw["model"]["n_layer"] = "four"
    raw["data"]["bogus"] = 1
    msg = error_of(raw)
    assert "train.steps" in msg and "model.n_layer" in msg and "data.bogus" in msg


def test_not_a_mapping() -> None:
    msg = error_of(["seed", 1])
    assert "mapping" in msg


def test_newline_in_bad_value_stays_one_line() -> None:
    msg = error_of(with_value("model.arch", "llama\ngpt2"))
    assert "model.arch" in msg


def test_params_are_frozen() -> None:
    p = params.parse(default_params())
    with pytest.raises(ValueError):
        p.train.steps = 1  # type: ignore[misc]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        params.load(tmp_path / "params.yaml")


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("seed: 1\ndata: [unclosed\n  x: 1\n")
    with pytest.raises(UserError) as info:
        params.load(f)
    msg = str(info.value)
    assert "not valid YAML" in msg and str(f) in msg and "\n" not in msg


def test_origin_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text(params_text_with(r"^  steps: .*$", "  steps: ten"))
    with pytest.raises(UserError) as info:
        params.load(f)
    assert str(info.value).startswith(f"{f}: train.steps")


@pytest.mark.parametrize(
    ("pattern", "replacement", "key"),
    [
        pytest.param(r"^  min_chars: .*$", "  min_chars: -1", "data.min_chars", id="range"),
        pytest.param(r"^  lr: .*$", "  lr: abc", "train.lr", id="type"),
        pytest.param(r"^  steps: .*$", "  steps: 100\n  stepz: 5", "train.stepz", id="unknown"),
    ],
)
def test_prepare_stage_rejects_bad_params(
    tmp_path: Path, pattern: str, replacement: str, key: str
) -> None:
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    shutil.copy(ROOT / "versions.yaml", tmp_path)  # what every stage checks
    (tmp_path / "params.yaml").write_text(params_text_with(pattern, replacement))
    proc = run_script("stages/prepare_stage.py", tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and key in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "data").exists()


def test_repository_params_round_trip_through_yaml(tmp_path: Path) -> None:
    # what a user gets after `yaml.safe_dump` (e.g. a script editing params) still parses
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(default_params(), sort_keys=False))
    assert params.load(f) == params.load(ROOT / "params.yaml")
