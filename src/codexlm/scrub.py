"""Redact secrets (keys, tokens, passwords) from documents before anything is tokenized.

A code model memorises credentials it sees, so every value found is replaced, wherever it
occurs in the document, by a placeholder naming its type. Finding them is detect-secrets' job,
used as its own scanner uses it:

- each document is scanned under its real file name, so the keyword detector applies the
  rules of its file type (unquoted values in YAML/INI/TOML, quoted ones in code), and
  detect-secrets' transformers turn YAML, INI and .env-like files into quoted `key = "value"`
  lines that its entropy detectors can read;
- its filters (UUIDs, templated values, indirect references, sequential strings...) drop
  ordinary values, except the inline `pragma: allowlist secret` (a corpus author's pragma is
  no reason to teach a model their credential) and IP addresses (an address is not a
  credential: the public-IP detector is off);
- where detect-secrets has no detector, the project adds its own through the same plugin
  interface (`_PROJECT_PLUGINS`): Hugging Face and Google API keys, credentials in URL query
  strings, and values assigned to secret-named keys in configuration files and scripts,
  quoted or not (`DB_PASSWORD=...`, `password: ...`, `TWILIO_AUTH_TOKEN=...`).

False positives are kept down by a small allow-list of well-known constants (`_is_ordinary`):
digests of empty and test-vector inputs, encoding alphabets, git object ids (40/64 hex)
away from a secret-named key, and identifier-, path- or sentence-valued assignments (a
`password_field` that holds the name `password_hash`). Private key blocks are removed whole:
the plugin flags only the BEGIN line, but the secret is the body.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.core.scan import _is_filtered_out
from detect_secrets.plugins.base import BasePlugin, RegexBasedDetector
from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin
from detect_secrets.plugins.keyword import DENYLIST as KEYWORD_WORDS
from detect_secrets.plugins.keyword import KeywordDetector
from detect_secrets.settings import get_settings
from detect_secrets.transformers import get_transformed_file
from detect_secrets.util.code_snippet import get_code_snippet
from detect_secrets.util.filetype import FileType, determine_file_type

_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r".*?(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.S,
)
# The rest of a token (base64, base64url, hex) after a reported fragment of it.
_TOKEN_TAIL = r"[A-Za-z0-9+/=_\-]*"
# Off: an IP address is not a credential, and public addresses (DNS resolvers, examples) are
# ordinary in code.
_DISABLED_PLUGINS = {"IPPublicDetector"}
# Off: `# pragma: allowlist secret` is the corpus author's word, not ours.
_DISABLED_FILTERS = ("detect_secrets.filters.allowlist.is_line_allowlisted",)
# File types whose values are code literals: there, an unquoted right-hand side is an
# expression, not a secret.
_CODE_TYPES = {
    FileType.CLS,
    FileType.GO,
    FileType.JAVA,
    FileType.JAVASCRIPT,
    FileType.PHP,
    FileType.OBJECTIVE_C,
    FileType.PYTHON,
    FileType.SWIFT,
    FileType.TERRAFORM,
    FileType.C_SHARP,
    FileType.C,
    FileType.C_PLUS_PLUS,
}

# ---------------------------------------------------------------- the project's detectors

# A key whose name ends in one of these holds a credential (`DB_PASSWORD`, `auth_token`,
# `client_secret`, `db.password`); `token_ttl`, `max_tokens`, `password_file` do not end so.
_SECRET_WORDS = (
    r"(?:password|passwd|pwd|passphrase|secret|token|api[_\-]?key|"
    r"access[_\-]?key|secret[_\-]?key|private[_\-]?key|auth[_\-]?key|credentials?|sas)"
)
# starts where a run of name characters starts: a match attempt from inside the run would
# rescan it, quadratic on a long minified line
_SECRET_NAME = rf"(?<![A-Za-z0-9_.\-])[A-Za-z0-9_.\-]*?{_SECRET_WORDS}"


class HuggingFaceTokenDetector(RegexBasedDetector):
    """Hugging Face access tokens: the prefix is enough, whatever the entropy of the rest."""

    secret_type = "Hugging Face Token"  # pragma: allowlist secret
    denylist = (re.compile(r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{30,}"),)


class GitHubFineGrainedTokenDetector(RegexBasedDetector):
    """`github_pat_...`: detect-secrets 1.5 knows only the classic `ghp_`-style tokens."""

    secret_type = "GitHub Token"  # pragma: allowlist secret
    denylist = (re.compile(r"github_pat_[A-Za-z0-9_]{40,}"),)


class GoogleApiKeyDetector(RegexBasedDetector):
    secret_type = "Google API Key"  # pragma: allowlist secret
    denylist = (re.compile(r"AIza[0-9A-Za-z_\-]{35}"),)


class PrefixedTokenDetector(RegexBasedDetector):
    """API keys that announce themselves by a prefix detect-secrets 1.5 does not know: OpenAI
    project/service-account and Anthropic keys (`sk-proj-`, `sk-ant-api03-`...), Groq
    (`gsk_`), Replicate (`r8_`), xAI (`xai-`), DigitalOcean (`dop_v1_`), Shopify (`shpat_`),
    Google OAuth access tokens (`ya29.`)."""

    secret_type = "Prefixed API Token"  # pragma: allowlist secret
    denylist = (
        re.compile(
            r"(?<![A-Za-z0-9])sk-(?:proj-|ant-(?:api|admin)\d\d-|svcacct-|admin-)?"
            r"[A-Za-z0-9_\-]{32,}"
        ),
        re.compile(
            r"(?<![A-Za-z0-9])(?:gsk_[A-Za-z0-9]{40,}|r8_[A-Za-z0-9]{30,}|xai-[A-Za-z0-9]{40,}"
            r"|dop_v1_[a-f0-9]{64}|shpat_[a-fA-F0-9]{32}|ya29\.[A-Za-z0-9_\-]{30,})"
        ),
    )


class AuthorizationHeaderDetector(RegexBasedDetector):
    """The credential of an `Authorization: Bearer ...` / `Basic ...` header, quoted or not
    (curl commands, HTTP files, docs)."""

    secret_type = "Authorization Header"  # pragma: allowlist secret
    denylist = (re.compile(r"(?i)\b(?:bearer|basic)\s+([A-Za-z0-9\-._~+/]{16,}=*)"),)


class ConnectionStringDetector(RegexBasedDetector):
    """Key=value secrets inside connection strings (`AccountKey=`, `SharedAccessKey=`,
    `Password=` in ADO/ODBC strings) and a URL password with no user (`redis://:pw@host`)."""

    secret_type = "Connection String Secret"  # pragma: allowlist secret
    denylist = (
        re.compile(
            # inside a string: after its quote or a `;`, not a keyword argument `pwd=None`
            r"(?i)[;\"'](?:AccountKey|SharedAccessKey|SharedSecret|Password|Pwd)="
            r"([^;'\"\s(),]{6,})"
        ),
        re.compile(r"://:([^@/\s'\"]{4,})@"),
    )


class UrlQueryCredentialDetector(RegexBasedDetector):
    """`?key=...`, `&access_token=...`, `&sig=...` in a URL."""

    secret_type = "URL Query Credential"  # pragma: allowlist secret
    denylist = (
        re.compile(
            r"[?&;](?:[A-Za-z0-9_.\-]*(?:key|token|secret|password|passwd|pwd|sig|signature|"
            r"auth|credential|session)[A-Za-z0-9_.\-]*)=([^&#\s'\"<>;]{8,})",
            re.I,
        ),
    )


class SecretAssignmentDetector(BasePlugin):
    """A value assigned to a secret-named key. In configuration files, scripts and `.env`
    files (every non-code type) the value may be unquoted; in code it must be a string literal
    (detect-secrets' keyword detector covers passwords there, this adds tokens and keys)."""

    secret_type = "Secret Assignment"  # pragma: allowlist secret
    _quoted = re.compile(
        rf"(?i){_SECRET_NAME}['\"\]]{{0,2}}\s*(?::=|=>|=|:)\s*[@rbu]?"
        r"(['\"`])([^'\"`\n]{8,})\1"
    )
    _unquoted = re.compile(
        rf"(?i)(?:^|[\s;{{,(])(?:export\s+)?{_SECRET_NAME}['\"\]]{{0,2}}\s*(?::=|=|:)\s*"
        r"([^\s'\"`#;,]+)"
    )

    # .netrc: `machine host login user password secret`, separated by blanks
    _netrc = re.compile(r"(?i)(?:^|\s)password\s+(\S+)")

    def analyze_string(
        self, string: str, unquoted: bool = False, netrc: bool = False
    ) -> Iterator[str]:
        for m in self._quoted.finditer(string):
            yield m.group(2)
        if unquoted:
            for m in self._unquoted.finditer(string):
                yield m.group(1)
        if netrc:
            for m in self._netrc.finditer(string):
                yield m.group(1)

    def analyze_line(self, filename: str, line: str, line_number: int = 0, **kwargs: Any):
        unquoted = determine_file_type(filename) not in _CODE_TYPES
        found = super().analyze_line(
            filename=filename,
            line=line,
            line_number=line_number,
            unquoted=unquoted,
            netrc=filename.endswith("netrc"),
        )
        return {s for s in found if _is_credential_like(s.secret_value or "")}


_PROJECT_PLUGINS: tuple[type[BasePlugin], ...] = (
    HuggingFaceTokenDetector,
    GitHubFineGrainedTokenDetector,
    GoogleApiKeyDetector,
    PrefixedTokenDetector,
    AuthorizationHeaderDetector,
    ConnectionStringDetector,
    UrlQueryCredentialDetector,
    SecretAssignmentDetector,
)


# ---------------------------------------------------------------- the allow-list

# Inputs whose digests appear in code as constants and test vectors, not as secrets.
_WELL_KNOWN_INPUTS = (b"", b"abc", b"hello", b"hello world", b"test", b"foo", b"a")
_WELL_KNOWN_DIGESTS = frozenset(
    hashlib.new(algo, data).hexdigest()
    for algo in sorted(hashlib.algorithms_guaranteed)
    if not algo.startswith("shake")
    for data in _WELL_KNOWN_INPUTS
)
_HEX_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{56}|[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128}")
_HEX_32 = re.compile(r"[0-9a-f]{32}")
_DIGEST_WORD = re.compile(r"(?i)md5|sha|hash|digest|checksum|etag|fingerprint")
_NAMED_SECRET = re.compile(rf"(?i){_SECRET_NAME}|aws|bearer|authorization")
# Values of a secret-named key that name something instead of being it.
_IDENTIFIER = re.compile(
    r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+"  # snake_case
    r"|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"  # CONSTANT_NAME
    r"|(?:[A-Z][a-z]{2,}){2,}"  # ClassName
    r"|[A-Za-z][a-z0-9]*(?:-[A-Za-z][a-z0-9]*)+"  # kebab-case, X-Api-Key
    r"|(?:[a-z_][a-z0-9_]*|[A-Z_][A-Z0-9_]*)(?:\.(?:[a-z_][a-z0-9_]*|[A-Z_][A-Z0-9_]*))+"  # a.b
)
_PATH = re.compile(r"(?:~|\.{1,2})?/[\w.@+\-]+(?:/[\w.@+\-]*)*|[a-z0-9_.\-]+(?:/[a-z0-9_.\-]+)+/?")
_RANDOM_SEGMENT = re.compile(r"(?=[^/]*[A-Z])(?=[^/]*[a-z])(?=[^/]*[0-9])[^/]{12,}")
_SENTENCE = re.compile(r"[A-Za-z][A-Za-z,.:;!?'()\-]*(?: [A-Za-z,.:;!?'()\-]+)+ ?")
_NOT_A_VALUE = re.compile(
    r"(?i)true|false|none|null|nil|yes|no|on|off|\*+|x+|\.\.\.|"
    r"\$\{?\w+\}?|%\(\w+\)s|\{\{.*\}\}|<[^>]*>|\[[^\]]*\]|\w+\(.*\)"
)
# Found by a name or a position, not by the value's format: the value may be a name itself.
_NAME_BASED = {
    "Secret Keyword",
    "Secret Assignment",
    "URL Query Credential",
    "Authorization Header",
    "Connection String Secret",
}


def _is_alphabet(value: str) -> bool:
    """An encoding alphabet or a run of one (`ABC...XYZabc...xyz0123456789+/`,
    `0123456789abcdef`, `abcdfeghij...`): a few runs of consecutive characters, whereas a
    random string is almost all runs of one. At least 16 characters in runs of 5 on average:
    `abc123def456` is a (weak) password, not an alphabet."""
    chars = [c for c in value if c.isalnum()]
    if len(chars) < 16:
        return False
    runs = 1 + sum(ord(b) != ord(a) + 1 for a, b in itertools.pairwise(chars))
    return len(chars) >= 5 * runs


def _is_credential_like(value: str) -> bool:
    """Could this right-hand side of a secret-named key be the secret itself?"""
    return len(value) >= 4 and not _NOT_A_VALUE.fullmatch(value)


def _is_ordinary(value: str, line: str, secret_type: str) -> bool:
    """A well-known constant or a name, not a secret (see the module docstring)."""
    bare = value.rstrip("=")
    if value.lower() in _WELL_KNOWN_DIGESTS:
        return True
    if _is_alphabet(bare):
        return True
    if secret_type not in _NAME_BASED:
        if _NAMED_SECRET.search(line):
            return False
        return bool(
            _HEX_ID.fullmatch(value) or (_HEX_32.fullmatch(value) and _DIGEST_WORD.search(line))
        )
    if not _is_credential_like(value):
        return True
    if _IDENTIFIER.fullmatch(value) or _SENTENCE.fullmatch(value):
        return True
    return bool(_PATH.fullmatch(value)) and not _RANDOM_SEGMENT.search(value)


# ---------------------------------------------------------------- scanning


@cache
def _plugins() -> tuple[BasePlugin, ...]:
    """detect-secrets' plugins (defaults, minus `_DISABLED_PLUGINS`) and the project's;
    format-specific detectors first, so a token several flag is named by its specific type
    (GitHub, Slack...), then the name-based ones, then the generic entropy detectors."""
    settings = get_settings()
    settings.disable_filters(*_DISABLED_FILTERS)
    classes = [
        cls
        for cls in get_mapping_from_secret_type_to_class().values()
        if cls.__name__ not in _DISABLED_PLUGINS
    ]
    plugins = [cls() for cls in (*classes, *_PROJECT_PLUGINS)]
    return tuple(sorted(plugins, key=lambda p: (_rank(p), p.secret_type)))


@cache
def _gates() -> tuple[tuple[BasePlugin, Callable[[str, str], bool] | None], ...]:
    """Each plugin with a test of the whole document (and its lower-cased copy) that any line
    the plugin flags must pass: a match of its own denylist (made multi-line, so `^`/`$`
    still match at line ends), or of one of the secret words of the keyword and assignment
    detectors (lower-case literals, so searched in the lower-cased text: a case-insensitive
    alternation is several times slower); None (always run) for the entropy detectors.
    Exact, and it spares most documents most plugins."""

    def any_of(patterns: list[re.Pattern[str]], lowered: bool) -> Callable[[str, str], bool]:
        return lambda text, lower: any(p.search(lower if lowered else text) for p in patterns)

    gates = []
    for plugin in _plugins():
        if isinstance(plugin, RegexBasedDetector):
            denylist = [re.compile(r.pattern, r.flags | re.M) for r in plugin.denylist]
            gate = any_of(denylist, lowered=False)
        elif isinstance(plugin, KeywordDetector):
            gate = any_of([re.compile("|".join(KEYWORD_WORDS))], lowered=True)
        elif isinstance(plugin, SecretAssignmentDetector):
            gate = any_of([re.compile(_SECRET_WORDS)], lowered=True)
        else:
            gate = None
        gates.append((plugin, gate))
    return tuple(gates)


def _rank(plugin: BasePlugin) -> int:
    if plugin.secret_type.endswith("High Entropy String"):
        return 3
    if plugin.secret_type == "Secret Keyword":  # pragma: allowlist secret
        return 1
    return 2 if plugin.secret_type in _NAME_BASED else 0


def _line_sets(text: str, filename: str) -> Iterator[list[str]]:
    """The document's lines, then detect-secrets' transformed views of it (YAML, INI and
    .env-like files as quoted `key = "value"` lines), as its own file scan reads them."""
    yield text.split("\n")
    f = io.StringIO(text)
    f.name = filename  # the transformers choose by file name
    for eager in (False, True):
        try:
            lines = get_transformed_file(f, use_eager_transformers=eager)
        except (UnicodeError, ValueError, RecursionError):
            lines = None  # a document the parser chokes on is still scanned as plain lines
        if lines:
            yield [line.rstrip("\n") for line in lines]


def find_secrets(text: str, filename: str) -> dict[str, str]:
    """Every secret value in `text` (scanned as a file named `filename`) -> its type.

    The loop is detect-secrets' own line scan (`core.scan._process_line_based_plugins`) with
    its filters applied only to what a plugin found, in that order: most lines hold nothing,
    and its argument-injecting wrappers cost more than the regexes themselves."""
    found: dict[str, str] = {}
    line_sets = list(_line_sets(text, filename))
    whole = "\n".join(line for lines in line_sets for line in lines)
    # a plugin whose patterns match nowhere in the document cannot match on any of its lines
    lower = whole.lower()
    plugins = [p for p, gate in _gates() if gate is None or gate(whole, lower)]
    for lines in line_sets:
        for n, line in enumerate(lines, 1):
            line = line.rstrip()
            if not line:
                continue
            snippet = indirect = None
            for plugin in plugins:
                for secret in plugin.analyze_line(filename=filename, line=line, line_number=n):
                    value = secret.secret_value
                    if snippet is None:
                        snippet = get_code_snippet(lines, n)
                        # the line filters (indirect references: `x = f(...)`) are heuristics
                        # for detect-secrets' keyword and entropy detectors; a token of a known
                        # format, or a literal in a call (`Client(token="...")`), is still one
                        indirect = _is_filtered_out(
                            required_filter_parameters=["line"],
                            filename=filename,
                            line=line,
                            context=snippet,
                        )
                    heuristic = isinstance(plugin, KeywordDetector | HighEntropyStringsPlugin)
                    if not value or (indirect and heuristic):
                        continue
                    if _is_filtered_out(
                        required_filter_parameters=["secret"],
                        filename=filename,
                        secret=value,
                        plugin=plugin,
                        line=line,
                    ) or _is_filtered_out(
                        required_filter_parameters=["context"],
                        filename=filename,
                        secret=value,
                        plugin=plugin,
                        line=line,
                        context=snippet,
                    ):
                        continue
                    # some plugins report a fragment (GitHub: only the "ghp" prefix group; JWT:
                    # no signature): the whole token that the fragment starts is the secret
                    tails = re.findall(re.escape(value) + _TOKEN_TAIL, line)
                    values = {max(tails, key=len, default=value)}
                    if not isinstance(plugin, RegexBasedDetector):
                        # a keyword's value is whole, even where the line goes on to extend it
                        values.add(value)
                    for v in values:
                        if not _is_ordinary(v, line, secret.type):
                            found.setdefault(v, secret.type)
                            # the transformers escape quotes inside values
                            found.setdefault(v.replace('\\"', '"'), secret.type)
    return found


def placeholder(secret_type: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", secret_type.lower()).strip("_")
    return f"<secret:{slug}>"


def scrub(text: str, counts: Counter[str] | None = None, filename: str = "document.py") -> str:
    """Return `text` with every occurrence of every secret replaced by a placeholder naming
    its type; add the occurrences to `counts`. `filename` (the document's path in its source)
    selects detect-secrets' rules for its file type."""
    counts = Counter() if counts is None else counts

    def _block(m: re.Match[str]) -> str:
        counts["Private Key"] += 1
        return placeholder("Private Key")

    text = _PRIVATE_KEY_BLOCK.sub(_block, text)
    found = find_secrets(text, filename)
    if not found:
        return text
    # one pass over the document, longest value first, so a secret that contains another is
    # replaced whole and no placeholder is rescanned; a short value only as a whole word
    alternatives = [
        re.escape(v) if len(v) >= 8 else rf"(?<![\w]){re.escape(v)}(?![\w])"
        for v in sorted(found, key=len, reverse=True)
    ]

    def _one(m: re.Match[str]) -> str:
        kind = found[m.group()]
        counts[kind] += 1
        return placeholder(kind)

    return re.sub("|".join(alternatives), _one, text)
