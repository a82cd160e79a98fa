"""prepare: data.source -> data/prepared/{train,val,test}.parquet + stats.json"""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


from codexlm import corpus, params, provenance
from codexlm.errors import run_stage

STDLIB_MARKER = Path("stdlib")


def source_identity(source: str, include: list[str]) -> dict[str, object] | None:
    """What the source is, for stats.json: the interpreter's library (refused unless
    ./stdlib records it: DVC sees it only through that file), or an archive's content."""
    if source == "stdlib":
        return corpus.check_stdlib_marker(STDLIB_MARKER)
    if params.is_archive(Path(source)):
        return corpus.archive_identity(Path(source), include)
    return None


def main() -> None:
    p = params.load().data
    provenance.check_environment()  # after params: their mistakes are the commonest
    identity = source_identity(p.source, p.include)
    stats = corpus.prepare(
        source=p.source,
        include=p.include,
        text_column=p.text_column,
        min_chars=p.min_chars,
        max_chars=p.max_chars,
        val_fraction=p.val_fraction,
        test_fraction=p.test_fraction,
        scrub_secrets=p.scrub_secrets,
        near_dup_threshold=p.near_dup_threshold,
        out_dir=Path("data/prepared"),
        source_identity=identity,
        decontaminate=p.decontaminate,
        data_format=p.format,
    )
    near = stats["near_duplicates"]
    print(
        f"prepare: documents {stats['documents']}, dropped {stats['dropped']}, "
        f"near-duplicate groups {near['groups']} ({near['documents']} documents), "
        f"decontaminated against {p.decontaminate}: "
        f"{stats['decontamination']['dropped']} documents dropped"
    )


if __name__ == "__main__":
    run_stage(main)
