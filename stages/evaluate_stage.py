"""evaluate: models/trained + data/tokens + data/prepared -> reports/evaluate/ (metrics.json,
details.json, figures, samples.md, report.md)"""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import json

import torch

from codexlm import datakind, params, provenance, sft_eval
from codexlm.atomic import write_json, write_text
from codexlm.batches import load_split
from codexlm.errors import run_stage
from codexlm.evaluate import (
    evaluate_split,
    headline_metrics,
    plot_loss_by_position,
    plot_loss_curves,
    report_markdown,
    sample,
    samples_markdown,
    split_details,
)
from codexlm.live import open_live
from codexlm.model import load_model, load_trained
from codexlm.trackers import log_results

OUT = Path("reports/evaluate")
TRAIN_LOG = Path("reports/train")
TRACKERS = Path("trackers")  # the train stage's MLflow, TensorBoard and W&B runs, if any


def to_trackers(metrics: dict[str, float]) -> None:
    """The metrics into the runs train.loggers started (reports/train/trackers.json)."""
    written = log_results(TRAIN_LOG, TRACKERS, {f"evaluate/{k}": v for k, v in metrics.items()})
    if written:
        print(f"evaluate: metrics logged to {', '.join(written)}")


def main() -> None:
    p = params.load()
    provenance.check_environment()  # after params: their mistakes are the commonest
    e = p.evaluate
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_trained(Path("models/trained"), p.model.init if p.lora.enabled else None)
    model.to(device)
    meta = json.loads(Path("data/tokens/meta.json").read_text())
    if datakind.of_meta(meta) == datakind.EXAMPLES:
        return evaluate_examples(p, model, tok, meta, device)
    results = {
        split: evaluate_split(
            model,
            Path("data/tokens"),
            Path("data/prepared"),
            split,
            p.model.context,
            e.batch_size,
            device,
            e.max_tokens,
            desc=f"evaluate {split}",
            doc_mask=p.train.doc_mask,  # scored as it was trained
        )
        for split in ("test", "val")
    }
    completions = sample(
        model, tok, e.prompts, e.max_new_tokens, e.temperature, e.top_k, p.seed, device
    )
    train_summary = json.loads((TRAIN_LOG / "metrics.json").read_text())
    extra = {"train_tokens_per_s": train_summary.get("tokens_per_s", 0.0)}

    live = open_live(OUT, None)
    headline = headline_metrics(results, extra["train_tokens_per_s"])
    for k, v in headline.items():
        live.log_metric(k, v, plot=False)
    live.make_summary()
    to_trackers(headline)
    plot_loss_curves(TRAIN_LOG, OUT / "loss_curves.png")
    plot_loss_by_position(results, OUT / "loss_by_position.png")
    write_json(OUT / "details.json", split_details(results))
    samples_md = samples_markdown(e.prompts, completions)
    write_text(OUT / "samples.md", samples_md)
    write_text(OUT / "report.md", report_markdown(results, extra, samples_md))
    t = results["test"]
    print(
        f"evaluate: test loss {t.loss:.4f}, bits/byte {t.bits_per_byte:.4f} "
        f"± {t.bits_per_byte_se:.4f} over {t.documents} documents "
        f"(xz -9: {t.xz_bits_per_byte:.4f}), accuracy {t.accuracy:.3f}"
    )


def evaluate_examples(p: params.Params, model, tok, meta: dict, device: torch.device) -> None:
    """Instruction data: answer-token loss on test and val (and of model.init before tuning),
    greedy answers to the test prompts: exact match and stop rate (codexlm.sft_eval)."""
    e = p.evaluate
    splits = {
        s: load_split(Path("data/tokens"), meta, s, p.model.context, "answers")
        for s in ("test", "val")
    }
    metrics: dict[str, float] = {}
    for s, split in splits.items():
        for k, v in sft_eval.answer_loss(model, split, e.batch_size, device).items():
            metrics[f"{s}/{k}"] = v
    if not p.model.from_scratch:  # the same answers scored by the model before tuning
        base = load_model(Path(p.model.init))
        if base.get_input_embeddings().weight.shape[0] < meta["vocab_size"]:
            base.resize_token_embeddings(meta["vocab_size"], pad_to_multiple_of=64)
        base_loss = sft_eval.answer_loss(base.to(device), splits["test"], e.batch_size, device)
        metrics["test/answer_loss_init"] = base_loss["answer_loss"]
        del base
    held = sft_eval.held_out(Path("data/prepared"), "test", e.max_examples)
    answers = sft_eval.answers(model, tok, held, e.max_new_tokens, e.batch_size, device)
    metrics.update({f"test/{k}": v for k, v in sft_eval.generation_metrics(answers).items()})
    live = open_live(OUT, None)
    for k, v in metrics.items():
        live.log_metric(k, v, plot=False)
    live.make_summary()
    to_trackers(metrics)
    plot_loss_curves(TRAIN_LOG, OUT / "loss_curves.png")
    samples_md = sft_eval.samples_markdown(answers)
    write_text(OUT / "samples.md", samples_md)
    lines = [
        "# Evaluation report (instruction data)\n",
        *[f"- {k}: {v:,.4g}" for k, v in metrics.items()],
    ]
    write_text(
        OUT / "report.md", "\n".join(lines) + "\n\n" + samples_md.replace("# Samples", "## Samples")
    )
    print(
        f"evaluate: test answer loss {metrics['test/answer_loss']:.4f}"
        + (
            f" (model.init: {metrics['test/answer_loss_init']:.4f})"
            if "test/answer_loss_init" in metrics
            else ""
        )
        + f", exact match {metrics['test/exact_match']:.3f}, stopped by themselves "
        f"{metrics['test/stop_rate']:.3f} of {metrics['test/answers']:.0f} answers"
    )


if __name__ == "__main__":
    run_stage(main)
