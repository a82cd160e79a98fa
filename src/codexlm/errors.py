"""User errors and the stage entry point that turns them into one line and exit code 2."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml


class UserError(Exception):
    """A mistake in params or data: reported as one line, never as a traceback."""


def restore_hint() -> str | None:
    """Under `dvc repro`, which removes a stage's outputs before running it: how to get the
    previous ones back. Only cached outputs can be, and only when dvc.lock records them (None
    otherwise, and outside dvc)."""
    stage = os.environ.get("DVC_STAGE")  # dvc sets it for every stage command
    if not stage:
        return None
    root = Path(os.environ.get("DVC_ROOT", "."))
    name = stage.rsplit(":", 1)[-1]
    try:
        outs = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"][name]
        outs = outs.get("outs", [])
        recorded = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))["stages"]
        if name not in recorded:
            return None
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    # persist outputs are kept; `cache: false` ones are removed but have no copy to restore
    cached = [
        out if isinstance(out, str) else next(iter(out))
        for out in outs
        if isinstance(out, str)
        or (
            isinstance(out, dict)
            and not any(
                isinstance(o, dict) and (o.get("persist") or o.get("cache") is False)
                for o in out.values()
            )
        )
    ]
    if not cached:
        return None
    removed = f"dvc removed {', '.join(cached)} before running stage {stage!r}"
    if all(_in_cache(root, recorded[name], out) for out in cached):
        return f"{removed}; `dvc checkout {stage}` restores the previous version from the cache"
    # a fresh clone has a dvc.lock but no cache: nothing to restore, the stage recomputes it
    return f"{removed}; no copy is in the local cache, so `dvc repro` recomputes it"


def _in_cache(root: Path, locked: dict, out: str) -> bool:
    """Whether the local DVC cache holds the version of `out` that dvc.lock records (for a
    folder, its listing: DVC's own checkout says which files, if any, are missing)."""
    entry = next((o for o in locked.get("outs", []) if o.get("path") == out), None)
    md5 = entry.get("md5") if isinstance(entry, dict) else None
    if not isinstance(md5, str) or len(md5) < 3:
        return False
    return (root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).is_file()


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a UserError prints one line to stderr and exits with code 2.
    Any failure under `dvc repro` ends with a line saying how to restore the outputs it lost."""
    hint = restore_hint()
    try:
        main()
    except UserError as e:
        print(f"error: {e}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:
        if hint and e.code not in (0, None):
            print(hint, file=sys.stderr)
        raise
    except BaseException as e:
        if not hint:
            raise
        traceback.print_exc()  # first, so that the hint is the last line
        print(hint, file=sys.stderr)
        sys.exit(130 if isinstance(e, KeyboardInterrupt) else 1)
