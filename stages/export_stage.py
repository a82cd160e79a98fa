"""export: models/trained -> models/export/ (safetensors, tokenizer, generation config,
model card, and a GGUF unless export.gguf is none), each verified by reading it back and
comparing logits."""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


from codexlm import params, provenance
from codexlm.errors import run_stage
from codexlm.export.card import pipeline_card
from codexlm.export.gguf import file_name as gguf_file_name
from codexlm.export.hf import ParityError, check_gguf, export
from codexlm.trackers import log_results

NAME = "codexlm"
TRAINED, OUT = Path("models/trained"), Path("models/export")


def main() -> None:
    p = params.load()
    provenance.check_environment()  # after params: their mistakes are the commonest
    lora_base = p.model.init if p.lora.enabled else None
    gguf = check_gguf(p.export.gguf, Path(lora_base) if lora_base else TRAINED, TRAINED)
    gguf_file = None if gguf == "none" else gguf_file_name(NAME, gguf)
    card = pipeline_card(
        NAME,
        p.export.license,
        gguf_file,
        params_file=Path(params.PARAMS_FILE),
        metrics_file=Path("reports/evaluate/metrics.json"),
        stats_file=Path("data/prepared/stats.json"),
        lock_file=Path("dvc.lock"),
    )
    try:
        diffs = export(
            TRAINED,
            OUT,
            lora_base,
            p.export.merge_lora,
            p.model.context,
            p.seed,
            p.export.parity_atol,
            card,
            gguf=gguf,
            gguf_name=NAME,
        )
    except ParityError as e:
        raise SystemExit(f"error: export: {e}") from None
    checked = ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
    print(f"export: models/export written; read-back max |logit diff|: {checked}")
    # the card into the runs train.loggers started (reports/train/trackers.json), if any
    written = log_results(Path("reports/train"), Path("trackers"), {}, [OUT / "README.md"])
    if written:
        print(f"export: model card logged to {', '.join(written)}")


if __name__ == "__main__":
    run_stage(main)
