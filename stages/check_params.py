"""check: validate params.yaml, and the corpus and model folders it names, before anything
runs. `make repro` calls it ahead of `dvc repro`, which removes a stage's outputs before running
it: a mistake found here costs no output."""

from codexlm import params
from codexlm.errors import run_stage


def main() -> None:
    params.load()
    print("check: params.yaml is valid")


if __name__ == "__main__":
    run_stage(main)
