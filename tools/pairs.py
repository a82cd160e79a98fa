"""DPO pairs from a model's own completions: sample N completions of each task, judge them in
the sandbox (codeeval's limits from params.yaml), and pair, per task, completions that passed
with completions that failed (`codexlm.rl.pairs.from_verdicts`). A `make pairs` builder, not a
stage: its output is an input (`dpo.pairs`) that `make dpo` trains on.

    python tools/pairs.py [--model models/sft] [--tasks tasks/train.jsonl] [--out data/pairs.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from codexlm import params  # noqa: E402
from codexlm.atomic import write_text  # noqa: E402
from codexlm.codeeval import sandbox, scoring  # noqa: E402
from codexlm.errors import UserError, run_stage  # noqa: E402
from codexlm.generate import complete  # noqa: E402
from codexlm.model import load_trained  # noqa: E402
from codexlm.rl.pairs import from_verdicts  # noqa: E402
from codexlm.rl.tasks import load_tasks  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/sft"))
    ap.add_argument("--tasks", default="tasks/train.jsonl")
    ap.add_argument("--out", type=Path, default=Path("data/pairs.jsonl"))
    ap.add_argument("--samples", type=int, default=8, help="completions sampled per task")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    a = ap.parse_args(argv)
    if not (a.model / "config.json").is_file():
        raise UserError(
            f"--model: {a.model} is not a model folder (make sft-tasks writes models/sft)"
        )
    p = params.load()
    c = p.codeeval
    tasks = load_tasks(a.tasks, "--tasks")
    limits = sandbox.Limits(timeout_s=c.timeout_s, memory_mb=c.memory_mb)
    sb = sandbox.probe(limits)
    sandbox.require(sb, c.sandbox)
    judge = scoring.make_judge(tasks, sb, limits, c.workers)
    model, tok = load_trained(a.model)
    each = [t for t in tasks for _ in range(a.samples)]
    prompts = [t.prompt for t in each]
    gen = complete(
        model, tok, prompts, max_new_tokens=a.max_new_tokens, stops=c.stop,
        batch_size=c.batch_size, temperature=a.temperature, top_p=1.0, seed=p.seed,
        device=torch.device("cpu"), setting="--max-new-tokens",
    )  # fmt: skip
    samples = [(t.task_id, scoring.truncate(r, c.stop)) for t, r in zip(each, gen.raw, strict=True)]
    results = scoring.judge(judge, samples)
    if any(r.status == "sandbox_error" for r in results):
        raise UserError("pairs: the sandbox failed to start for some samples; rerun")
    pairs = from_verdicts(
        {t.task_id: t.prompt for t in tasks}, samples, [r.passed for r in results]
    )
    write_text(a.out, "".join(json.dumps(x, sort_keys=True) + "\n" for x in pairs))
    passed = sum(r.passed for r in results)
    print(f"pairs: {len(pairs)} pairs from {len(samples)} samples of {len(tasks)} tasks "
          f"({passed} passed) in {a.out}")  # fmt: skip
    if not pairs:
        raise UserError("pairs: no task had both a passing and a failing sample; raise --samples")


if __name__ == "__main__":
    run_stage(main)
