"""Errors and the stage runner: user errors and machine faults, and `run_stage`, every stage's
entry point, which reports them as one line and exit code 2 (a traceback is left for the
project's own bugs), and says how to restore what `dvc repro` removed."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml


class UserError(Exception):
    """A mistake in params or data: reported as one line, never as a traceback."""


class MachineFault(UserError):
    """A fault of the machine (full disk, exhausted memory, a read-only or vanished folder):
    one line saying what, where and what to do, like a user error."""


class Stopped(BaseException):
    """SIGTERM outside the training loop: unwinds like Ctrl-C, so temp folders are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# the errno values that are the machine's, not the project's: what each means for the user
FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
}


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem holding path (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def describe_fault(e: OSError) -> str | None:
    """One line for an OSError the machine caused, naming the path; None for any other."""
    what = FAULTS.get(e.errno or -1)
    if what is None:
        return None
    where = e.filename if e.filename is not None else "a file this stage writes"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(Path(e.filename)) if e.filename else None
        left = f" ({free:,} bytes free there)" if free is not None else ""
        return f"{what} writing {where}{left}; free space on that filesystem and rerun"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{what}: {where}; make it writable (or run where it is) and rerun"
    return (
        f"{what}: {where}; it (or a folder above it) was removed or renamed while the stage "
        "ran: rerun once nothing else changes it"
    )


def is_out_of_memory(e: BaseException) -> bool:
    """Memory exhausted: MemoryError (numpy, Python), torch.OutOfMemoryError (CUDA, a
    RuntimeError), or torch's CPU allocator failing, which raises a plain RuntimeError
    (checked by its message here, so that this module needs no torch)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e)


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


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
    stage = os.environ.get("DVC_STAGE", "").rsplit(":", 1)[-1] or Path(sys.argv[0]).stem
    signal.signal(signal.SIGTERM, _stop)  # the training loop installs its own while it runs
    try:
        main()
    except UserError as e:
        print(f"error: {e}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        line = describe_fault(e)
        if line is None:
            raise
        print(f"error: {stage}: {line}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        print(f"error: {stage}: out of memory" + (f"; {hint}" if hint else ""), file=sys.stderr)
        sys.exit(2)
    except (Stopped, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        name = signal.Signals(signum).name
        print(
            f"{stage}: stopped by {name}; outputs are replaced only when complete, so none is "
            "half written: rerun the stage" + (f"; {hint}" if hint else ""),
            file=sys.stderr,
        )
        sys.exit(128 + signum)
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
