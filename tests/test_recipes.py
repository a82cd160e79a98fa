"""The recipes for bigger machines: valid over params.yaml, their models built on the meta
device with the parameter count each states, their estimates labelled as such."""

from __future__ import annotations

import pytest
import yaml
from conftest import default_params

from codexlm import recipes
from codexlm.metrics import flops_per_token

NOMINAL = {"gpu-124m": 124e6, "fsdp-350m": 350e6}


def test_every_recipe_is_checked_here() -> None:
    assert recipes.names() == sorted(NOMINAL)


@pytest.mark.parametrize("name", sorted(NOMINAL))
def test_recipe_builds_with_its_stated_size(name: str) -> None:
    meta, changes = recipes.load(name)
    p = recipes.apply(default_params(), changes)
    model = recipes.meta_model(p)
    assert all(t.is_meta for t in model.parameters())  # nothing allocated
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (p.model.n_layer, p.model.d_model)
    assert model.get_input_embeddings().weight.shape == (50304, p.model.d_model)  # padded
    e = recipes.estimate(p, meta["gpus"])
    assert e.params == meta["params"] == sum(t.numel() for t in model.parameters())
    assert abs(e.params / NOMINAL[name] - 1) < 0.05
    assert e.flops_per_token == flops_per_token(e.params, 12 if "124" in name else 24,
                                                p.model.d_model, 1024)  # fmt: skip
    text = recipes.describe(name, meta, p, e)
    assert f"{e.params:,}" in text and "MFU 40% assumed" in text
    assert text.count("estimate, not measured") == 2


def test_recipe_commands_carry_every_key_as_dvc_reads_it() -> None:
    _, changes = recipes.load("fsdp-350m")
    args = recipes.overrides(changes)
    back: dict = {}
    for a in args:
        key, _, value = a.partition("=")
        block, name = key.split(".")
        back.setdefault(block, {})[name] = yaml.safe_load(value)
    assert back == changes
    assert "train.strategy=fsdp" in args and "train.compile=true" in args
