"""A planted-secrets corpus and a corpus of ordinary values, both generated here at run time.

Every planted kind is a small file of its real type (`.env`, YAML, INI, code...) holding
random values drawn for this run; none of them may survive scrubbing, in any file type, and
(in the pipeline test) neither in `data/prepared` nor in the decoded token files. Every
ordinary value (digests, alphabets, addresses, names of secrets rather than secrets) must
come through untouched. docs/data.md quotes the two counts (`PLANTED_KINDS`, `ORDINARY_KINDS`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import copy_repo, run, tiny_params
from transformers import AutoTokenizer

from codexlm.corpus import SPLITS, prepare
from codexlm.scrub import scrub
from codexlm.tokenizer import tokenize

ALNUM = string.ascii_letters + string.digits
ALNUM_SORTED = string.digits + string.ascii_uppercase + string.ascii_lowercase
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"
SYMBOLS = "!#$%&*+-.:=?@^_~"
BEGIN, END = "-----BEGIN ", "-----END "

# A kind: rng -> (file name, text, the secret values that must not survive)
Kind = Callable[[random.Random], tuple[str, str, list[str]]]


def draw(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def password(rng: random.Random) -> str:
    """A random password of letters, digits and symbols (always all three)."""
    chars = [rng.choice(string.ascii_letters), rng.choice(string.digits), rng.choice(SYMBOLS)]
    chars += [rng.choice(ALNUM + SYMBOLS) for _ in range(rng.randint(9, 17))]
    rng.shuffle(chars)
    return "".join(chars).lstrip("$")  # `$x` reads as a variable reference


def _jwt(rng: random.Random) -> str:
    def seg(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"sub": draw(rng, string.digits, 10), "name": "Jane Doe", "iat": 1516239022}
    return ".".join([seg({"alg": "HS256", "typ": "JWT"}), seg(claims), draw(rng, URLSAFE, 43)])


def _pem(rng: random.Random, kind: str) -> tuple[str, list[str]]:
    body = [draw(rng, B64, 64) for _ in range(5)]
    header = f"{kind} PRIVATE KEY-----"
    return "\n".join([BEGIN + header, *body, END + header]), body


def _aws_id(rng: random.Random) -> str:
    return "AKIA" + draw(rng, string.ascii_uppercase + string.digits, 16)


def _code(body: str) -> str:
    return f"import os\n\n\ndef main():\n    return 0\n\n{body}\n\nprint(main())\n"


PLANTED: dict[str, Kind] = {}


def planted(fn: Kind) -> Kind:
    PLANTED[fn.__name__] = fn
    return fn


@planted
def aws_access_key_id(rng):
    k = _aws_id(rng)
    return "aws.py", _code(f'AWS_ACCESS_KEY_ID = "{k}"'), [k]


@planted
def aws_secret_key_in_env(rng):
    k, s = _aws_id(rng), draw(rng, B64, 40)
    return ".env", f"AWS_ACCESS_KEY_ID={k}\nAWS_SECRET_ACCESS_KEY={s}\nREGION=eu-west-1\n", [k, s]


@planted
def aws_secret_key_in_code(rng):
    s = draw(rng, B64, 40)
    return "boto.py", _code(f'aws_secret_access_key = "{s}"'), [s]


@planted
def github_classic_in_comment(rng):
    t = "gh" + "p_" + draw(rng, ALNUM, 36)
    return "ci.py", _code(f"# token: {t} (rotate me)"), [t]


@planted
def github_fine_grained_in_env(rng):
    t = "github_" + "pat_" + draw(rng, ALNUM, 22) + "_" + draw(rng, ALNUM, 59)
    return ".env", f"GITHUB_TOKEN={t}\n", [t]


@planted
def github_fine_grained_in_a_call(rng):
    t = "github_" + "pat_" + draw(rng, ALNUM, 22) + "_" + draw(rng, ALNUM, 59)
    return "gh.py", _code(f'gh = Github(auth=Token("{t}"))'), [t]


@planted
def gitlab_token_in_yaml(rng):
    t = "glpat-" + draw(rng, URLSAFE, 20)
    return "ci.yml", f"deploy:\n  image: python:3.11\n  token: {t}\n", [t]


@planted
def slack_bot_token(rng):
    t = "xo" + "xb-" + draw(rng, string.digits, 12) + "-" + draw(rng, string.digits, 13)
    t += "-" + draw(rng, string.ascii_lowercase + string.digits, 24)
    return "bot.py", _code(f'SLACK = "{t}"'), [t]


@planted
def slack_webhook(rng):
    url = "https://hooks.slack.com/services/T" + draw(rng, string.ascii_uppercase, 8)
    url += "/B" + draw(rng, string.ascii_uppercase, 8) + "/" + draw(rng, ALNUM, 24)
    return "notify.py", _code(f'WEBHOOK = "{url}"'), [url.rsplit("/", 1)[1]]


@planted
def stripe_live_key_in_js(rng):
    k = "sk_" + "live_" + draw(rng, ALNUM, 24)
    return "pay.js", f"const stripe = require('stripe')('{k}');\nmodule.exports = stripe;\n", [k]


@planted
def twilio_auth_token_in_env(rng):
    t = draw(rng, HEX, 32)
    sid = "AC" + draw(rng, HEX, 32)
    return ".env", f"TWILIO_ACCOUNT_SID={sid}\nTWILIO_AUTH_TOKEN={t}\n", [t, sid]


@planted
def twilio_api_key(rng):
    k = "SK" + draw(rng, HEX, 32)
    return "sms.py", _code(f"client = Client('{k}', os.environ['SECRET'])"), [k]


@planted
def sendgrid_key(rng):
    k = "SG." + draw(rng, URLSAFE, 22) + "." + draw(rng, URLSAFE, 43)
    return "mail.py", _code(f"sg = SendGridAPIClient('{k}')"), [k]


@planted
def openai_key(rng):
    k = "sk-" + draw(rng, ALNUM, 20) + "T3Blbk" + "FJ" + draw(rng, ALNUM, 20)
    return "chat.py", _code(f'openai.api_key = "{k}"'), [k]


@planted
def npm_token_in_npmrc(rng):
    t = "npm_" + draw(rng, ALNUM, 36)
    return ".npmrc", f"//registry.npmjs.org/:_authToken={t}\n", [t]


@planted
def pypi_token_in_pypirc(rng):
    t = "pypi-AgEIcHlwaS5vcmc" + draw(rng, URLSAFE, 80)
    return ".pypirc", f"[pypi]\nusername = __token__\npassword = {t}\n", [t]


@planted
def discord_bot_token(rng):
    t = "M" + draw(rng, URLSAFE, 24) + "." + draw(rng, URLSAFE, 6) + "." + draw(rng, URLSAFE, 27)
    return "discord_bot.py", _code(f"bot.run('{t}')"), [t]


@planted
def telegram_bot_token(rng):
    t = draw(rng, string.digits, 9) + ":" + draw(rng, URLSAFE, 35)
    return "tg.py", _code(f'BOT = "{t}"'), [t]


@planted
def mailchimp_key(rng):
    k = draw(rng, HEX, 32) + "-us" + str(rng.randint(1, 20))
    return "news.py", _code(f'MC = "{k}"'), [k]


@planted
def json_web_token(rng):
    t = _jwt(rng)
    return "api.py", _code(f"headers = {{'Authorization': 'Bearer {t}'}}"), [t]


@planted
def rsa_private_key(rng):
    pem, body = _pem(rng, "RSA")
    return "sign.py", _code(f"KEY = '''\n{pem}\n'''"), body


@planted
def openssh_private_key_file(rng):
    pem, body = _pem(rng, "OPENSSH")
    return "id_ed25519", pem + "\n", body


@planted
def basic_auth_in_url(rng):
    pw = draw(rng, ALNUM, 16)
    return "fetch.py", _code(f'URL = "https://deploy:{pw}@git.example.com/repo.git"'), [pw]


@planted
def database_url_in_env(rng):
    pw = draw(rng, ALNUM, 18)
    return ".env", f"DATABASE_URL=postgresql://app:{pw}@db.internal:5432/app\n", [pw]


@planted
def hf_token_low_entropy(rng):
    # a few distinct characters: entropy far below detect-secrets' 4.5 bits
    t = "hf_" + draw(rng, "abcdeXY", 34)
    return "hub.py", _code(f'HF = "{t}"'), [t]


@planted
def hf_token_in_a_call(rng):
    t = "hf_" + draw(rng, ALNUM, 34)
    return "hub_login.py", _code(f'login(token="{t}")'), [t]


@planted
def google_key_in_url_query(rng):
    k = "AIza" + draw(rng, URLSAFE, 35)
    url = f"https://maps.googleapis.com/maps/api/geocode/json?address=Paris&key={k}"
    return "geo.py", _code(f'r = requests.get("{url}")'), [k]


@planted
def api_key_in_url_query(rng):
    k = draw(rng, ALNUM, 32)
    return "README.md", f"Call `https://api.example.com/v1/data?api_key={k}&format=json`.\n", [k]


@planted
def env_password_unquoted(rng):
    pw = password(rng)
    return ".env", f"DB_HOST=localhost\nDB_PASSWORD={pw}\nDB_PORT=5432\n", [pw]


@planted
def yaml_password_unquoted(rng):
    pw = password(rng).replace("#", "x").replace(":", "x").lstrip("!&*@%?-")
    return "config.yaml", f"database:\n  user: app\n  password: {pw}\n  port: 5432\n", [pw]


@planted
def ini_password(rng):
    pw = password(rng).replace("#", "x").replace(";", "x").replace("%", "x")
    return "app.ini", f"[database]\nuser = app\npassword = {pw}\n", [pw]


@planted
def password_without_a_token_like_run(rng):
    # groups of three letters between symbols: no run of 8 token characters anywhere
    pw = "".join(draw(rng, string.ascii_lowercase, 3) + rng.choice("#!%&*") for _ in range(4))
    return "login.py", _code(f'passwd = "{pw}"'), [pw]


@planted
def password_repeated_in_a_comment(rng):
    pw = draw(rng, ALNUM, 14)
    body = f'password = "{pw}"\n# the old password was {pw}, see ticket 12\nLOG = "{pw}"'
    return "repeat.py", _code(body), [pw]


@planted
def password_marked_allowlisted_by_its_author(rng):
    pw = draw(rng, ALNUM, 15)
    return "allow.py", _code(f'db_password = "{pw}"  # pragma: allowlist secret'), [pw]


@planted
def sequential_looking_password_in_multi_document_yaml(rng):
    # runs of consecutive characters, but too short and too broken to be an alphabet
    pw = "".join(
        draw(rng, string.ascii_lowercase, 1) + draw(rng, string.digits, 2) for _ in range(4)
    )
    pw = "abc" + pw + "456"
    return "multi.yaml", f"%YAML 1.1\n---\npassword: {pw}\n...\n---\nuser: app\n", [pw]


@planted
def password_whose_value_the_line_extends(rng):
    pw = draw(rng, ALNUM, 10)
    return "ext.py", _code(f'password = "{pw}"; legacy = {pw}_v1'), [pw]


@planted
def openai_project_key(rng):
    k = "sk-" + "proj-" + draw(rng, URLSAFE, 64)
    return "llm.py", _code(f'client = OpenAI(api_key="{k}")'), [k]


@planted
def anthropic_key_in_env(rng):
    k = "sk-" + "ant-api03-" + draw(rng, URLSAFE, 93)
    return ".env", f"ANTHROPIC_KEY_FOR_CI={k}\n", [k]


@planted
def groq_key(rng):
    k = "gsk" + "_" + draw(rng, ALNUM, 52)
    return "groq_client.py", _code(f"GROQ = '{k}'"), [k]


@planted
def bearer_token_in_a_curl_command(rng):
    t = draw(rng, ALNUM, 40)
    text = f'#!/bin/sh\ncurl -H "Authorization: Bearer {t}" https://api.example.com/v1/me\n'
    return "call.sh", text, [t]


@planted
def bearer_token_in_a_call(rng):
    t = draw(rng, ALNUM + "-_", 48)
    return (
        "api_call.py",
        _code(f'requests.get(URL, headers={{"Authorization": "Bearer {t}"}})'),
        [t],
    )


@planted
def api_token_keyword_argument_in_a_call(rng):
    t = draw(rng, ALNUM, 30)
    return "sdk.py", _code(f'client = Client(api_token="{t}", timeout=5)'), [t]


@planted
def basic_auth_header_in_http_file(rng):
    cred = base64.b64encode(f"deploy:{draw(rng, ALNUM, 14)}".encode()).decode()
    return "requests.http", f"GET https://example.com/\nAuthorization: Basic {cred}\n", [cred]


@planted
def service_bus_connection_string(rng):
    k = draw(rng, B64, 43) + "="
    conn = (
        f"Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey={k}"
    )
    return "bus.py", _code(f'CONN = "{conn}"'), [k]


@planted
def odbc_password(rng):
    pw = draw(rng, ALNUM, 14)
    conn = f"Driver={{ODBC Driver 18}};Server=db;Uid=app;Pwd={pw};Encrypt=yes"
    return "odbc.py", _code(f'CONN = "{conn}"'), [pw]


@planted
def redis_url_without_user(rng):
    pw = draw(rng, ALNUM, 20)
    return "cache.py", _code(f'REDIS_URL = "redis://:{pw}@cache.internal:6379/0"'), [pw]


@planted
def netrc_password(rng):
    pw = password(rng)
    return ".netrc", f"machine api.example.com\n  login deploy\n  password {pw}\n", [pw]


@planted
def azure_storage_key(rng):
    k = draw(rng, B64, 86) + "=="
    conn = f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={k};"
    return "blob.py", _code(f'CONN = "{conn}"'), [k]


@planted
def base64_blob(rng):
    b = draw(rng, B64, 48)
    return "blob_const.py", _code(f'blob = "{b}"'), [b]


@planted
def properties_password(rng):
    pw = password(rng)
    return "app.properties", f"db.url=jdbc:mysql://db/app\ndb.password={pw}\n", [pw]


@planted
def toml_api_key(rng):
    k = draw(rng, ALNUM, 24)
    return "settings.toml", f'[service]\nname = "acme"\napi_key = "{k}"\n', [k]


@planted
def shell_exported_token(rng):
    t = draw(rng, ALNUM, 28)
    return "deploy.sh", f"#!/bin/sh\nexport API_TOKEN={t}\ncurl -H x https://example.com\n", [t]


@planted
def go_password(rng):
    pw = draw(rng, ALNUM, 16)
    text = f'package main\n\nfunc main() {{\n\tpassword := "{pw}"\n\t_ = password\n}}\n'
    return "main.go", text, [pw]


@planted
def json_client_secret(rng):
    s = draw(rng, ALNUM + "-_", 32)
    doc = {"client_id": "web-app", "client_secret": s, "redirect_uri": "http://localhost"}
    return "credentials.json", json.dumps(doc, indent=2) + "\n", [s]


@planted
def square_oauth_secret(rng):
    s = "sq0csp-" + draw(rng, URLSAFE, 43)
    return "square.py", _code(f'SQUARE = "{s}"'), [s]


# ---------------------------------------------------------------- ordinary values

# A kind: rng -> (file name, text, the values that must survive)
ORDINARY: dict[str, Kind] = {}


def ordinary(fn: Kind) -> Kind:
    ORDINARY[fn.__name__] = fn
    return fn


def _public_ip(rng: random.Random) -> str:
    return f"{rng.choice([8, 34, 52, 93, 151, 185])}.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"  # noqa: E501


@ordinary
def commit_sha_quoted(rng):
    sha = draw(rng, HEX, 40)
    return "pin.py", _code(f'REVISION = "{sha}"  # the commit we test against'), [sha]


@ordinary
def sha256_of_empty_input(rng):
    d = hashlib.sha256(b"").hexdigest()
    return "digests.py", _code(f'EMPTY_SHA256 = "{d}"'), [d]


@ordinary
def md5_of_empty_input(rng):
    d = hashlib.md5(b"").hexdigest()
    return "md5.py", _code(f"assert hashlib.md5(b'').hexdigest() == '{d}'"), [d]


@ordinary
def sha1_test_vector(rng):
    d = hashlib.sha1(b"abc").hexdigest()
    return "vectors.py", _code(f'assert hashlib.sha1(b"abc").hexdigest() == "{d}"'), [d]


@ordinary
def sha512_of_empty_input(rng):
    d = hashlib.sha512(b"").hexdigest()
    return "sha512.py", _code(f'EMPTY = "{d}"'), [d]


@ordinary
def base64_alphabet(rng):
    a = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    return "b64.py", _code(f'ALPHABET = "{a}"'), [a]


@ordinary
def urlsafe_alphabet(rng):
    a = string.ascii_letters + string.digits + "-_"
    return "b64url.py", _code(f"CHARS = '{a}'"), [a]


@ordinary
def base32_alphabet(rng):
    a = string.ascii_uppercase + "234567"
    return "b32.py", _code(f'B32 = "{a}"'), [a]


@ordinary
def base58_alphabet(rng):
    a = "".join(c for c in ALNUM_SORTED if c not in "0OIl")
    return "b58.py", _code(f'B58 = "{a}"'), [a]


@ordinary
def crockford_alphabet(rng):
    a = "".join(c for c in string.digits + string.ascii_uppercase if c not in "ILOU")
    return "crockford.py", _code(f'SYMBOLS = "{a}"'), [a]


@ordinary
def shuffled_alphabet_with_a_typo(rng):
    # the standard library's shlex.py has exactly this (f and e swapped)
    a = string.ascii_lowercase.replace("ef", "fe")
    return "lexer.py", _code(f"self.wordchars = '{a}'"), [a]


@ordinary
def hex_alphabet(rng):
    return "hexd.py", _code(f'HEXDIGITS = "{HEX}"'), [HEX]


@ordinary
def public_ip_addresses(rng):
    ips = [_public_ip(rng) for _ in range(3)]
    return "net.py", _code(f"RESOLVERS = {ips!r}"), ips


@ordinary
def public_ip_in_yaml(rng):
    ip = _public_ip(rng)
    return "dns.yaml", f"dns:\n  primary: {ip}\n", [ip]


@ordinary
def identifier_valued_password_field(rng):
    code = 'password_field = "password_hash"'  # pragma: allowlist secret
    return "forms.py", _code(code), ["password_hash"]


@ordinary
def path_valued_secret_file(rng):
    return "paths.py", _code('SECRET_KEY_FILE = "/etc/myapp/secret.key"'), ["/etc/myapp/secret.key"]


@ordinary
def constant_name_of_a_password(rng):
    code = 'PASSWORD_ENV = "DB_PASSWORD"'  # pragma: allowlist secret
    return "envnames.py", _code(code), ["DB_PASSWORD"]


@ordinary
def header_name_of_an_api_key(rng):
    code = 'API_KEY_HEADER = "X-Api-Key"'  # pragma: allowlist secret
    return "headers.py", _code(code), ["X-Api-Key"]


@ordinary
def prompt_mentioning_a_password(rng):
    code = 'password_prompt = "Enter your password: "'  # pragma: allowlist secret
    return "prompt.py", _code(code), ["Enter your password"]


@ordinary
def templated_password_in_yaml(rng):
    return "compose.yaml", "db:\n  password: ${DB_PASSWORD}\n", ["${DB_PASSWORD}"]


@ordinary
def env_reference_in_env_file(rng):
    return ".env", "DB_PASSWORD=$VAULT_DB_PASSWORD\n", ["$VAULT_DB_PASSWORD"]


@ordinary
def url_with_an_ordinary_query(rng):
    url = "https://docs.python.org/3/search.html?q=hashlib&check_keywords=yes"
    return "docs.py", _code(f'DOCS = "{url}"'), [url]


@ordinary
def version_string(rng):
    v = f"{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 30)}"
    return "version.py", _code(f'__version__ = "{v}"'), [v]


@ordinary
def uuid_request_id(rng):
    u = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return "ids.py", _code(f'request_id = "{u}"'), [u]


@ordinary
def indirect_reference(rng):
    return "cfg.py", _code('secret = os.environ["APP_SECRET"]'), ['os.environ["APP_SECRET"]']


@ordinary
def path_valued_password_file_in_yaml(rng):
    path = "/run/secrets/db_password"
    return "svc.yaml", f"db:\n  password_file: {path}\n", [path]


@ordinary
def token_type_word(rng):
    return "oauth.py", _code('token_type = "bearer"\nmax_tokens = 4096'), ['"bearer"', "4096"]


@ordinary
def kebab_case_secret_name(rng):
    code = 'secret_name = "db-password-prod"'  # pragma: allowlist secret
    return "gcp.py", _code(code), ["db-password-prod"]


@ordinary
def ini_without_secrets(rng):
    return "server.ini", "[server]\nport = 8080\nhost = example.org\nworkers = 4\n", ["example.org"]


@ordinary
def bearer_header_from_a_variable(rng):
    code = 'headers = {"Authorization": f"Bearer {token}"}'
    return "auth_hdr.py", _code(code), [code]


@ordinary
def bearer_placeholder_in_docs(rng):
    line = "curl -H 'Authorization: Bearer YOUR_ACCESS_TOKEN' https://api.example.com"
    return "USAGE.md", line + "\n", [line]


@ordinary
def connection_string_template(rng):
    conn = "Server=db;Uid=app;Pwd=${DB_PASSWORD};"
    return "conn_tpl.py", _code(f'CONN = "{conn}"'), [conn]


@ordinary
def password_keyword_argument_default(rng):
    code = "def open(self, name, mode='r', pwd=None):\n    return self._open(name, pwd=pwd)"
    return "archive.py", _code(code), [code]


PLANTED_KINDS = len(PLANTED)
ORDINARY_KINDS = len(ORDINARY)
SEEDS = (0, 1, 2)


def test_the_corpora_are_as_large_as_the_docs_say() -> None:
    assert PLANTED_KINDS >= 30 and ORDINARY_KINDS >= 20
    page = (Path(__file__).resolve().parents[1] / "docs/data.md").read_text()
    assert f"all {PLANTED_KINDS} planted kinds" in page
    assert f"all {ORDINARY_KINDS} ordinary kinds" in page


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_planted_secret_is_redacted(kind: str, seed: int) -> None:
    name, text, secrets = PLANTED[kind](random.Random(f"{kind}:{seed}"))
    out = scrub(text, filename=name)
    for s in secrets:
        assert s not in out, f"{kind} survived in {name}:\n{out}"
    assert "<secret:" in out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(ORDINARY))
def test_ordinary_value_is_intact(kind: str, seed: int) -> None:
    name, text, values = ORDINARY[kind](random.Random(f"{kind}:{seed}"))
    assert scrub(text, filename=name) == text
    for v in values:
        assert v in text


# ---------------------------------------------------------------- through the pipeline


def write_corpus(root: Path, seed: int) -> tuple[list[str], list[str]]:
    """Every planted and ordinary kind as files under root (each in its own folder, so the
    several `.env` files keep their names); returns (secrets, ordinary values)."""
    secrets, values = [], []
    for group, kinds in (("planted", PLANTED), ("ordinary", ORDINARY)):
        for kind, make in sorted(kinds.items()):
            name, text, found = make(random.Random(f"{kind}:{seed}"))
            path = root / group / kind / name
            path.parent.mkdir(parents=True)
            path.write_text(text)
            (secrets if group == "planted" else values).extend(found)
    return secrets, values


def test_no_planted_secret_reaches_prepared_data_or_tokens(tmp_path: Path) -> None:
    secrets, values = write_corpus(tmp_path / "src", seed=7)
    stats = prepare(
        source=str(tmp_path / "src"),
        include=["**/*"],
        text_column="text",
        min_chars=10,
        max_chars=100_000,
        val_fraction=0.2,
        test_fraction=0.2,
        scrub_secrets=True,
        out_dir=tmp_path / "prepared",
        workers=1,
    )
    assert sum(stats["documents"].values()) == PLANTED_KINDS + ORDINARY_KINDS
    texts = "\n".join(
        t
        for s in SPLITS
        for t in pq.read_table(tmp_path / "prepared" / f"{s}.parquet").column("text").to_pylist()
    )
    leaked = [s for s in secrets if s in texts]
    assert not leaked
    damaged = [v for v in values if v not in texts]
    assert not damaged

    meta = tokenize(tmp_path / "prepared", "scratch", 300, 2, tmp_path / "tok", tmp_path / "tokens")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    decoded = "\n".join(
        tok.decode(np.fromfile(tmp_path / "tokens" / f"{s}.bin", dtype=meta["dtype"]).tolist())
        for s in SPLITS
    )
    assert "<secret:" in decoded
    assert not [s for s in secrets if s in decoded]


@pytest.mark.slow
def test_no_planted_secret_in_any_pipeline_output(tmp_path: Path) -> None:
    """`dvc repro` on both corpora: no planted value in any file of data/, models/ or
    reports/ (samples.md and models/export included), none in the decoded token files."""
    secrets, values = write_corpus(tmp_path / "corpus", seed=11)
    p = tiny_params(str(tmp_path / "corpus"))
    p["data"]["include"] = ["**/*"]
    repo = copy_repo(tmp_path / "repo", p)
    run(["dvc", "repro"], repo)
    blobs = [
        f.read_bytes()
        for d in ("data", "models", "reports")
        for f in (repo / d).rglob("*")
        if f.is_file()
    ]
    meta = json.loads((repo / "data/tokens/meta.json").read_text())
    tok = AutoTokenizer.from_pretrained(repo / "models/tokenizer")
    decoded = "\n".join(
        tok.decode(np.fromfile(repo / "data/tokens" / f"{s}.bin", dtype=meta["dtype"]).tolist())
        for s in SPLITS
    )
    # the parquet files are compressed: their texts are read, not grepped
    prepared = "\n".join(
        t
        for s in SPLITS
        for t in pq.read_table(repo / "data/prepared" / f"{s}.parquet").column("text").to_pylist()
    )
    for s in secrets:
        assert s not in decoded and s not in prepared
        assert not any(s.encode() in b for b in blobs), s
    assert (repo / "reports/evaluate/samples.md").is_file()
    assert (repo / "models/export/model.safetensors").is_file()
    assert all(v in decoded for v in values)
