"""codeeval: models/trained + the problem set -> reports/codeeval/ (metrics.json, results.jsonl
per problem, samples.jsonl per completion): pass@1 greedy and pass@k sampled, every program run
in the sandbox probed at start."""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import time
from collections import defaultdict

import torch

from codexlm import params, provenance
from codexlm.atomic import write_json
from codexlm.codeeval import sandbox
from codexlm.codeeval import scoring as codeeval
from codexlm.errors import run_stage
from codexlm.generate import complete
from codexlm.model import load_trained

OUT = Path("reports/codeeval")
TRAINED = Path("models/trained")


def main() -> None:
    p = params.load()
    provenance.check_environment()  # after params: their mistakes are the commonest
    c = p.codeeval
    start = time.perf_counter()
    problems = codeeval.load_problems(c.problems)
    problems = problems[: c.limit] if c.limit else problems
    limits = sandbox.Limits(timeout_s=c.timeout_s, memory_mb=c.memory_mb)
    sb = sandbox.probe(limits)  # before the model loads: a refusal costs nothing
    sandbox.require(sb, c.sandbox)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_trained(TRAINED, p.model.init if p.lora.enabled else None)
    model.to(device)

    modes = ([("greedy", 1, 0.0)] if c.greedy else []) + (
        [("sampled", c.samples, c.temperature)] if c.samples else []
    )
    rows, metrics, gen_tokens, gen_seconds, truncated = [], {}, 0, 0.0, 0
    for mode, n, temperature in modes:
        prompts = [pr.prompt for pr in problems for _ in range(n)]
        gen = complete(
            model, tok, prompts,
            max_new_tokens=c.max_new_tokens, stops=c.stop, batch_size=c.batch_size,
            temperature=temperature, top_p=c.top_p, seed=p.seed, device=device,
        )  # fmt: skip
        gen_tokens, gen_seconds = gen_tokens + gen.tokens, gen_seconds + gen.seconds
        truncated = max(truncated, gen.truncated_prompts // n)
        completions = [codeeval.truncate(r, c.stop) for r in gen.raw]
        ids = [pr.task_id for pr in problems for _ in range(n)]
        results = codeeval.score(
            problems,
            list(zip(ids, completions, strict=True)),
            sb,
            limits,
            c.workers,
            humaneval=c.problems == codeeval.HUMANEVAL,
        )
        table = codeeval.summarize(results, [1] if mode == "greedy" else c.k)
        metrics.update(table if mode == "greedy" else {f"sampled/{k}": v for k, v in table.items()})
        for r, raw, comp in zip(results, gen.raw, completions, strict=True):
            rows.append({"mode": mode, **r.__dict__, "completion": comp, "raw": raw})

    per_problem = defaultdict(lambda: {"statuses": defaultdict(int), "duration_s": 0.0})
    for row in rows:
        entry = per_problem[row["task_id"]]
        entry.setdefault(f"{row['mode']}_n", 0)
        entry[f"{row['mode']}_n"] += 1
        entry[f"{row['mode']}_passed"] = entry.get(f"{row['mode']}_passed", 0) + row["passed"]
        entry["statuses"][row["status"]] += 1
        entry["duration_s"] = round(entry["duration_s"] + row["duration_s"], 4)
    codeeval.write_jsonl(OUT / "samples.jsonl", rows)
    codeeval.write_jsonl(
        OUT / "results.jsonl",
        ({"task_id": pr.task_id, **per_problem[pr.task_id]} for pr in problems),
    )
    metrics.update(
        {
            "problems": len(problems),
            "samples_per_problem": c.samples,
            "sandbox_level": sb.level,
            "sandbox_backend": sb.backend,
            "tokens_per_s": gen_tokens / gen_seconds if gen_seconds else 0.0,
            "batch_size": c.batch_size,
            "max_new_tokens": c.max_new_tokens,
            "temperature": c.temperature if c.samples else 0.0,
            "top_p": c.top_p,
            "timeout_s": c.timeout_s,
            "memory_mb": c.memory_mb,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "device": device.type,
            "truncated_prompts": truncated,
            "stage_seconds": round(time.perf_counter() - start, 2),
        }
    )
    write_json(OUT / "metrics.json", metrics)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "pass@" in k)
    print(
        f"codeeval: {summary} on {len(problems)} problems (sandbox {sb.level}), "
        f"{metrics['tokens_per_s']:.0f} tokens/s"
    )


if __name__ == "__main__":
    run_stage(main)
