"""check: validate params.yaml, and the corpus and model folders it names, before anything
runs. `make repro` calls it ahead of `dvc repro`, which removes a stage's outputs before running
it: a mistake found here costs no output."""

import sys
from pathlib import Path

# this checkout's library, as the stages do: an editable install may point at another clone
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from codexlm import params
from codexlm.errors import run_stage
from codexlm.model import check_arch
from codexlm.trackers import check as check_trackers


def main() -> None:
    p = params.load()
    check_arch(p.model)  # needs transformers, which params.py (in every stage) does not import
    check_trackers(p.train.loggers, Path("trackers"))  # packages installed, folders writable
    print("check: params.yaml is valid")


if __name__ == "__main__":
    run_stage(main)
