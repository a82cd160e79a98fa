"""prepare: data.source -> data/prepared/{train,val,test}.parquet + stats.json"""

from pathlib import Path

from codexlm import corpus, params
from codexlm.errors import run_stage


def main() -> None:
    p = params.load().data
    stats = corpus.prepare(
        source=p.source,
        include=p.include,
        text_column=p.text_column,
        min_chars=p.min_chars,
        max_chars=p.max_chars,
        val_fraction=p.val_fraction,
        test_fraction=p.test_fraction,
        scrub_secrets=p.scrub_secrets,
        out_dir=Path("data/prepared"),
    )
    print(f"prepare: documents {stats['documents']}, dropped {stats['dropped']}")


if __name__ == "__main__":
    run_stage(main)
