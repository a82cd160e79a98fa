"""The optimizer and the schedule: which parameters Muon takes, what its checkpoints hold,
and the shape of both schedules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import model_args, train_args

from codexlm import optim
from codexlm.model import build_model


def schedule(**overrides: object) -> list[float]:
    cfg = train_args(**{"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 40, "steps": 500, **overrides})
    return [optim.lr_at(s, cfg) for s in range(cfg.steps)]


def test_cosine_warms_up_then_decays_to_min_lr_at_the_last_step() -> None:
    lr, min_lr, warmup = 3e-3, 3e-4, 40
    sched = schedule(schedule="cosine")
    assert sched[0] == lr / warmup and sched[warmup - 1] == lr  # linear warmup
    assert sched[warmup] == lr  # the cosine starts at the peak...
    assert sched[-1] == min_lr  # ...and ends exactly at min_lr on the last step
    assert all(a >= b for a, b in itertools.pairwise(sched[warmup:]))
    mid = warmup + (500 - 1 - warmup) // 2
    assert sched[mid] == pytest.approx((lr + min_lr) / 2, rel=1e-2)
    assert schedule(schedule="cosine", warmup_steps=0, steps=1) == [3e-4]  # one step: the last


def test_wsd_holds_the_peak_then_decays_linearly_to_min_lr() -> None:
    lr, min_lr, warmup = 3e-3, 3e-4, 40
    sched = schedule(schedule="wsd", decay_fraction=0.2)
    assert sched[0] == lr / warmup and sched[warmup - 1] == lr
    decaying = [s for s, v in enumerate(sched) if v < lr and s >= warmup]
    assert decaying == list(range(401, 500))  # 100 decay steps, the first still at the peak
    assert set(sched[warmup:401]) == {lr}  # stable
    steps = [a - b for a, b in itertools.pairwise(sched[400:])]
    assert all(d == pytest.approx(steps[0]) for d in steps)  # linear
    assert sched[-1] == min_lr
    assert schedule(schedule="wsd", warmup_steps=0, steps=1) == [3e-4]
    # a decay longer than what follows the warmup starts right after it
    assert schedule(schedule="wsd", decay_fraction=1.0)[40] == lr


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(arch: str) -> None:
    model = build_model(model_args(arch=arch, n_layer=2, d_model=32, context=16), 64, 0, 1, 0)
    opt = optim.build_optimizer(model, train_args(optimizer="muon"))
    assert isinstance(opt, optim.MuonAdamW)
    names = {p: n for n, p in model.named_parameters()}
    muon = {names[p] for g in opt.muon.param_groups for p in g["params"]}
    rest = {names[p] for g in opt.rest.param_groups for p in g["params"]}
    assert muon | rest == set(names.values()) and not muon & rest
    assert all(
        names[p] in muon
        for p in names
        if p.ndim == 2
        and "embed" not in names[p]
        and "wte" not in names[p]
        and "wpe" not in names[p]
    )
    embeddings = {n for n in names.values() if "embed" in n or "wte" in n or "wpe" in n}
    assert embeddings and embeddings <= rest  # token (and gpt2's position) embeddings
    assert all(model.get_parameter(n).ndim == 2 for n in muon)
    decayed = {
        names[p] for g in opt.rest.param_groups if g["weight_decay"] > 0 for p in g["params"]
    }
    assert decayed == embeddings  # norms and biases get no weight decay


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_embed_lr_scale_multiplies_the_lr_of_all_but_the_hidden_matrices(optimizer: str) -> None:
    """One step from the same gradients at scale 1 and 4: the first update of Adam and of
    Muon is proportional to the lr, so the hidden matrices move the same and the rest 4x."""
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))

    def first_update(scale: float) -> tuple[dict[str, torch.Tensor], set[str]]:
        model = build_model(model_args(n_layer=1, d_model=32, context=16), 64, 0, 1, 0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        cfg = train_args(optimizer=optimizer, embed_lr_scale=scale, weight_decay=0.0)
        opt = optim.build_optimizer(model, cfg)
        optim.set_lr(opt, 1e-3)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        hidden = {n for n, p in model.named_parameters() if p in optim.hidden_matrices(model)}
        return {n: p.detach() - before[n] for n, p in model.named_parameters()}, hidden

    (one, hidden), (four, _) = first_update(1.0), first_update(4.0)
    assert hidden and len(hidden) < len(one)
    for name in one:
        ratio = (four[name].norm() / one[name].norm()).item()
        assert ratio == pytest.approx(1.0 if name in hidden else 4.0, rel=1e-4), name


def test_muon_is_torchs_muon_with_the_iterations_stacked_by_shape() -> None:
    """`optim.Muon` against `torch.optim.Muon(adjust_lr_fn="match_rms_adamw")`, three steps
    on matrices of several shapes (tall ones orthogonalised transposed, stacked with the wide
    ones of their shape): the same momentum to the bit, the same moves to bf16's rounding
    (the batched and the single matmuls round differently, and the iteration amplifies it)."""
    torch.manual_seed(0)
    shapes = [(16, 48), (48, 16), (16, 48), (32, 32), (32, 32), (8, 24)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    # torch's iterates in bf16 on any device: ours in bf16 too (on a CPU it defaults to fp32)
    a = optim.Muon([{"params": ours}], lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q, s in zip(ours, theirs, start, strict=True):
        assert torch.equal(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])
        moved, expected = (p - s).detach(), (q - s).detach()
        assert ((moved - expected).norm() / expected.norm()).item() < 1e-2, p.shape
    with pytest.raises(ValueError, match="2-D"):
        optim.Muon([{"params": [torch.nn.Parameter(torch.zeros(4))]}], lr=0.02, weight_decay=0)


def test_newton_schulz_runs_in_fp32_on_a_cpu_and_bf16_on_a_gpu() -> None:
    """bf16 is emulated, 20-100x slower than fp32, on CPUs without AVX512-BF16 or AMX; fp32 is
    chosen on every CPU (the same arithmetic whatever the CPU's bf16 support)."""
    assert optim.newton_schulz_dtype(torch.device("cpu")) == torch.float32
    assert optim.newton_schulz_dtype(torch.device("cuda", 0)) == torch.bfloat16
    w = torch.nn.Parameter(torch.randn(16, 48))
    assert optim.Muon([{"params": [w]}], lr=0.02, weight_decay=0).ns_dtype == torch.float32
    # the fp32 iteration is the bf16 one to bf16's rounding
    g = torch.randn(3, 16, 48)
    fp32, bf16 = optim.orthogonalise(g, dtype=torch.float32), optim.orthogonalise(g)
    assert fp32.dtype == torch.float32
    assert ((fp32 - bf16.float()).norm() / fp32.norm()).item() < 2e-2


def test_the_newton_schulz_precision_is_part_of_the_runs_identity(tmp_path, monkeypatch, capsys):
    """A checkpoint written with another precision is another run's: not resumed."""
    from codexlm.train import Run, train

    rng = np.random.default_rng(0)
    data = rng.integers(0, 64, size=4000).astype(np.uint16)
    cfg = train_args(
        optimizer="muon",
        steps=2,
        batch_size=2,
        warmup_steps=1,
        eval_every=2,
        eval_batches=1,
        log_every=1,
        checkpoint_every=2,
        compile=False,
        precision="fp32",
    )

    def run() -> str:
        model = build_model(model_args(n_layer=1, d_model=32, n_head=2, context=16), 64, 0, 1, 0)
        train(model, data[:3000], data[3000:], cfg, Run(0, 16, tmp_path / "ckpt", "fp"))
        return capsys.readouterr().out

    assert "muon (newton-schulz in float32) + adamw on cpu, autocast off" in run()
    assert "resuming from" in run()  # the same precision: the finished run is resumed
    monkeypatch.setattr(optim, "newton_schulz_dtype", lambda device: torch.bfloat16)
    out = run()
    assert "newton-schulz in bfloat16" in out and "starting from step 0" in out


def test_muon_state_round_trips_through_a_checkpoint_dict() -> None:
    model = build_model(model_args(n_layer=1, d_model=32, context=16), 64, 0, 1, 0)
    cfg = train_args(optimizer="muon")
    opt = optim.build_optimizer(model, cfg)
    x = torch.randint(0, 64, (2, 16))
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    state = opt.state_dict()
    assert set(state) == {"muon", "adamw"}
    fresh = optim.build_optimizer(model, cfg)
    fresh.load_state_dict(state)
    for a, b in ((opt.muon, fresh.muon), (opt.rest, fresh.rest)):
        for p in a.state:
            for k, v in a.state[p].items():
                assert torch.equal(v, b.state[p][k]), k
    # what the optimizer keeps: one buffer per hidden matrix, two moments for the rest
    hidden = sum(p.numel() for g in opt.muon.param_groups for p in g["params"])
    others = sum(p.numel() for g in opt.rest.param_groups for p in g["params"])
    assert optim.state_bytes(opt) == 4 * (hidden + 2 * others)


def test_muon_skips_a_non_finite_step() -> None:
    model = build_model(model_args(n_layer=1, d_model=32, context=16), 64, 0, 1, 0)
    opt = optim.build_optimizer(model, train_args(optimizer="muon"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 64, (2, 16))
    model(input_ids=x, labels=x).loss.backward()
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not opt.muon.state and not opt.rest.state  # no momentum either
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
