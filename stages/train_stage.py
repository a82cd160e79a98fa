"""train: data/tokens + models/tokenizer -> models/trained/, models/checkpoints/, reports/train/
Under torchrun when train.nproc > 1; rank 0 alone logs, checkpoints and writes models/trained."""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import json

import torch

from codexlm import datakind, parallel, params, provenance
from codexlm.batches import check_splits, load_split
from codexlm.callbacks import ProgressBar
from codexlm.checkpoint.policy import run_fingerprint
from codexlm.errors import UserError, run_stage
from codexlm.live import LiveLogger
from codexlm.model import model_for, save_model, uses_dropout
from codexlm.packing import Split
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
    run = Run(p.seed, p.model.context, Path("models/checkpoints"), fp, d, REPORTS, meta["eot_id"])
    tokens = [load_split(TOKENS, meta, s, p.model.context, p.train.loss_on) for s in SPLITS]
    if kind == datakind.EXAMPLES:
        examples_left(tokens, p.model.context, d.main)
    reporters = [ProgressBar(), LiveLogger(REPORTS)]
    if len(p.train.loggers) > 1:  # after DVCLive's: a fresh folder is cleared first
        reporters.append(Trackers(p.train.loggers, TRACKERS, REPORTS, p.model_dump(), fp))
    try:
        summary = train(model, *tokens, p.train, run, reporters)
    except Interrupted as e:  # a checkpoint was written: `dvc repro` resumes it
        print(f"train: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except NonFiniteError as e:
        sys.exit(f"error: train: {e}")
    trained = parallel.gathered(model, p.train.strategy, d.main)  # unsharded, on rank 0
    if trained is not None:
        save_model(trained, Path("models/tokenizer"), Path("models/trained"))
        print(f"train: done, val loss {summary['val_loss']:.4f}, {summary['tokens_seen']:,} tokens")
    if d.world > 1:
        torch.distributed.barrier()  # the others wait until rank 0 has written the outputs
        torch.distributed.destroy_process_group()


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
