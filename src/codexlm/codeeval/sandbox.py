"""Run one untrusted Python program contained: the sandbox for model-written code.

Each program gets a fresh interpreter (`-I`, empty environment, stdin closed, output to a
size-capped file), its own directory and kernel limits set by `prlimit` (never by
`preexec_fn`, which is unsafe with threads). Around that, the strongest of these that works
on this machine:

- `full`: bubblewrap under a non-root uid: new user, PID, network, IPC and UTS namespaces,
  a read-only view of the host, a private size-capped tmpfs as /tmp and as the working
  directory, and the namespace killed with its parent.
- `namespaces`: `unshare` (root only) PID + network namespaces under a non-root uid; the host
  filesystem is as writable as it is for that uid (world-writable folders such as /tmp).
- `process`: rlimits and a process group only: no network isolation, and a grandchild that
  called setsid() survives the kill. Only ever used when explicitly accepted.

Which one works is not assumed: `probe` runs a program through each and checks from inside
(uid, limits, namespaces, a write to the host, a connection to a listener we own) and from
outside (no file appeared, no connection accepted). A program passes only when the trusted
runner reports, with a random nonce the program never sees in its source, its environment
or its arguments, that the code returned: an exit status or printed text cannot fake it.
"""

from __future__ import annotations

import contextlib
import json
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
REPORT_BYTES = 1 << 16  # what we read of the runner's report pipe
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
    ),
}
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; `make install` does it as root)"
)

# The trusted part of every program: it reads the nonce from a pipe (then closes it), runs the
# code in a fresh namespace and reports on another pipe. Only `exec` returning normally is a
# pass; SystemExit, os._exit or a closed report pipe are not.
RUNNER = r"""
import os, sys
def _main():
    nonce_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
    nonce = os.read(nonce_fd, 64).decode()
    os.close(nonce_fd)
    def report(status, detail=""):
        line = f"{nonce} {status} {detail}".replace("\n", " ")[:500] + "\n"
        os.write(report_fd, line.encode("utf-8", "replace"))
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    try:
        code = compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError) as e:
        report("syntax_error", f"{type(e).__name__}: {e}")
        return
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as e:
        report("failed", f"{type(e).__name__}: {str(e)[:200]}")
        return
    report("passed")
    sys.stdout.flush()
    os._exit(0)  # no atexit handler or lingering thread of the program runs after the pass
_main()
"""

# Run inside the sandbox by `probe`: what the program itself can see and do.
PROBE = r"""
import json, os, resource, socket, sys
port, host_dir, marker, nproc = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
out = {"uid": os.getuid()}
out["as"] = resource.getrlimit(resource.RLIMIT_AS)[0]
out["nproc_limit"] = resource.getrlimit(resource.RLIMIT_NPROC)[0]
out["pid_ns"] = os.stat("/proc/self/ns/pid").st_ino
out["net_ns"] = os.stat("/proc/self/ns/net").st_ino
try:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    out["connected"] = True
except OSError:
    out["connected"] = False
for key, path in (("host_write", os.path.join(host_dir, marker)), ("tmp_write", "/tmp/" + marker)):
    try:
        with open(path, "w") as f:
            f.write("x")
        out[key] = True
    except OSError:
        out[key] = False
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
    memory_mb: int = 1024  # address space per process
    max_processes: int = 8  # the sandbox's own processes included
    output_bytes: int = 1 << 20  # stdout + stderr, and any one file the program writes
    open_files: int = 64


@dataclass(frozen=True)
class Sandbox:
    level: str
    backend: str  # bwrap | unshare | plain
    python: str
    layers: dict[str, bool] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)  # absolute paths of the launchers


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


def _rlimits(tools: dict[str, str], limits: Limits) -> list[str]:
    cpu = int(limits.timeout_s) + 1  # the wall clock kills first; this bounds a stuck kill
    return [
        tools["prlimit"],
        f"--as={limits.memory_mb << 20}",
        f"--cpu={cpu}",
        f"--fsize={limits.output_bytes}",
        f"--nproc={limits.max_processes}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--",
    ]


def _command(sb: Sandbox, limits: Limits, workdir: Path, args: list[str]) -> tuple[list[str], str]:
    """The launcher chain for one program and the directory it starts in (on the host)."""
    t = sb.tools
    inner = [*_rlimits(t, limits), sb.python, "-I", *args]
    if sb.backend == "bwrap":
        # prlimit inside bwrap: a process limit outside would make bwrap's own clone fail
        files = [
            a
            for f in sorted(workdir.iterdir())
            for a in ("--ro-bind", str(f), f"/tmp/run/{f.name}")
        ]
        chain = [
            *_drop_uid(t),
            t["bwrap"],
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
            "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp/run",
            *files,
            "--chdir", "/tmp/run",
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin",
            "--",
            *inner,
        ]  # fmt: skip
        return chain, "/"
    if sb.backend == "unshare":
        chain = [
            t["unshare"],
            "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--ipc", "--uts",
            "--",
            *_drop_uid(t),
            *inner,
        ]  # fmt: skip
        return chain, str(workdir)
    return [*_drop_uid(t), *inner], str(workdir)


def _prepare_dir(sb: Sandbox, files: dict[str, str]) -> Path:
    work = Path(tempfile.mkdtemp(prefix="codexlm-sandbox-"))
    work.chmod(0o755)  # the sandbox user reads (bwrap) or writes (the others) it
    for name, text in files.items():
        (work / name).write_text(text, encoding="utf-8")
        (work / name).chmod(0o644)
    if os.geteuid() == 0 and sb.backend != "bwrap":
        os.chown(work, NOBODY, NOBODY)
    return work


def run_python(
    sb: Sandbox,
    limits: Limits,
    files: dict[str, str],
    args: list[str],
    pass_fds: tuple[int, ...] = (),
) -> tuple[int | None, str, float]:
    """Run `python -I <args>` with `files` in its working directory, contained; kill every
    process of it at the timeout. Returns (exit status or None at the timeout, the tail of
    its output, seconds)."""
    work = _prepare_dir(sb, files)
    cmd, cwd = _command(sb, limits, work, args)
    # stdout+stderr go to a file we opened and unlinked: RLIMIT_FSIZE caps it (the write
    # fails with EFBIG), and nothing the program does can reach it by name
    with tempfile.TemporaryFile() as out:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,  # killpg below reaches the launcher's group
            )
        except OSError as e:
            shutil.rmtree(work, ignore_errors=True)
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
        elapsed = time.monotonic() - start
        out.seek(0)
        tail = out.read()[-OUTPUT_TAIL * 4 :].decode("utf-8", "replace")[-OUTPUT_TAIL:]
    shutil.rmtree(work, ignore_errors=True)
    return code, tail, elapsed


def _kill(proc: subprocess.Popen, backend: str) -> None:
    """Kill everything the program started, and return only when it is gone.

    With a PID namespace, kill its init (the launcher's child): the kernel then kills every
    process in the namespace, setsid() or not, and the init's exit waits until they have all
    exited, after which the launcher exits. Killing the launcher instead would leave that
    teardown running after we return."""
    if backend in ("bwrap", "unshare"):
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            children = []  # the launcher has just exited
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)  # the launcher exits once its namespace is empty
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_program(sb: Sandbox, limits: Limits, source: str) -> Outcome:
    """Run one program (a problem's prompt, completion and tests) and say whether its code
    returned, in the runner's words, authenticated by a nonce only the runner holds."""
    nonce = secrets.token_hex(16)
    nonce_r, nonce_w = os.pipe()
    report_r, report_w = os.pipe()
    try:
        os.write(nonce_w, nonce.encode())
        os.close(nonce_w)
        os.set_blocking(report_r, False)
        code, tail, elapsed = run_python(
            sb,
            limits,
            {"runner.py": RUNNER, "solution.py": source},
            ["runner.py", str(nonce_r), str(report_w)],
            pass_fds=(nonce_r, report_w),
        )
        os.close(report_w)
        report_w = -1
        try:
            report = os.read(report_r, REPORT_BYTES).decode("utf-8", "replace")
        except BlockingIOError:
            report = ""
    finally:
        for fd in (nonce_r, report_r, report_w):
            if fd >= 0:
                os.close(fd)
    if code is None:
        return Outcome("timeout", f"killed after {limits.timeout_s:g} s", elapsed)
    for line in report.splitlines():
        head, _, rest = line.partition(" ")
        if head == nonce:  # the runner's own line; anything else is the program's
            status, _, detail = rest.partition(" ")
            return Outcome(status, detail.strip(), elapsed)
    why = f"exit status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
    if (
        code == 127
        or "bwrap:" in tail[:300]
        or "setpriv:" in tail[:300]
        or "prlimit:" in tail[:300]
    ):
        return Outcome("sandbox_error", f"{why}: {tail.strip()[:300]}", elapsed)
    return Outcome("no_report", f"{why} before the tests returned: {tail.strip()[-300:]}", elapsed)


def _level(layers: dict[str, bool]) -> str | None:
    best = None
    for level in LEVELS:
        if all(layers.get(k) for k in NEEDS[level]):
            best = level
    return best


def _probe_backend(
    backend: str, tools: dict[str, str], python: str, limits: Limits
) -> dict[str, bool]:
    sb = Sandbox(level="probe", backend=backend, python=python, tools=tools)
    marker = f"codexlm-probe-{secrets.token_hex(8)}"
    host_dir = Path(tempfile.mkdtemp(prefix="codexlm-probe-host-"))
    host_dir.chmod(0o777)  # writable by anyone on the host: only a read-only view stops it
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        probe_limits = Limits(
            timeout_s=max(limits.timeout_s, 10.0),
            memory_mb=limits.memory_mb,
            max_processes=limits.max_processes,
            output_bytes=limits.output_bytes,
            open_files=limits.open_files,
        )
        code, tail, _ = run_python(
            sb, probe_limits, {"probe.py": PROBE},
            ["probe.py", str(port), str(host_dir), marker, str(limits.max_processes)],
        )  # fmt: skip
        try:
            listener.accept()[0].close()
            accepted = True
        except BlockingIOError:
            accepted = False
        host_file = (host_dir / marker).exists()
        tmp_file = (Path(tempfile.gettempdir()) / marker).exists()
    finally:
        listener.close()
        shutil.rmtree(host_dir, ignore_errors=True)
        (Path(tempfile.gettempdir()) / marker).unlink(missing_ok=True)
    if code != 0:
        return {"runs": False}
    try:
        seen = json.loads(tail.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"runs": False}
    here_pid = os.stat("/proc/self/ns/pid").st_ino
    here_net = os.stat("/proc/self/ns/net").st_ino
    return {
        "runs": True,
        "rlimits": seen["as"] == limits.memory_mb << 20
        and seen["nproc_limit"] == limits.max_processes,
        "nproc": seen["forks"] < limits.max_processes,
        "non_root": seen["uid"] != 0 and (os.geteuid() != 0 or "setpriv" in tools),
        "pid_ns": seen["pid_ns"] != here_pid,
        "net_ns": seen["net_ns"] != here_net and not seen["connected"] and not accepted,
        "readonly_host": not seen["host_write"] and not host_file,
        "private_tmp": not tmp_file,
    }


def probe(limits: Limits, python: str | None = None) -> Sandbox:
    """Find the strongest sandbox that works here, by running a probe program through each
    launcher and checking what it could do. Raises UserError if none runs at all."""
    python = python or default_python()
    tools = {n: p for n in ("bwrap", "unshare", "setpriv", "prlimit") if (p := _which(n))}
    if "prlimit" not in tools:
        raise UserError("sandbox: prlimit not found (it is in util-linux); cannot set limits")
    if os.geteuid() == 0 and "setpriv" not in tools:
        raise UserError(
            "sandbox: running as root and setpriv (util-linux) is missing: "
            "cannot drop to a non-root uid"
        )
    candidates = [b for b in ("bwrap", "unshare") if b in tools] + ["plain"]
    if os.geteuid() != 0 and "unshare" in candidates:
        candidates.remove("unshare")  # without root it needs user namespaces: bwrap does that
    best: Sandbox | None = None
    tried: dict[str, dict[str, bool]] = {}
    for backend in candidates:
        layers = _probe_backend(backend, tools, python, limits)
        tried[backend] = layers
        level = _level(layers) if layers.get("runs") else None
        if level and (best is None or LEVELS.index(level) > LEVELS.index(best.level)):
            best = Sandbox(level=level, backend=backend, python=python, layers=layers, tools=tools)
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
