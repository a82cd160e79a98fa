"""tokenize: data/prepared -> models/tokenizer/, data/tokens/{train,val,test}.bin + meta.json"""

# Not named tokenize.py: Python puts stages/ first on sys.path, where such a file would shadow
# the standard library's `tokenize` module for every stage script.
from pathlib import Path

from codexlm import params
from codexlm.errors import run_stage
from codexlm.tokenizer import tokenize


def main() -> None:
    p = params.load()
    meta = tokenize(
        prepared=Path("data/prepared"),
        init=p.model.init,
        vocab_size=p.tokenizer.vocab_size,
        min_frequency=p.tokenizer.min_frequency,
        tok_dir=Path("models/tokenizer"),
        out_dir=Path("data/tokens"),
        max_train_bytes=int(p.tokenizer.max_train_mb * 1_000_000),
    )
    print(
        f"tokenize: vocab {meta['vocab_size']}, tokens {meta['tokens']}, "
        f"bytes/token {meta['bytes_per_token']}"
    )


if __name__ == "__main__":
    run_stage(main)
