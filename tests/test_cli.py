"""The `codexlm` command, run in this process (`cli.main`, what the console script calls):
every subcommand has --help, a bad argument is one line and exit 2, `generate` prints the
library's completion, `info` describes the folder from its files, `code-eval` is the
scorer. `codexlm chat` through a pipe is in tests/test_serve.py (against the server)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import tomllib
import torch
from conftest import ROOT
from test_serve import PROMPT, folder  # noqa: F401 (the tiny export, a fixture)

from codexlm import cli
from codexlm.generate import complete
from codexlm.serve import engine


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = 0
    try:
        cli.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_the_console_script_is_declared() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"codexlm": "codexlm.cli:main"}


@pytest.mark.parametrize("command", [[], ["generate"], ["chat"], ["serve"], ["info"]])
def test_every_command_has_help(command: list[str], capsys) -> None:
    code, out, _ = run([*command, "--help"], capsys)
    assert code == 0 and out.startswith("usage: codexlm")


def test_code_eval_is_the_scorer(capsys, tmp_path: Path) -> None:
    code, out, _ = run(["code-eval", "--help"], capsys)
    assert code == 0 and out.startswith("usage: codexlm code-eval") and "--problems" in out
    code, _, err = run(["code-eval", str(tmp_path / "s.jsonl"), "--k", "0"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: --k: expected positive integers like 1,10,100 (got '0')"
    ]


WRONG_KEY = "wrong"  # pragma: allowlist secret

BAD = {
    "no command": ([], "error: codexlm: the following arguments are required: COMMAND"),
    "unknown command": (["train"], "error: codexlm: argument COMMAND: invalid choice: 'train'"),
    "unknown flag": (["info", "m", "--colour"], "error: codexlm: unrecognized arguments"),
    "no prompt": (["generate", "m"], "error: codexlm generate: one of the arguments"),
    "bad number": (["chat", "m", "--max-tokens", "0"], "error: codexlm chat: argument"),
    "not a model": (["info", "/nonexistent"], "error: /nonexistent: not a Hugging Face model"),
    "not a model to serve": (["serve", "/nonexistent"], "error: /nonexistent: not a Hugging"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_argument_is_one_line_and_exit_2(case: str, capsys) -> None:
    argv, start = BAD[case]
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(start), err


def test_bad_values_for_a_model_are_one_line(folder: Path, capsys) -> None:  # noqa: F811
    for argv, start in (
        (["--temperature", "3"], "error: --temperature: 3.0 is not in [0, 2]"),
        (["--max-tokens", "9999"], "error: --max-tokens: the prompt's"),
        (["--file", "/nonexistent.py"], "error: --file: cannot read /nonexistent.py"),
    ):
        prompt = [] if "--file" in argv else ["--prompt", PROMPT]
        code, _, err = run(["generate", str(folder), *prompt, *argv], capsys)
        assert code == 2 and err.startswith(start) and len(err.strip().splitlines()) == 1, err


def test_generate_prints_the_librarys_completion(folder: Path, capsys, tmp_path) -> None:  # noqa: F811
    model, tok = engine.load(folder, torch.device("cpu"))
    (expected,) = complete(
        model, tok, [PROMPT], max_new_tokens=16, stops=(), batch_size=1, temperature=0.0,
        top_p=1.0, seed=0, device=torch.device("cpu"),
    ).raw  # fmt: skip
    code, out, _ = run(["generate", str(folder), "--prompt", PROMPT, "--max-tokens", "16"], capsys)
    assert code == 0 and out == expected + "\n"
    (tmp_path / "p.py").write_text(PROMPT)
    argv = ["generate", str(folder), "--file", str(tmp_path / "p.py"), "--max-tokens", "16"]
    assert run(argv, capsys)[1] == expected + "\n"


def test_info_describes_the_folder(folder: Path, capsys) -> None:  # noqa: F811
    code, out, _ = run(["info", str(folder), "--json"], capsys)
    found = json.loads(out)
    model, _ = engine.load(folder, torch.device("cpu"))
    assert code == 0 and found["parameters"] == sum(p.numel() for p in model.parameters())
    assert (found["model_type"], found["layers"], found["width"]) == ("llama", 2, 32)
    assert found["chat_template"].startswith("the project's ChatML")
    assert found["end_of_turn"] == "<|im_end|>"
    code, out, _ = run(["info", str(folder)], capsys)
    assert "architecture: LlamaForCausalLM" in out and "end_of_turn: <|im_end|>" in out


@pytest.mark.slow  # a process of its own: torch and transformers imported again (~10 s)
def test_serve_listens_on_loopback_with_its_key(folder: Path, tmp_path: Path) -> None:  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "codexlm", "serve", str(folder), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--api-key", "k", "--name", "tiny"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    assert json.loads(r.read())["model"] == "tiny"
                break
            except urllib.error.URLError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key=WRONG_KEY, max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0)
        r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, temperature=0)
        model, tok = engine.load(folder, torch.device("cpu"))
        (expected,) = complete(
            model, tok, [PROMPT], max_new_tokens=16, stops=(), batch_size=1, temperature=0.0,
            top_p=1.0, seed=0, device=torch.device("cpu"),
        ).raw  # fmt: skip
        assert r.choices[0].text == expected
    finally:
        proc.terminate()  # SIGTERM: aiohttp's graceful exit
        assert proc.wait(timeout=60) == 0
