"""The GRPO and DPO loop on a tiny model warmed up on the task set: the same seed gives the
same run, a checkpoint resumes to the uninterrupted run's weights, the reference stays
bit-identical (a frozen copy, or under LoRA the base with the adapter disabled), and the
metrics users expect are logged."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from conftest import ROOT, default_params, train_args
from rl_fixtures import TRAIN, model, tokenizer

from codexlm import params
from codexlm.codeeval import sandbox, scoring
from codexlm.model import apply_lora
from codexlm.rl import loop
from codexlm.rl.pairs import load_pairs
from codexlm.rl.tasks import load_tasks
from codexlm.train import Run

LIMITS = sandbox.Limits(timeout_s=2.0, memory_mb=512)
STOPS = ["\ndef", "\nclass", "\nif", "\nprint", "\n#"]
CPU = torch.device("cpu")


@functools.cache
def warm_state() -> dict[str, torch.Tensor]:
    """A tiny model taught the task set's train split by next-token loss (a few seconds):
    it solves some tasks sometimes, so GRPO's groups are not all equal."""
    tok = tokenizer()
    m = model(seed=0)
    texts = [t.prompt + t.canonical_solution for t in load_tasks(str(TRAIN), "t")]
    ids = [[*tok(x).input_ids, tok.eos_token_id] for x in texts]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = [ids[i] for i in torch.randint(len(ids), (16,), generator=g).tolist()]
        width = max(len(x) for x in batch)
        x = torch.tensor([b + [tok.pad_token_id] * (width - len(b)) for b in batch])
        labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
        m(input_ids=x, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def warm_model() -> torch.nn.Module:
    m = model(seed=0)
    m.load_state_dict(warm_state())
    return m


@functools.cache
def judges() -> tuple[list, scoring.Judge, loop.Judging]:
    sb = sandbox.probe(LIMITS)
    sandbox.require(sb, "full")
    tasks = load_tasks(str(TRAIN), "grpo.tasks")[:12]
    held = load_tasks(str(ROOT / "tasks" / "test.jsonl"), "grpo.eval_tasks")[:6]
    judging = loop.Judging(scoring.make_judge(held, sb, LIMITS, 2), STOPS, 24, 8, 0)
    return tasks, scoring.make_judge(tasks, sb, LIMITS, 2), judging


def grpo_block(**overrides) -> params.Grpo:
    block = {**default_params()["grpo"], "group_size": 4, "prompts_per_step": 3,
             "max_new_tokens": 24, "eval_every": 2, **overrides}  # fmt: skip
    return params.Grpo.model_validate(block)


class Log:
    def __init__(self, stop_at: int | None = None) -> None:
        self.rows: list[tuple[int, dict]] = []
        self.stop_at = stop_at

    def on_log(self, step: int, metrics: dict) -> None:
        self.rows.append((step, dict(metrics)))

    def on_checkpoint(self, step: int, path, seconds: float) -> None:
        if step == self.stop_at:
            raise KeyboardInterrupt  # a crash right after this checkpoint


def run_grpo(ckpt: Path, m: torch.nn.Module, log: Log, steps: int = 4, lora: bool = False,
             traces: tuple[list, list] | None = None,
             **grpo) -> tuple[torch.nn.Module, torch.nn.Module | None]:  # fmt: skip
    tasks, judge, judging = judges()
    cfg = train_args(steps=steps, optimizer="adamw", lr=3e-3, warmup_steps=0, log_every=1,
                     checkpoint_every=2, compile=False, objective="grpo")  # fmt: skip
    g = grpo_block(**grpo)
    run = Run(7, 128, ckpt, "fp", log_dir=None)
    ref, opt = loop.setup(m, cfg, run, lora, need_ref=g.kl_coef > 0)
    rollouts, held = traces or (None, None)
    step = functools.partial(loop.grpo_step, m, ref, tokenizer(), opt, tasks, judge, g, cfg,
                             STOPS, run.seed, device=CPU, trace=rollouts)  # fmt: skip
    evaluate = functools.partial(loop.held_out, m, tokenizer(), judging, run.seed, CPU,
                                 trace=held)  # fmt: skip
    loop.train_rl(m, step, cfg, run, evaluate, g.eval_every, opt, [log])
    return m, ref


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_grpo_same_seed_same_run_and_a_checkpoint_resumes_it(tmp_path: Path) -> None:
    a_log, b_log = Log(), Log()
    a, _ = run_grpo(tmp_path / "a", warm_model(), a_log)
    b, _ = run_grpo(tmp_path / "b", warm_model(), b_log)
    assert same(a, b) and not same(a, warm_model())
    drop = {"tokens_per_s"}  # a rate of the wall clock
    assert [(s, {k: v for k, v in m.items() if k not in drop}) for s, m in a_log.rows] == [
        (s, {k: v for k, v in m.items() if k not in drop}) for s, m in b_log.rows
    ]
    steps = {s: m for s, m in a_log.rows}
    assert set(steps) == {0, 1, 2, 3, 4}
    for key in ("reward/mean", "completion/length", "groups/skipped", "kl", "eval/pass@1",
                "eval/pass@1_se", "train/loss"):  # fmt: skip
        assert key in steps[2], key
    assert any(m["groups/skipped"] < 3 for s, m in a_log.rows if s > 0)  # some signal

    with pytest.raises(KeyboardInterrupt):
        run_grpo(tmp_path / "c", warm_model(), Log(stop_at=2))
    resumed_log = Log()
    c, _ = run_grpo(tmp_path / "c", warm_model(), resumed_log)
    assert [s for s, _ in resumed_log.rows] == [3, 4]
    assert same(c, a)


def test_the_last_rollouts_and_held_out_completions_are_kept_with_their_verdicts(
    tmp_path: Path,
) -> None:
    """What reports/train/{rollouts,held_out}.jsonl hold: the last step's rollouts and the last
    held-out pass, each with the verdict its reward and pass@1 came from."""
    log, rollouts, held = Log(), [], []
    run_grpo(tmp_path, warm_model(), log, 3, traces=(rollouts, held), reward="fraction")
    last = dict(log.rows)[3]
    assert len(rollouts) == 3 * 4 and {r["step"] for r in rollouts} == {3}
    assert sum(r["reward"] for r in rollouts) / len(rollouts) == pytest.approx(last["reward/mean"])
    assert sum(r["passed"] for r in rollouts) / len(rollouts) == last["reward/pass_rate"]
    tasks, judge, judging = judges()
    assert {r["task_id"] for r in rollouts} <= {t.task_id for t in tasks}
    assert 0 < sum(r["passed"] for r in held) < len(held)  # mixed: the check below has teeth
    for records, j in ((rollouts, judge), (held, judging.judge)):  # each its own verdict
        again = scoring.judge(j, [(r["task_id"], r["completion"]) for r in records])
        assert [r["passed"] for r in records] == [v.passed for v in again]
        assert all(r["reward"] == 1.0 for r in records if r["passed"])
    assert len(held) == 6 and {r["step"] for r in held} == {3}
    assert sum(r["passed"] for r in held) / 6 == last["eval/pass@1"]
    assert all(r["status"] in ("passed", "failed", "syntax_error", "timeout") for r in held)
    assert all(isinstance(r["completion"], str) for r in rollouts + held)


def test_grpo_reference_stays_bit_identical_and_kl_is_logged(tmp_path: Path) -> None:
    log = Log()
    m, ref = run_grpo(tmp_path, warm_model(), log, 4, kl_coef=0.5, inner_steps=2, reward="fraction")
    assert ref is not None and same(ref, warm_model()) and not same(m, warm_model())
    assert any(row["kl"] > 0 for s, row in log.rows if s > 0 and row["groups/skipped"] < 3)


def dpo_run(m: torch.nn.Module, lora: bool, steps: int, kind: str = "sigmoid") -> tuple:
    cfg = train_args(steps=steps, optimizer="adamw", lr=3e-3, warmup_steps=0, batch_size=8,
                     compile=False, objective="dpo")  # fmt: skip
    run = Run(7, 128, Path("unused"), "fp")
    ref, opt = loop.setup(m, cfg, run, lora, need_ref=True)
    pairs = load_pairs(tokenizer(), str(ROOT / "tasks" / "pairs.jsonl"), 128)[:32]
    d = params.Dpo(pairs=str(ROOT / "tasks" / "pairs.jsonl"), beta=0.1, loss=kind)
    out = [loop.dpo_step(m, ref, tokenizer().pad_token_id, opt, pairs, d, cfg, 7, i, CPU)
           for i in range(steps)]  # fmt: skip
    return ref, out


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_dpo_reference_stays_bit_identical_and_the_margin_grows(kind: str) -> None:
    m = warm_model()
    ref, out = dpo_run(m, lora=False, steps=6, kind=kind)
    assert same(ref, warm_model()) and not same(m, warm_model())
    assert abs(out[0]["train/loss"] - (0.6931471805599453 if kind == "sigmoid" else 25.0)) < 1e-5
    assert out[0]["rewards/margins"] == 0.0
    assert out[-1]["rewards/margins"] > 0 and out[-1]["train/loss"] < out[0]["train/loss"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies"):
        assert key in out[-1]


def test_with_lora_the_reference_is_the_base_with_the_adapter_disabled() -> None:
    base = warm_model()
    m = apply_lora(copy.deepcopy(base), 4, 8.0, 0.0, "auto")
    ref, out = dpo_run(m, lora=True, steps=4)
    assert ref is None  # no second copy
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
              for k, v in m.state_dict().items() if "lora_" not in k}  # fmt: skip
    assert all(torch.equal(frozen[k], v) for k, v in base.state_dict().items())
    assert out[-1]["rewards/margins"] > 0  # the adapter learned
    rows = loop._pair_rows(load_pairs(tokenizer(), str(ROOT / "tasks" / "pairs.jsonl"), 128)[:3],
                           tokenizer().pad_token_id)[0]  # fmt: skip
    with torch.no_grad():
        want = loop.token_logprobs(base, rows)
    assert torch.equal(loop.reference_logprobs(m, None, rows), want)
