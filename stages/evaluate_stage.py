"""evaluate: models/trained + data/tokens + data/prepared -> reports/evaluate/ (metrics.json,
details.json, figures, samples.md, report.md)"""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import json

import torch

from codexlm import params, provenance
from codexlm.atomic import write_json, write_text
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
from codexlm.model import load_trained

OUT = Path("reports/evaluate")
TRAIN_LOG = Path("reports/train")


def main() -> None:
    p = params.load()
    provenance.check_environment()  # after params: their mistakes are the commonest
    e = p.evaluate
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_trained(Path("models/trained"), p.model.init if p.lora.enabled else None)
    model.to(device)
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
        )
        for split in ("test", "val")
    }
    completions = sample(
        model, tok, e.prompts, e.max_new_tokens, e.temperature, e.top_k, p.seed, device
    )
    train_summary = json.loads((TRAIN_LOG / "metrics.json").read_text())
    extra = {"train_tokens_per_s": train_summary.get("tokens_per_s", 0.0)}

    live = open_live(OUT, None)
    for k, v in headline_metrics(results, extra["train_tokens_per_s"]).items():
        live.log_metric(k, v, plot=False)
    live.make_summary()
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


if __name__ == "__main__":
    run_stage(main)
