"""train: data/tokens + models/tokenizer -> models/trained/, models/checkpoints/, reports/train/

With train.nproc > 1 the stage re-launches itself under torchrun (DDP, or FSDP with
train.strategy: fsdp); rank 0 alone logs, checkpoints and writes models/trained.
"""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import json
import os

import torch

from codexlm import checkpoint, params, provenance
from codexlm.data import load_tokens
from codexlm.errors import UserError, run_stage
from codexlm.model import (
    apply_lora,
    build_model,
    context_limit,
    load_model,
    save_model,
    uses_dropout,
)
from codexlm.parallel import gathered
from codexlm.train import Interrupted, NonFiniteError, init_distributed, train

TOKENS = Path("data/tokens")
TOKENIZER = Path("models/tokenizer")
# Params that change how a run is observed, stored or scheduled on the hardware, not the
# weights it computes: a checkpoint written under other values of these is still resumed.
# `final` only picks among the same checkpoints. `compile` changes only rounding, except where
# dropout draws masks: inductor draws its own, a different run (run_fingerprint).
NOT_FINGERPRINTED = {
    "resume",
    "final",
    "keep_checkpoints",
    "checkpoint_every",
    "log_every",
    "eval_every",
    "compile",
    "compile_mode",
    "nproc",
    "batch_size",
    "grad_accum",
}


def run_fingerprint(p: params.Params, meta: dict, dropout: bool) -> str:
    """What the weights are a function of, among params and data (train() adds the code and
    the packages that compute them)."""
    t = p.train
    return checkpoint.fingerprint(
        {
            "seed": p.seed,
            "model": p.model.model_dump(),
            "lora": p.lora.model_dump() if p.lora.enabled else None,
            "train": {k: v for k, v in t.model_dump().items() if k not in NOT_FINGERPRINTED},
            # compiled dropout draws other masks than eager (tests/test_provenance.py)
            "compile": (t.compile, t.compile_mode) if dropout else None,
            # the data each step draws depends only on the global batch
            "global_batch": t.batch_size * t.grad_accum * t.nproc,
            "tokens": meta["sha256"],
            "tokenizer": meta["tokenizer_sha256"],
            "init": checkpoint.folder_digest(Path(p.model.init))
            if not p.model.from_scratch
            else None,
        }
    )


def check(p: params.Params, meta: dict) -> None:
    """Params that only make sense against the data: fail before any work."""
    need = p.model.context + 1
    for split in ("train", "val"):
        if meta["tokens"][split] < need:
            raise UserError(
                f"model.context: {p.model.context} needs at least {need} tokens, "
                f"the {split} split has {meta['tokens'][split]}"
            )
    if p.train.eval_batches * p.train.batch_size > 100 * meta["tokens"]["val"]:
        raise UserError("train.eval_batches: far more validation windows than the val split holds")


def main() -> None:
    provenance.check_environment()
    p = params.load()
    t = p.train
    if t.nproc > 1 and "LOCAL_RANK" not in os.environ:
        args = ["--standalone", f"--nproc_per_node={t.nproc}", __file__]
        os.execvp(sys.executable, [sys.executable, "-m", "torch.distributed.run", *args])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != t.nproc:  # a torchrun started by hand (several nodes) must agree with params
        raise UserError(
            f"train.nproc: {t.nproc}, but torchrun started {world} processes in all; set it "
            "to the total (it sets the global batch, which checkpoints are matched on)"
        )
    meta = json.loads((TOKENS / "meta.json").read_text())
    check(p, meta)
    d = init_distributed()
    if p.model.from_scratch:
        model = build_model(
            p.model.arch,
            p.model.n_layer,
            p.model.n_head,
            p.model.d_model,
            p.model.context,
            meta["vocab_size"],
            p.model.dropout,
            meta["eot_id"],
            meta["pad_id"],
            p.seed,
        )
    else:
        model = load_model(Path(p.model.init))
        limit = context_limit(model)
        if limit is not None and p.model.context > limit:
            raise UserError(
                f"model.context: {p.model.context} exceeds what {p.model.init} supports ({limit})"
            )
        if model.get_input_embeddings().weight.shape[0] < meta["vocab_size"]:
            # the tokenizer gained tokens the checkpoint has no embeddings for
            model.resize_token_embeddings(meta["vocab_size"], pad_to_multiple_of=64)
    if p.lora.enabled:
        model = apply_lora(model, p.lora.r, p.lora.alpha, p.lora.dropout, p.lora.target_modules)
    try:
        summary = train(
            model,
            train_tokens=load_tokens(TOKENS, "train"),
            val_tokens=load_tokens(TOKENS, "val"),
            seed=p.seed,
            context=p.model.context,
            steps=t.steps,
            batch_size=t.batch_size,
            grad_accum=t.grad_accum,
            lr=t.lr,
            min_lr=t.min_lr,
            warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay,
            betas=(t.beta1, t.beta2),
            grad_clip=t.grad_clip,
            precision=t.precision,
            compile=t.compile,
            compile_mode=t.compile_mode,
            eval_every=t.eval_every,
            n_eval_batches=t.eval_batches,
            log_every=t.log_every,
            checkpoint_every=t.checkpoint_every,
            keep_checkpoints=t.keep_checkpoints,
            resume=t.resume,
            final=t.final,
            max_bad_steps=t.max_bad_steps,
            ckpt_dir=Path("models/checkpoints"),
            run_fingerprint=run_fingerprint(p, meta, uses_dropout(model)),
            log_dir=Path("reports/train"),
            dist_info=d,
            strategy=t.strategy,
        )
    except Interrupted as e:
        print(f"train: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except NonFiniteError as e:
        print(f"error: train: {e}", file=sys.stderr)
        sys.exit(1)
    trained = gathered(model, t.strategy, d.main)  # unsharded, on rank 0
    if trained is not None:
        save_model(trained, TOKENIZER, Path("models/trained"))
        print(f"train: done, val loss {summary['val_loss']:.4f}, {summary['tokens_seen']:,} tokens")
    if d.world > 1:
        torch.distributed.barrier()  # the others wait until rank 0 has written the outputs
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_stage(main)
