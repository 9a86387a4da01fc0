"""librarm.run.warm: stage jobs forked from a warm server give the same files, log and exit status as a
fresh process; a job whose environment differs runs fresh; a killed client takes its job with it;
the server ends with its parent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_fixtures import make_random_lm, params_with_path_model

from librarm.run import warm
from librarm.run.io import write_jsonl

HERE = Path(__file__).parent


def test_env_mismatch_ignores_only_per_job_variables():
    server = {"PATH": "/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    assert warm.env_mismatch(server, {**server, "OMP_NUM_THREADS": "1", "TMPDIR": "/tmp/x",
                                      warm.SOCKET_ENV: "/s"}) == []
    # a venv's activate exports PS1, which the job's non-interactive bash drops
    assert warm.env_mismatch({**server, "PS1": "(.venv) $ "}, server) == []
    assert warm.env_mismatch(server, {**server, "HF_HUB_OFFLINE": "0"}) == ["HF_HUB_OFFLINE"]
    assert warm.env_mismatch(server, {"PATH": "/bin"}) == ["HF_HUB_OFFLINE"]


def _env(**extra: str) -> dict[str, str]:
    """The environment of the test's server and its jobs (a job whose environment differs runs fresh)."""
    env = {k: v for k, v in os.environ.items() if k != warm.SOCKET_ENV}
    return {**env, "LIBRARM_TRACKING": "0", "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def _serve(tmp_path: Path, job: str | None = None, idle_exit_s: float = 60, modules: tuple[str, ...] = (),
           **env: str) -> tuple[subprocess.Popen, str]:
    """A server with `modules` preloaded (none: fast), as a child of this test; `job`: a function of
    tests/warm_jobs.py to run instead of the librarm command line."""
    path = str(tmp_path / "sock")
    code = ("import sys; sys.path.insert(0, {here!r}); from librarm.run import warm; {imp}"
            "warm.serve({path!r}, {ppid}, idle_exit_s={idle}, modules={modules!r}{job})").format(
        here=str(HERE), path=path, ppid=os.getpid(), idle=idle_exit_s, modules=modules,
        imp=f"from warm_jobs import {job}; " if job else "", job=f", job={job}" if job else "")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=open(tmp_path / "server.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True, env=_env(**env))
    deadline = time.time() + 60
    while not os.path.exists(path):
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()
        time.sleep(0.05)
    return proc, path


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def test_stage_job_through_the_server_matches_a_fresh_process(tmp_path, params):
    model = make_random_lm(tmp_path / "rand")
    p = params_with_path_model(params, model, n=2, max_new_tokens=16, batch_size=4)
    (tmp_path / "cfg.json").write_text(json.dumps(p))
    write_jsonl(tmp_path / "probs.jsonl", [{"id": f"p{i}", "set": "s", "role": "eval", "problem": f"Compute {i}+1.",
                                            "answer": str(i + 1)} for i in range(6)])
    proc, path = _serve(tmp_path)
    try:
        runs = {}
        for how in ("fresh", "warm"):
            env = _env(**({warm.SOCKET_ENV: path} if how == "warm" else {}))
            out = tmp_path / how
            cmd = [sys.executable, "-m", "librarm.cli", "stage", "sample", "--config", str(tmp_path / "cfg.json"),
                   "--wildcard", "generator=rand", "--wildcard", "subset=s",
                   "--in", "problems", str(tmp_path / "probs.jsonl"), "--out", "samples", str(out / "samples.jsonl"),
                   "--out", "meta", str(out / "meta.json"), "--threads", "1"]
            out.mkdir()
            with open(out / "job.log", "w") as log:
                res = subprocess.run(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
            runs[how] = (res.returncode, (out / "samples.jsonl").read_bytes(), (out / "job.log").read_text())
        assert runs["warm"][0] == runs["fresh"][0] == 0
        assert runs["warm"][1] == runs["fresh"][1]
        assert "librarm sample generator=rand subset=s" in runs["warm"][2]      # the job's own output, in its log
        assert "ran as a fork of the warm server" in runs["warm"][2]
        assert "ran as a fork" not in runs["fresh"][2]
        # a failing job: the same status and error line through the server
        bad = [sys.executable, "-m", "librarm.cli", "stage", "sample", "--config", str(tmp_path / "missing.json")]
        warm_bad = subprocess.run(bad, cwd=tmp_path, env=_env(**{warm.SOCKET_ENV: path}), capture_output=True,
                                  text=True, timeout=120)
        fresh_bad = subprocess.run(bad, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
        assert warm_bad.returncode == fresh_bad.returncode == 2
        assert "missing.json" in warm_bad.stderr
        # a job whose environment differs in something read at import time runs as a fresh process
        declined = subprocess.run(bad, cwd=tmp_path, env=_env(**{warm.SOCKET_ENV: path, "HF_HUB_OFFLINE": "0"}),
                                  capture_output=True, text=True, timeout=120)
        assert declined.returncode == 2 and "ran as a fork" not in declined.stderr
        log = (tmp_path / "server.log").read_text()
        assert "declined stage sample: the job's environment differs in ['HF_HUB_OFFLINE']" in log
        assert log.count("forked stage sample") == 2     # the good job and the failing one
    finally:
        _stop(proc)
    assert not os.path.exists(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_client_takes_its_job_with_it(tmp_path):
    proc, path = _serve(tmp_path, job="sleep_and_record_pid")
    try:
        env = _env(**{warm.SOCKET_ENV: path})
        pid_file = tmp_path / "job.pid"
        client = subprocess.Popen([sys.executable, "-m", "librarm.cli", "stage", str(pid_file)], env=env,
                                  start_new_session=True)
        deadline = time.time() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline and client.poll() is None
            time.sleep(0.05)
        job = int(pid_file.read_text())
        assert job != client.pid and _alive(job)
        client.send_signal(signal.SIGKILL)             # no forwarding possible: the server must notice
        client.wait()
        deadline = time.time() + 10
        while _alive(job) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(job)
        # a TERM to the client reaches its job, and the client exits with the job's status
        pid_file.unlink()
        client = subprocess.Popen([sys.executable, "-m", "librarm.cli", "stage", str(pid_file)], env=env)
        while not pid_file.exists() or not pid_file.read_text():
            assert client.poll() is None
            time.sleep(0.05)
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        _stop(proc)


def test_server_exits_when_its_parent_dies(tmp_path):
    path = str(tmp_path / "sock")
    # a parent that starts the server (naming itself as the parent) and is then killed
    starter_py = tmp_path / "starter.py"
    starter_py.write_text(
        "import os, subprocess, sys, time\n"
        f"code = 'from librarm.run import warm; warm.serve(%r, %d, modules=())' % ({path!r}, os.getpid())\n"
        "subprocess.Popen([sys.executable, '-c', code], start_new_session=True)\n"
        "time.sleep(600)\n")
    starter = subprocess.Popen([sys.executable, str(starter_py)], env=_env())
    deadline = time.time() + 60
    while not os.path.exists(path):
        assert time.time() < deadline and starter.poll() is None
        time.sleep(0.05)
    starter.kill()
    starter.wait()
    deadline = time.time() + 10
    while os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path)           # the server cleaned up and left


@pytest.mark.slow
def test_workflow_starts_a_server_only_for_local_runs():
    class Local:
        local_exec, remote_exec = True, False

    class Cluster:
        local_exec, remote_exec = False, False

    class OneJob(Local):
        class dag:
            @staticmethod
            def needrun_jobs():
                return iter(["bench"])

    warm.start_for_workflow(Cluster())
    warm.start_for_workflow(OneJob())
    assert not warm._STARTED and warm.SOCKET_ENV not in os.environ
    old = os.environ.get(warm.SWITCH_ENV)
    os.environ[warm.SWITCH_ENV] = "0"
    try:
        warm.start_for_workflow(Local())
        assert not warm._STARTED
    finally:
        if old is None:
            os.environ.pop(warm.SWITCH_ENV)
        else:
            os.environ[warm.SWITCH_ENV] = old
    warm.start_for_workflow(Local())
    try:
        assert len(warm._STARTED) == 1 and os.environ[warm.SOCKET_ENV] == warm._STARTED[0].path
    finally:
        warm.stop_for_workflow()
    assert not warm._STARTED and warm.SOCKET_ENV not in os.environ


def test_job_outputs_are_the_paths_of_out_groups():
    argv = ["stage", "sample", "--config", "c.json", "--in", "problems", "p.jsonl", "--out", "samples", "a.jsonl",
            "--out", "meta", "a.meta.json", "b.json", "--wildcard", "generator=g", "--threads", "1"]
    assert warm.job_outputs(argv) == ["a.jsonl", "a.meta.json", "b.json"]


def test_a_forked_job_runs_torch_with_its_own_thread_count(tmp_path):
    """torch sizes its thread pool from OMP_NUM_THREADS when it loads, in the server: the child
    resizes it to the job's own count (Snakemake sets it to the rule's threads), as a fresh process
    would read it."""
    threads = str(max(2, os.cpu_count() or 2))
    proc, path = _serve(tmp_path, job="write_torch_threads", modules=("torch",), OMP_NUM_THREADS=threads)
    try:
        out = tmp_path / "threads.txt"
        env = _env(**{warm.SOCKET_ENV: path, "OMP_NUM_THREADS": "1"})
        res = subprocess.run([sys.executable, "-m", "librarm.cli", "stage", str(out)], env=env, timeout=120,
                             capture_output=True, text=True)
        assert res.returncode == 0 and "ran as a fork" in res.stderr, res.stderr
        assert out.read_text() == "1"
    finally:
        _stop(proc)
