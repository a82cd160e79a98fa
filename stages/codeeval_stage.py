"""codeeval: models/trained + the problem set -> reports/codeeval/ (metrics.json, results.jsonl
per problem, samples.jsonl per completion): pass@1 greedy and pass@k sampled, every program
judged by codexlm.codeeval.scoring (the sandbox probed at start, verdicts decided outside it)."""

import sys
from pathlib import Path

# Run this repository's library, the code dvc.yaml hashes, even where an editable install
# points at another checkout (`dvc exp run --temp`/`--queue` copies, a clone beside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import time
from dataclasses import asdict

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
PREFIX = {"greedy": "", "sampled": "sampled/"}  # metrics.json's keys per mode


def generate(c, seed: int, model, tok, problems, device) -> tuple[dict, dict, list[dict]]:
    """Completions per mode: the runs to judge, generation figures, and the raw texts."""
    modes = ([("greedy", 1, 0.0, [1])] if c.greedy else []) + (
        [("sampled", c.samples, c.temperature, c.k)] if c.samples else []
    )
    runs, raws, stats = {}, {}, {"tokens": 0, "seconds": 0.0, "truncated": 0}
    for mode, n, temperature, ks in modes:
        gen = complete(
            model, tok, [pr.prompt for pr in problems for _ in range(n)],
            max_new_tokens=c.max_new_tokens, stops=c.stop, batch_size=c.batch_size,
            temperature=temperature, top_p=c.top_p, seed=seed, device=device,
        )  # fmt: skip
        stats["tokens"] += gen.tokens
        stats["seconds"] += gen.seconds
        stats["truncated"] = max(stats["truncated"], gen.truncated_prompts // n)
        ids = [pr.task_id for pr in problems for _ in range(n)]
        completions = [codeeval.truncate(r, c.stop) for r in gen.raw]
        runs[PREFIX[mode]] = (list(zip(ids, completions, strict=True)), ks)
        raws[PREFIX[mode]] = (mode, gen.raw, completions)
    return runs, stats, raws


def main() -> None:
    p = params.load()
    provenance.check_environment()  # after params: their mistakes are the commonest
    c = p.codeeval
    start = time.perf_counter()
    limits = sandbox.Limits(timeout_s=c.timeout_s, memory_mb=c.memory_mb)
    # load -> probe -> require -> harness check, before the model loads: a refusal costs nothing
    judge = codeeval.open_judge(c.problems, limits, c.sandbox, c.workers, c.limit)
    problems = list(judge.problems.values())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_trained(TRAINED, p.model.init if p.lora.enabled else None)
    model.to(device)
    runs, gen, raws = generate(c, p.seed, model, tok, problems, device)
    results, metrics = codeeval.evaluate(judge, runs)
    rows = [
        {"mode": mode, **asdict(r), "completion": comp, "raw": raw}
        for prefix, (mode, raw_texts, completions) in raws.items()
        for r, raw, comp in zip(results[prefix], raw_texts, completions, strict=True)
    ]
    codeeval.write_jsonl(OUT / "samples.jsonl", rows)
    codeeval.write_jsonl(OUT / "results.jsonl", codeeval.per_problem(judge, rows))
    metrics.update(
        {
            "problems": len(problems),
            "samples_per_problem": c.samples,
            "tokens_per_s": gen["tokens"] / gen["seconds"] if gen["seconds"] else 0.0,
            "batch_size": c.batch_size,
            "max_new_tokens": c.max_new_tokens,
            "temperature": c.temperature if c.samples else 0.0,
            "top_p": c.top_p,
            "timeout_s": c.timeout_s,
            "memory_mb": c.memory_mb,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "device": device.type,
            "truncated_prompts": gen["truncated"],
            "stage_seconds": round(time.perf_counter() - start, 2),
        }
    )
    write_json(OUT / "metrics.json", metrics)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "pass@" in k)
    print(
        f"codeeval: {summary} on {len(problems)} problems (sandbox {judge.sandbox.level}, "
        f"{metrics['judged_by_cases']} judged by cases), {metrics['tokens_per_s']:.0f} tokens/s"
    )


if __name__ == "__main__":
    run_stage(main)
