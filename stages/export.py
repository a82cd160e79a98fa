"""export: models/trained -> models/export/ (safetensors, tokenizer, generation config,
model card, and a GGUF unless export.gguf is none), each verified by reading it back and
comparing logits."""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import json

import yaml

from codexlm import params, provenance
from codexlm.card import model_card
from codexlm.errors import UserError, run_stage
from codexlm.export import ParityError, export, lineage
from codexlm.gguf_export import arch_unsupported as gguf_arch_unsupported
from codexlm.gguf_export import file_name as gguf_file_name
from codexlm.gguf_export import unsupported as gguf_unsupported

PROVENANCE = ("data/prepared", "data/tokens", "models/tokenizer", "models/trained")
NAME = "codexlm"
TRAINED = Path("models/trained")


def check_gguf(p: params.Params) -> str:
    """The GGUF type to write: export.gguf, or "none" (said in one line) for a model type the
    GGUF export does not cover. Refuses, before any work, a tokenizer llama.cpp would
    misread."""
    if p.export.gguf == "none":
        return "none"
    weights = Path(p.model.init) if p.lora.enabled else TRAINED
    model_type = json.loads((weights / "config.json").read_text())["model_type"]
    arch_reason = gguf_arch_unsupported(model_type)
    if arch_reason is not None:
        # not an error: export.gguf is on by default, and the Hugging Face folder is still
        # the export of any architecture
        print(f"export: no GGUF written: {arch_reason}")
        return "none"
    tokenizer = json.loads((TRAINED / "tokenizer.json").read_text(encoding="utf-8"))
    reason = gguf_unsupported(model_type, tokenizer)
    if reason is not None:
        raise UserError(f"export.gguf: cannot write {reason} as GGUF; set export.gguf: none")
    return p.export.gguf


def main() -> None:
    p = params.load()
    provenance.check_environment()  # after params: their mistakes are the commonest
    gguf = check_gguf(p)
    raw_params = yaml.safe_load(Path(params.PARAMS_FILE).read_text())
    gguf_file = None if gguf == "none" else gguf_file_name(NAME, gguf)
    card = model_card(
        {
            "name": NAME,
            "license": p.export.license,
            "params": raw_params,
            "metrics": json.loads(Path("reports/evaluate/metrics.json").read_text()),
            "data_stats": json.loads(Path("data/prepared/stats.json").read_text()),
            # what the model is a function of; not the checkpoints or the training log, whose
            # wall-clock throughput would make the card, and so this output, differ run to run
            "lineage": lineage(Path("dvc.lock"), PROVENANCE),
            "gguf_file": gguf_file,
        }
    )
    lora_base = p.model.init if p.lora.enabled else None
    try:
        diffs = export(
            TRAINED,
            Path("models/export"),
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


if __name__ == "__main__":
    run_stage(main)
