"""params.yaml's text as YAML 1.2 reads it (exponent floats, unique keys): one reader for the
schema (`codexlm.params`) and for the GPU benchmark image, which has no pydantic and takes the
train block's keys and values from here alone (bench/common.load_params)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from codexlm.errors import UserError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats.

    PyYAML implements YAML 1.1, where `3e-4` (no dot) is a string. `dvc exp run -S
    train.lr=3e-4` writes exactly that, so without this resolver lr would be "3e-4".
    """


def _unique_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """YAML says mapping keys are unique; PyYAML silently keeps the last. Refuse instead: a
    duplicated key in params.yaml is a mistake whichever value was meant."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(f"duplicate key {key!r} at line {line} (first at line {seen[key]})")
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    pass


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run from the repository root)") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start})"
        ) from None
    except _DuplicateKey as e:
        raise UserError(f"{path}: {e}; YAML keys are unique") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be params") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's message in one line: what is wrong and where."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem and mark:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())
