"""Redact secrets (keys, tokens, passwords) from documents before anything is tokenized.

A code model memorises credentials it sees, so every finding of detect-secrets' plugins is
replaced by a placeholder naming its type. Private key blocks are removed whole: the plugin
flags only the BEGIN line, but the secret is the body.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.plugins.base import BasePlugin

_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r".*?(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.S,
)
# Characters that can occur in a secret; a line without a run of 8 of them holds none.
_CANDIDATE = re.compile(r"[A-Za-z0-9+/=_\-.~:@]{8,}")
# The rest of a token (base64, base64url, hex) after a reported fragment of it.
_TOKEN_TAIL = r"[A-Za-z0-9+/=_\-]*"


@cache
def _plugins() -> tuple[BasePlugin, ...]:
    """Every plugin detect-secrets ships, with its default settings; the generic entropy
    detectors last, so a token both flag is named by its specific type (GitHub, Slack...)."""
    plugins = []
    for cls in get_mapping_from_secret_type_to_class().values():
        plugins.append(cls())
    return tuple(sorted(plugins, key=lambda p: (_is_generic(p), p.secret_type)))


def _is_generic(plugin: BasePlugin) -> bool:
    return plugin.secret_type.endswith("High Entropy String")


def placeholder(secret_type: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", secret_type.lower()).strip("_")
    return f"<secret:{slug}>"


def scrub(text: str, counts: Counter[str] | None = None) -> str:
    """Return `text` with every secret replaced by a placeholder; add findings to `counts`."""
    counts = Counter() if counts is None else counts

    def _block(m: re.Match[str]) -> str:
        counts["Private Key"] += 1
        return placeholder("Private Key")

    text = _PRIVATE_KEY_BLOCK.sub(_block, text)
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not _CANDIDATE.search(line):
            continue
        found: dict[str, str] = {}
        for plugin in _plugins():
            for secret in plugin.analyze_line(filename="document", line=line, line_number=i + 1):
                if not secret.secret_value:
                    continue
                # some plugins report a fragment (GitHub: only the "ghp" prefix group; JWT: no
                # signature), so redact the whole token that the fragment starts
                for m in re.finditer(re.escape(secret.secret_value) + _TOKEN_TAIL, line):
                    found.setdefault(m.group(), secret.type)
        # longest first, so a secret that contains another is replaced whole
        for value in sorted(found, key=len, reverse=True):
            if value in line:
                counts[found[value]] += line.count(value)
                line = line.replace(value, placeholder(found[value]))
        lines[i] = line
    return "\n".join(lines)
