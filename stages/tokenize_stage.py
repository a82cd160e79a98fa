"""tokenize: data/prepared -> models/tokenizer/, data/tokens/{train,val,test}.bin + meta.json"""

# Every stage's script is stages/<stage>_stage.py: a bare stages/tokenize.py would shadow the
# standard library's `tokenize` module (Python puts stages/ first on sys.path), and
# stages/train.py would read as the library's codexlm/train.py.
import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


from codexlm import datakind, params, provenance
from codexlm.errors import run_stage
from codexlm.tokenizer import tokenize


def main() -> None:
    p = params.load()
    provenance.check_environment()  # after params: their mistakes are the commonest
    meta = tokenize(
        prepared=Path("data/prepared"),
        init=p.model.init,
        vocab_size=p.tokenizer.vocab_size,
        min_frequency=p.tokenizer.min_frequency,
        tok_dir=Path("models/tokenizer"),
        out_dir=Path("data/tokens"),
        max_train_bytes=int(p.tokenizer.max_train_mb * 1_000_000),
    )
    if datakind.of_meta(meta) == datakind.EXAMPLES:
        print(
            f"tokenize: vocab {meta['vocab_size']}, {meta['chat_template']}, examples "
            f"{meta['examples']}, targets {meta['targets']}, dropped {meta['dropped']}"
        )
        return
    print(
        f"tokenize: vocab {meta['vocab_size']}, tokens {meta['tokens']}, "
        f"bytes/token {meta['bytes_per_token']}"
    )


if __name__ == "__main__":
    run_stage(main)
