"""export: models/trained -> models/export/ (safetensors, tokenizer, generation config,
model card), verified by reloading it and comparing logits."""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import json

import yaml

from codexlm import params, provenance
from codexlm.errors import run_stage
from codexlm.export import ParityError, export, lineage

PROVENANCE = ("data/prepared", "data/tokens", "models/tokenizer", "models/trained")


def main() -> None:
    p = params.load()
    provenance.check_environment()  # after params: their mistakes are the commonest
    raw_params = yaml.safe_load(Path(params.PARAMS_FILE).read_text())
    card = {
        "name": "codexlm",
        "path": "models/export",
        "params": raw_params,
        "metrics": json.loads(Path("reports/evaluate/metrics.json").read_text()),
        "data_stats": json.loads(Path("data/prepared/stats.json").read_text()),
        # what the model is a function of; not the checkpoints or the training log, whose
        # wall-clock throughput would make the card, and so this output, differ run to run
        "lineage": lineage(Path("dvc.lock"), PROVENANCE),
    }
    lora_base = p.model.init if p.lora.enabled else None
    try:
        diff = export(
            Path("models/trained"),
            Path("models/export"),
            lora_base,
            p.export.merge_lora,
            p.model.context,
            p.seed,
            p.export.parity_atol,
            card,
        )
    except ParityError as e:
        raise SystemExit(f"error: export: {e}") from None
    print(f"export: models/export written; reload parity max |logit diff| = {diff:.3g}")


if __name__ == "__main__":
    run_stage(main)
