"""The pipeline's export as other clients read it: a portable tokenizer (checked under
transformers 4.57 in its own environment too), left-padded batched generation, the GGUF read
back by transformers, the model card read by huggingface_hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import run
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from codexlm.export import hf as export_mod
from codexlm.export.gguf import TOLERANCE, load_gguf
from codexlm.model import load_trained
from codexlm.tokenizer import EOT, PORTABLE_CONFIG

pytestmark = pytest.mark.slow  # each test reads the output of one tiny `dvc repro`

# Twenty snippets where tokenizers tend to disagree: whitespace, line ends, unicode,
# emoji sequences, and special-token text quoted in a document.
SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "\tif x:\n\t\treturn y\n",
    "line one\r\nline two\r\n",
    "mixed\r\n\tindent\n  spaces  \n",
    "x = '<|endoftext|>'",
    "<|endoftext|>",
    "a<|endoftext|>b<|pad|>c",
    "print('<|endoftext|>' * 3)\r\n",
    "café naïve résumé ünïcödé",
    "中文注释 and 日本語 and 한국어",
    "emoji 🙂🚀🦙 and 👩\u200d👩\u200d👧 and 🇫🇷",
    "nbsp\u00a0zero\u200bwidth\x0bvt\x0cff",
    "don't won't it's 'quoted' \"double\"",
    "    return self.items[-1] if self.items else None\n",
    "3 33 333 3333 3.3 3..3 ------======= !!!???",
    "",
    " ",
    "\n\n\n",
    "class Stack:\n    '''LIFO.'''\n    def push(self, x): ...\n",
    's = f"{x!r:>10}"  # format spec\n',
]
PROMPTS = ["def add(a, b):", "import os\n\nclass Stack:\n    def", "x"]
TRANSFORMERS_4 = "transformers==4.57.6"
TOKENIZERS_4 = "tokenizers==0.22.2"  # what transformers 4.57 accepts (<=0.23.0)
JINJA2 = "jinja2==3.1.6"  # requirements.lock's: 4.57's apply_chat_template (test_sft_export)


def test_export_tokenizer_config_is_portable(built: Path) -> None:
    for folder in ("models/tokenizer", "models/trained", "models/export"):
        config = json.loads((built / folder / "tokenizer_config.json").read_text())
        for key, value in PORTABLE_CONFIG.items():
            assert config[key] == value, (folder, key)
        for stray in ("is_local", "local_files_only", "backend", "chat_template"):
            assert stray not in config, (folder, stray)
        assert not (built / folder / "chat_template.jinja").exists()  # none was trained


def test_special_token_text_reads_the_same_everywhere(built: Path) -> None:
    """Training's token files, evaluation's tokenizer and the export's all read quoted
    `<|endoftext|>` as text: the end-of-text id appears only where the pipeline puts it."""
    meta = json.loads((built / "data/tokens/meta.json").read_text())
    export_tok = AutoTokenizer.from_pretrained(built / "models/export")
    _, eval_tok = load_trained(built / "models/trained")
    text = "x = '<|endoftext|>'\n"
    ids = export_tok(text)["input_ids"]
    assert meta["eot_id"] not in ids and export_tok.decode(ids) == text
    assert eval_tok(text)["input_ids"] == ids
    # the token files hold the corpus's own quoted end-of-text (tokenizer.py quotes it) as text
    quoting = []
    for split in ("train", "val", "test"):
        tokens = np.fromfile(built / f"data/tokens/{split}.bin", dtype=meta["dtype"])
        docs = np.split(tokens, np.flatnonzero(tokens == meta["eot_id"]) + 1)[:-1]
        quoting += [d[:-1].tolist() for d in docs if EOT in export_tok.decode(d[:-1].tolist())]
    assert quoting, "the corpus (this project's sources) quotes <|endoftext|>"
    for doc in quoting:
        assert export_tok(export_tok.decode(doc))["input_ids"] == doc


def test_batched_greedy_generation_equals_unbatched(built: Path) -> None:
    """`tok(prompts, padding=True)` straight into generate: left padding by default."""
    export = built / "models/export"
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    assert tok.padding_side == "left"
    batch = tok(PROMPTS, padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=12, do_sample=False)
        for row, prompt in enumerate(PROMPTS):
            alone = model.generate(
                **tok(prompt, return_tensors="pt"), max_new_tokens=12, do_sample=False
            )
            n = alone.shape[1] - len(tok(prompt)["input_ids"])
            assert together[row, width : width + n].tolist() == alone[0, -n:].tolist(), prompt


def test_gguf_export_reads_back(built: Path) -> None:
    export = built / "models/export"
    files = sorted(p.name for p in export.glob("*.gguf"))
    assert files == ["codexlm-f16.gguf"]
    reader = gguf.GGUFReader(export / files[0])
    assert reader.fields["general.name"].contents() == "codexlm"
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    # general.* metadata from the model card, as llama.cpp's converter fills it
    assert reader.fields["general.license"].contents() == "unknown"
    assert reader.fields["general.languages"].contents() == ["code", "en"]
    assert "general.finetune" not in reader.fields  # not parsed from a folder name
    from_gguf = load_gguf(export, files[0])
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(export)
    batch = tok(SNIPPETS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        diff = (model(**batch).logits - from_gguf(**batch).logits).abs()
    assert float(diff[batch["attention_mask"].bool()].max()) <= TOLERANCE["f16"]


def test_card_metadata(built: Path) -> None:
    card = ModelCard.load(built / "models/export/README.md")
    metrics = json.loads((built / "reports/evaluate/metrics.json").read_text())
    data = card.data
    assert data.license == "unknown"  # a folder corpus: its licence is not known here
    assert data.language and data.datasets == ["corpus"]
    bpb = {r.metric_type: r.metric_value for r in data.eval_results}["bits_per_byte"]
    assert bpb == round(metrics["test"]["bits_per_byte"], 6)
    assert "data/tokens" in card.text


def venv_with(cache: Path, *requirements: str) -> Path:
    """A virtual environment with exactly `requirements`, made once per cache folder."""
    env = cache / "-".join(r.replace("==", "-") for r in requirements)
    python = env / "bin" / "python"
    stamp = env / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *requirements],
            check=True,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        stamp.touch()
    return python


IDS_SCRIPT = """
import json, sys, transformers
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
snippets = json.loads(sys.stdin.read())
batch = tok(snippets[:3], padding=True)
print(json.dumps({
    "version": transformers.__version__,
    "ids": [tok(s)["input_ids"] for s in snippets],
    "decoded": [tok.decode(tok(s)["input_ids"]) for s in snippets],
    "keys": sorted(batch.keys()),
    "padded": batch["input_ids"],
}))
"""


def test_transformers_4_reads_the_tokenizer_as_5_does(
    built: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The export's tokenizer under transformers 4.57 (its own environment, from the package
    index, cached in CODEXLM_TEST_CACHE or ~/.cache) gives the ids transformers 5 gives."""
    cache = Path(os.environ.get("CODEXLM_TEST_CACHE", Path.home() / ".cache" / "codexlm-tests"))
    python = venv_with(cache, TRANSFORMERS_4, TOKENIZERS_4, JINJA2)  # one venv for both
    export = built / "models/export"
    proc = run([str(python), "-c", IDS_SCRIPT, str(export)], built, input=json.dumps(SNIPPETS))
    old = json.loads(proc.stdout.strip().splitlines()[-1])
    assert old["version"] == TRANSFORMERS_4.split("==")[1]
    tok = AutoTokenizer.from_pretrained(export)
    assert old["ids"] == [tok(s)["input_ids"] for s in SNIPPETS]
    assert old["decoded"] == SNIPPETS  # lossless in 4.x too, quoted special tokens included
    assert old["keys"] == ["attention_mask", "input_ids"]  # no token_type_ids for generate
    assert old["padded"] == tok(SNIPPETS[:3], padding=True)["input_ids"]


def test_parity_check_fails_on_a_tampered_export(built: Path, tmp_path: Path, monkeypatch) -> None:
    """The export stage's reload check is not vacuous: weights changed on disk after they
    were written (here, before the reload reads them) fail it, and nothing is left behind."""
    real_reload = export_mod._reload

    def reload_tampered(path: Path, adapter_base: str | None) -> torch.nn.Module:
        weights = load_file(path / "model.safetensors")
        name = sorted(weights)[0]
        weights[name] = weights[name] + 1e-2
        save_file(weights, path / "model.safetensors")
        return real_reload(path, adapter_base)

    monkeypatch.setattr(export_mod, "_reload", reload_tampered)
    out = tmp_path / "export"
    with pytest.raises(export_mod.ParityError, match="differ from the trained model's"):
        export_mod.export(
            built / "models/trained", out, None, True, 32, 0, 1e-4, ModelCard("---\n---\n")
        )
    assert not out.exists()
