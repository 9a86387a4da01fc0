"""Warm job processes: one server per local Snakemake run imports torch, transformers, TRL,
datasets and math-verify once, and each `librarm stage` job forks from it instead of importing
them again.

Why: on 2 cores the default DAG is CPU-bound (cores idle about 1 %), and a model job spends 2 s
(torch + transformers) to 4.6 s (TRL) importing before it does any work, about a fifth of the
DAG's job-seconds. A fork keeps every import and starts the job in milliseconds.

How a job runs through it: `python -m librarm.cli stage ...` (the rule's command, unchanged)
connects to the socket named by LIBRARM_WARM_SOCKET and sends its argv, environment, working
directory and its stdin/stdout/stderr (SCM_RIGHTS). The server forks; the child takes those
descriptors, directory and environment, runs the same `librarm.cli.main` and exits; the server
sends the exit status back, and the client exits with it. The job's log, exit status and outputs
are those of a fresh process. The client runs the command itself (a fresh process, as without a
server) when there is no server, it is not ready, or the job's environment differs from the
server's in anything but the per-job thread variables (a variable read at import time must not
be stale). A client killed by a signal takes its child with it: forwarded TERM/INT/HUP, and the
server kills the child's process group when the client's connection drops.

Only the local executor starts one (`start_for_workflow`, the Snakefile's onstart): a SLURM job
must run under slurmd, not as a child of a process on the submitting host. `LIBRARM_WARM=0`
turns it off. The server exits with the Snakemake process that started it (PR_SET_PDEATHSIG and a
parent check), or after `IDLE_EXIT_S` without a job.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

SOCKET_ENV = "LIBRARM_WARM_SOCKET"
SWITCH_ENV = "LIBRARM_WARM"
# Set per job by Snakemake (snakemake/shell.py), by the job's shell or by us: a job may differ from
# the server in these and nothing else. The thread counts are read by torch and numpy's BLAS when
# they load; the child resizes those pools to its own count (_set_thread_pools).
PER_JOB_ENV = frozenset({
    "OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "TMPDIR", "TMP", "TEMPDIR", "TEMP",
    "PWD", "OLDPWD", "SHLVL", "_", SOCKET_ENV,
    "PS1", "PS2",        # a venv's activate exports PS1; the job's non-interactive bash drops it
})
# What the jobs import (librarm's stage modules import these inside functions).
PRELOAD = (
    "torch", "numpy", "datasets", "transformers", "transformers.models.llama.modeling_llama",
    "trl", "math_verify", "yaml",
)
PRELOAD_NAMES = {  # lazy attributes that import the heavy submodules
    "transformers": ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer",
                     "PreTrainedTokenizerFast", "TrainerCallback", "LlamaForCausalLM"),
    "trl": ("SFTTrainer", "SFTConfig", "DPOTrainer", "DPOConfig", "GRPOTrainer", "GRPOConfig",
            "RewardTrainer", "RewardConfig"),
    "math_verify": ("parse", "verify"),
}
IDLE_EXIT_S = 600
MIN_JOBS = 3     # the server's imports cost one core about 4.5 s; a forked job saves 2 to 4.6 s
FOLDER_PREFIX = "librarm-warm-"
WARM_LOG = ".snakemake/librarm-warm.log"   # what it forked and declined, and each job's cpu and peak RSS
MAX_MESSAGE = 1 << 20


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1").lower() not in ("0", "false", "off", "no")


# ----------------------------------------------------------------------------- client
def interpreter() -> list[str]:
    """The Python a process runs: its binary and its environment (venv python and python3 are one)."""
    return [os.path.realpath(sys.executable), sys.prefix]


def run_through_server(argv: Sequence[str]) -> int | None:
    """Run `librarm <argv>` as a fork of the warm server and return its exit status; None when
    it cannot or should not (the caller then runs the command itself)."""
    path = os.environ.get(SOCKET_ENV)
    if not path or not enabled() or not os.path.exists(path):
        return None
    # The handlers are in place before the request: the job may start (and a TERM arrive) before
    # the reply naming its pid does; a signal meanwhile waits for the pid (or, declined, is re-raised).
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in forwarded}
    held: dict[str, Any] = {"child": None, "pending": []}

    def forward(signum, frame):
        if held["child"] is None:
            held["pending"].append(signum)
            return
        try:
            os.killpg(held["child"], signum)
        except ProcessLookupError:
            pass

    def declined() -> None:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in held["pending"]:
            signal.raise_signal(signum)

    for sig in forwarded:
        signal.signal(sig, forward)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
        request = {"argv": list(argv), "env": dict(os.environ), "cwd": os.getcwd(), "interpreter": interpreter()}
        socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
        reply = json.loads(sock.recv(MAX_MESSAGE) or b"{}")
    except OSError:
        declined()
        return None
    if "pid" not in reply:          # declined (reply names why) or the server went away
        declined()
        return None
    held["child"] = int(reply["pid"])
    for signum in held["pending"]:
        forward(signum, None)
    try:
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
                break
            except InterruptedError:
                continue
        done = json.loads(data) if data else {}
    finally:
        sock.close()
    if "exit" not in done:
        print(f"librarm: the warm server ({path}) went away while running the job", file=sys.stderr)
        return 1
    print(f"librarm: ran as a fork of the warm server ({SOCKET_ENV}): exit {done['exit']}, "
          f"cpu {done.get('cpu_s')} s, max RSS {done.get('max_rss_mb')} MB", file=sys.stderr)
    return int(done["exit"])


# ----------------------------------------------------------------------------- server
def env_mismatch(server_env: dict[str, str], job_env: dict[str, str]) -> list[str]:
    """The variables (other than PER_JOB_ENV) whose values differ between the server and a job."""
    keys = (set(server_env) | set(job_env)) - PER_JOB_ENV
    return sorted(k for k in keys if server_env.get(k) != job_env.get(k))


def preload(modules: Sequence[str] = PRELOAD) -> None:
    import importlib

    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:          # an optional package this install lacks: jobs import what they need
            continue
        for attr in PRELOAD_NAMES.get(name, ()):
            getattr(mod, attr, None)


def _set_parent_death_signal() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                         # not Linux: the parent check in the loop still ends the server


def _exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _set_thread_pools(omp_num_threads: str | None) -> None:
    """The job's thread count for the native pools the server's imports already sized: torch and
    numpy's BLAS read OMP_NUM_THREADS / OPENBLAS_NUM_THREADS when loaded, so a forked job would keep
    the server's count (2 here) where a fresh one reads its own (Snakemake sets it to the rule's
    threads). Provenance records torch's count, and reductions may round differently with it."""
    if not omp_num_threads or not omp_num_threads.isdigit() or int(omp_num_threads) < 1:
        return
    n = int(omp_num_threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        pass


def run_cli(argv: Sequence[str]) -> int:
    """A job: `python -m librarm.cli <argv>`, run in this process (the module as __main__, as the
    interpreter would run it; the forked child has no server socket in its environment, so it runs
    the command itself). Exits through SystemExit with the command's status."""
    import runpy

    sys.argv = ["-m", *argv]
    runpy.run_module("librarm.cli", run_name="__main__", alter_sys=True)
    return 0


def _run_child(request: dict[str, Any], fds: list[int], job: Callable[[Sequence[str]], int]) -> None:
    """In the forked child: become the job (its descriptors, directory, environment, argv), run
    it and exit with its status. Never returns."""
    code = 1
    try:
        os.setpgid(0, 0)             # its own group: a dropped client kills the job and what it started
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(SOCKET_ENV, None)         # what the job starts runs as fresh processes
        tempfile.tempdir = None                  # re-read the job's TMPDIR
        _set_thread_pools(os.environ.get("OMP_NUM_THREADS"))
        code = job(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:            # the job's traceback goes to its own log, as in a fresh process
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code if isinstance(code, int) else 1)


def serve(path: str, parent: int, idle_exit_s: float = IDLE_EXIT_S, modules: Sequence[str] = PRELOAD,
          job: Callable[[Sequence[str]], int] = run_cli) -> None:
    """The server loop: preload `modules`, listen on `path`, fork a child per request that runs
    `job(argv)`, report its status. Single-threaded (forking a multi-threaded Python is unsafe)."""
    began = time.monotonic()
    # TERM (from stop(), or the parent-death signal) ends the loop through its cleanup
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    _set_parent_death_signal()
    started_env = dict(os.environ)
    preload(modules)
    # what the imports set (torch's inductor cache folder, MLflow's session id): a fresh job
    # process would set them on import too, so each child gets them on top of its own environment
    import_env = {k: v for k, v in os.environ.items() if started_env.get(k) != v}
    sys.stdout.flush()
    sys.stderr.flush()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tmp = f"{path}.tmp"
    listener.bind(tmp)
    listener.listen(64)
    os.rename(tmp, path)             # the socket appears only once the server is ready
    print(f"ready at {path} (pid {os.getpid()}, imports took {time.monotonic() - began:.1f} s)", flush=True)
    jobs: dict[socket.socket, tuple[int, list[str]]] = {}       # connection -> child pid, its outputs
    last_job = time.monotonic()
    try:
        while True:
            if os.getppid() != parent:
                return
            if not jobs and time.monotonic() - last_job > idle_exit_s:
                return
            ready, _, _ = select.select([listener, *jobs], [], [], 0.05)
            for conn in ready:
                if conn is listener:
                    _accept(listener, jobs, started_env, import_env, job)
                    last_job = time.monotonic()
                else:                # a client sends nothing after its request: readable = it went away
                    _kill_group(jobs.pop(conn)[0])
                    conn.close()
            _reap(jobs)
    finally:
        for conn, (pid, _) in jobs.items():
            _kill_group(pid)
            conn.close()
        listener.close()
        remove_socket(path)          # also when nobody is left to stop() it


def _accept(listener: socket.socket, jobs: dict[socket.socket, tuple[int, list[str]]], started_env: dict[str, str],
            import_env: dict[str, str], job: Callable[[Sequence[str]], int]) -> None:
    conn, _ = listener.accept()
    try:
        msg, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        request = json.loads(msg)
    except (OSError, ValueError):
        conn.close()
        return
    reason = None
    if len(fds) != 3:
        reason = "expected stdin, stdout and stderr"
    elif request.get("interpreter") != interpreter():
        reason = f"another interpreter ({request.get('interpreter')}; the server runs {interpreter()})"
    else:
        differ = env_mismatch(started_env, request.get("env", {}))
        if differ:
            reason = f"the job's environment differs in {differ[:5]}"
    step = " ".join(request.get("argv", [])[:2])
    if reason:
        print(f"declined {step}: {reason}", flush=True)
        for fd in fds:
            os.close(fd)
        conn.send(json.dumps({"declined": reason}).encode())
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        conn.close()
        listener.close()
        for other in jobs:
            other.close()
        _run_child({**request, "env": {**request["env"], **import_env}}, fds, job)
    try:
        os.setpgid(pid, pid)         # as the child does: the group exists before the client learns the pid
    except OSError:                  # the child got there first, or has already exited
        pass
    for fd in fds:
        os.close(fd)
    print(f"forked {step} as {pid}", flush=True)
    jobs[conn] = (pid, job_outputs(request["argv"]))
    try:
        conn.send(json.dumps({"pid": pid}).encode())
    except OSError:                  # the client is already gone
        jobs.pop(conn)
        _kill_group(pid)
        conn.close()


def job_outputs(argv: Sequence[str]) -> list[str]:
    """The paths of a `librarm stage` command's `--out NAME PATH...` groups."""
    out, taking = [], False
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            taking = arg == "--out"
            name_at = i + 1
        elif taking and i > name_at:
            out.append(arg)
    return out


def _reap(jobs: dict[socket.socket, tuple[int, list[str]]]) -> None:
    for conn, (pid, outputs) in list(jobs.items()):
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            jobs.pop(conn)
            # Snakemake's benchmark file measures the client's process tree, which the child is not
            # in: the job's own figures go to the client (its log) and to this log (librarm profile)
            used = {"exit": _exit_status(status), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                    "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}
            print(json.dumps({"pid": pid, "outputs": outputs, **used}), flush=True)
            try:
                conn.send(json.dumps(used).encode())
            except OSError:
                pass
            conn.close()


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.05)


# ----------------------------------------------------------------------------- start / stop
def remove_socket(path: str) -> None:
    """A server's socket, its half-made `.tmp` and the folder start() made for them."""
    for p in (path, f"{path}.tmp"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    folder = Path(path).parent
    if folder.name.startswith(FOLDER_PREFIX):
        try:
            os.rmdir(folder)
        except OSError:
            pass


class WarmServer:
    """A started server: its process and socket path."""

    def __init__(self, proc: subprocess.Popen, path: str):
        self.proc, self.path = proc, path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        remove_socket(self.path)     # a server killed hard cleaned up nothing


def start(log_path: str | Path | None = None) -> WarmServer:
    """Start a server for this process's jobs (they inherit SOCKET_ENV): it becomes ready in the
    background; jobs that start before it run as fresh processes."""
    folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX)
    path = os.path.join(folder, "sock")
    log = open(log_path, "a") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "librarm.run.warm", path, str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    if log_path:
        log.close()
    os.environ[SOCKET_ENV] = path
    return WarmServer(proc, path)


_STARTED: list[WarmServer] = []


def start_for_workflow(workflow: Any, log_path: str | Path | None = WARM_LOG) -> None:
    """The Snakefile's onstart: a server for a local run's jobs (never for a cluster executor),
    when it has MIN_JOBS or more to run (`dvc repro` runs one phase, often one job, at a time)."""
    if not enabled() or not getattr(workflow, "local_exec", False) or getattr(workflow, "remote_exec", False):
        return
    dag = getattr(workflow, "dag", None)
    if dag is not None and sum(1 for _ in dag.needrun_jobs()) < MIN_JOBS:
        return
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    _STARTED.append(start(log_path))


def stop_for_workflow() -> None:
    """The Snakefile's onsuccess/onerror."""
    while _STARTED:
        _STARTED.pop().stop()
    os.environ.pop(SOCKET_ENV, None)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
