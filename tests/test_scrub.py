"""Secrets are redacted before anything is tokenized, and ordinary code is left alone.

The planted secrets are generated at run time (seeded), so this file holds none itself.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from codexlm.corpus import SPLITS, prepare
from codexlm.scrub import placeholder, scrub
from codexlm.tokenizer import tokenize

_rng = random.Random(1234)
ALNUM = string.ascii_letters + string.digits


def _draw(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


AWS_KEY = "AKIA" + _draw(string.ascii_uppercase + string.digits, 16)
GITHUB_TOKEN = "gh" + "p_" + _draw(ALNUM, 36)
SLACK_TOKEN = "xo" + "xb-" + _draw(string.digits, 12) + "-" + _draw(string.digits, 13) + "-"
SLACK_TOKEN += _draw(string.ascii_lowercase + string.digits, 24)
JWT = ".".join(
    [
        _b64url({"alg": "HS256", "typ": "JWT"}),
        _b64url({"sub": _draw(string.digits, 10), "name": "Jane Doe", "iat": 1516239022}),
        _draw(ALNUM + "-_", 43),
    ]
)
JWT_SIGNATURE = JWT.rsplit(".", 1)[1]
PASSWORD = _draw(ALNUM, 12) + "&" + _draw(ALNUM, 6)
KEY_BODY = [_draw(ALNUM + "+/", 64) for _ in range(4)]
PRIVATE_KEY = "\n".join(
    ["-----BEGIN " + "RSA PRIVATE KEY-----", *KEY_BODY, "-----END " + "RSA PRIVATE KEY-----"]
)

# (line of code holding the secret, the secret, the type it is counted as)
PLANTED = [
    (f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"', AWS_KEY, "AWS Access Key"),
    (f"# token: {GITHUB_TOKEN} (rotate me)", GITHUB_TOKEN, "GitHub Token"),
    (f'client = WebClient(token="{GITHUB_TOKEN}")', GITHUB_TOKEN, "GitHub Token"),
    (f'SLACK = "{SLACK_TOKEN}"', SLACK_TOKEN, "Slack Token"),
    (f"headers = {{'Authorization': 'Bearer {JWT}'}}", JWT, "JSON Web Token"),
    (f'password = "{PASSWORD}"', PASSWORD, "Secret Keyword"),
]

ORDINARY = [
    "def add(a, b):\n    return a + b\n",
    'import os\n\nPATH = os.path.join("data", "prepared")\nprint(f"{PATH!r}")\n',
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, x):\n        self.items.append(x)\n",
    'password = input("password: ")\nif check_password(password):\n    login(user)\n',
    "for i in range(10):\n    total += i ** 2  # sum of squares\n",
    "URL = 'https://docs.python.org/3/library/re.html'\nVERSION = '3.11.7'\n",
    "x = [1, 2, 3]\ny = {'key': 'value', 'other_key': None}\n"
    "assert sorted(y) == ['key', 'other_key']\n",
]


@pytest.mark.parametrize(("line", "secret", "kind"), PLANTED)
def test_planted_secret_is_redacted(line: str, secret: str, kind: str) -> None:
    text = f"import os\n\n{line}\n\ndef main():\n    return 0\n"
    counts: Counter[str] = Counter()
    out = scrub(text, counts)
    assert secret not in out
    assert counts == Counter({kind: 1})
    assert placeholder(kind) in out
    # only the secret changed: the rest of the line and the document survive
    assert out == text.replace(secret, placeholder(kind))


def test_no_fragment_of_a_token_survives() -> None:
    # detect-secrets reports only "ghp" for a GitHub token and a JWT without its signature
    out = scrub(f"a = '{GITHUB_TOKEN}'\nb = '{JWT}'\n")
    assert GITHUB_TOKEN[4:] not in out
    assert JWT_SIGNATURE not in out


def test_private_key_block_is_removed_whole() -> None:
    text = f"KEY = '''\n{PRIVATE_KEY}\n'''\n\ndef sign(data):\n    return hmac(KEY, data)\n"
    counts: Counter[str] = Counter()
    out = scrub(text, counts)
    assert counts["Private Key"] == 1
    for part in [*KEY_BODY, "PRIVATE KEY", "-----"]:
        assert part not in out
    assert out == f"KEY = '''\n{placeholder('Private Key')}\n'''\n\ndef sign(data):\n" + (
        "    return hmac(KEY, data)\n"
    )


def test_unterminated_private_key_removes_the_rest() -> None:
    head = "x = 1\n"
    out = scrub(head + PRIVATE_KEY.rsplit("\n", 1)[0] + "\nmore = 2\n")
    assert out == head + placeholder("Private Key")


def test_every_planted_secret_in_one_document() -> None:
    text = "\n".join(line for line, _, _ in PLANTED) + "\n" + PRIVATE_KEY + "\nprint('done')\n"
    counts: Counter[str] = Counter()
    out = scrub(text, counts)
    for secret in [AWS_KEY, GITHUB_TOKEN, SLACK_TOKEN, JWT, JWT_SIGNATURE, PASSWORD, *KEY_BODY]:
        assert secret not in out
    expected = Counter(kind for _, _, kind in PLANTED)
    expected["Private Key"] += 1
    assert counts == expected
    assert out.endswith("print('done')\n")


def test_repeated_secret_counted_per_occurrence() -> None:
    counts: Counter[str] = Counter()
    out = scrub(f"keys = ['{AWS_KEY}', '{AWS_KEY}']\nagain = '{AWS_KEY}'\n", counts)
    assert AWS_KEY not in out
    assert counts == Counter({"AWS Access Key": 3})


def test_counts_accumulate_across_calls() -> None:
    counts: Counter[str] = Counter()
    scrub(PLANTED[0][0], counts)
    scrub(PLANTED[0][0], counts)
    assert counts == Counter({"AWS Access Key": 2})
    assert scrub(PLANTED[0][0]) == PLANTED[0][0].replace(AWS_KEY, placeholder("AWS Access Key"))


@pytest.mark.parametrize("code", ORDINARY)
def test_ordinary_code_is_unchanged(code: str) -> None:
    counts: Counter[str] = Counter()
    assert scrub(code, counts) == code
    assert not counts


def test_placeholder_names_the_type() -> None:
    assert placeholder("AWS Access Key") == "<secret:aws_access_key>"
    assert placeholder("JSON Web Token") == "<secret:json_web_token>"


# ---------------------------------------------------------------- through prepare and tokenize


def secret_corpus(root: Path) -> Path:
    root.mkdir()
    for i in range(30):
        (root / f"plain_{i:02d}.py").write_text(f"def f_{i}(x):\n    return x + {i}  # plain\n")
    for j, (line, _, _) in enumerate(PLANTED):
        (root / f"leak_{j}.py").write_text(f"import os\n\n{line}\n\ndef run_{j}():\n    pass\n")
    (root / "leak_key.py").write_text(f"PEM = '''\n{PRIVATE_KEY}\n'''\n")
    return root


SECRETS = [AWS_KEY, GITHUB_TOKEN, SLACK_TOKEN, JWT, JWT_SIGNATURE, PASSWORD, *KEY_BODY]


def run_prepare(src: Path, out: Path, scrub_secrets: bool) -> dict:
    return prepare(
        source=str(src),
        include=["**/*.py"],
        text_column="text",
        min_chars=10,
        max_chars=100_000,
        val_fraction=0.2,
        test_fraction=0.2,
        scrub_secrets=scrub_secrets,
        out_dir=out,
        workers=1,
    )


def prepared_texts(out: Path) -> str:
    return "\n".join(
        t for s in SPLITS for t in pq.read_table(out / f"{s}.parquet").column("text").to_pylist()
    )


def test_prepare_and_tokenize_leave_no_secret(tmp_path: Path) -> None:
    src = secret_corpus(tmp_path / "src")
    prepared = tmp_path / "prepared"
    stats = run_prepare(src, prepared, scrub_secrets=True)
    expected = Counter(kind for _, _, kind in PLANTED)
    expected["Private Key"] += 1
    assert stats["secrets"] == dict(expected)
    assert json.loads((prepared / "stats.json").read_text())["secrets"] == dict(expected)
    texts = prepared_texts(prepared)
    for secret in SECRETS:
        assert secret not in texts
    assert texts.count("<secret:") == sum(expected.values())

    meta = tokenize(prepared, "scratch", 300, 2, tmp_path / "tok", tmp_path / "tokens")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    decoded = []
    for s in SPLITS:
        ids = np.fromfile(tmp_path / "tokens" / f"{s}.bin", dtype=meta["dtype"])
        decoded.append(tok.decode(ids.tolist()))
    decoded_all = "\n".join(decoded)
    assert "<secret:" in decoded_all
    for secret in SECRETS:
        assert secret not in decoded_all
    # nor in what the tokenizer learned
    vocab = (tmp_path / "tok" / "tokenizer.json").read_text()
    assert AWS_KEY not in vocab and JWT_SIGNATURE not in vocab


def test_without_scrubbing_secrets_remain(tmp_path: Path) -> None:
    src = secret_corpus(tmp_path / "src")
    stats = run_prepare(src, tmp_path / "prepared", scrub_secrets=False)
    assert stats["secrets"] == {}
    texts = prepared_texts(tmp_path / "prepared")
    for secret in SECRETS:
        assert secret in texts
    assert "<secret:" not in texts
