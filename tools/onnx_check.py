"""ONNX Runtime on the export: `optimum-cli export onnx`, then `ORTModelForCausalLM` and a
text-generation pipeline, with the logits compared to transformers' on the same folder.

Runs in its own environment, not the project's: optimum-onnx pins transformers < 4.58 and
brings torch's ONNX exporter and onnxruntime (see docs/export.md, "ONNX Runtime"):

    python3 -m venv /tmp/onnx-venv
    /tmp/onnx-venv/bin/pip install torch==2.13.0 'optimum-onnx[onnxruntime]==0.1.0'
    /tmp/onnx-venv/bin/python tools/onnx_check.py models/export /tmp/codexlm-onnx

Prints the export command's exit status, the files it wrote, a pipeline completion, the
max |logit difference| between ONNX Runtime and transformers over a few prompts, whether
greedy decoding agrees token for token, and last one JSON object. Exits 1 if the ONNX
folder lacks the tokenizer or the pipeline cannot run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROMPTS = ["def add(a, b):", "import os\n\n", "class Stack:\n    def push(self, x):"]


def main() -> int:
    export, out = Path(sys.argv[1]), Path(sys.argv[2])
    cli = Path(sys.executable).with_name("optimum-cli")
    cmd = [str(cli), "export", "onnx", "--model", str(export)]
    cmd += ["--task", "text-generation-with-past", str(out)]
    print("$", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print("exit status", proc.returncode)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return 1
    files = sorted(p.name for p in out.iterdir())
    print("wrote", files)
    if "tokenizer.json" not in files:
        print("error: no tokenizer in the ONNX folder")
        return 1

    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(out)
    ort = ORTModelForCausalLM.from_pretrained(out)
    ref = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    generate = pipeline("text-generation", model=ort, tokenizer=tok)
    completion = generate(PROMPTS[0], max_new_tokens=24, do_sample=False)[0]["generated_text"]
    print("pipeline:", repr(completion))

    batch = tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = ort(**batch).logits
        b = ref(**batch).logits
    mask = batch["attention_mask"].bool()
    diff = float((a - b).abs()[mask].max())
    greedy_ort = ort.generate(**batch, max_new_tokens=24, do_sample=False)
    greedy_ref = ref.generate(**batch, max_new_tokens=24, do_sample=False)
    same = bool(torch.equal(greedy_ort, greedy_ref))
    print(f"max |logit diff| ONNX Runtime vs transformers: {diff:.3g}")
    print("greedy tokens identical:", same)
    print(
        json.dumps(
            {
                "transformers": transformers.__version__,
                "files": files,
                "max_logit_diff": diff,
                "greedy_identical": same,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
