"""The SLURM profile (workflow/profiles/slurm) with snakemake-executor-plugin-slurm 2.8.0.

* Without a cluster: the paper preset's DAG is built in a dry run (Snakemake's Python API, the
  profile read by Snakemake's own CLI parser) and every job goes through the plugin's own sbatch
  flag builders (submit_string.get_submit_command, utils.set_gres_string).
* With a cluster (root; tests/cluster/slurm_up.sh): the ci DAG up to the bench runs through real
  sbatch/squeue, a running job is scancel'ed, the rerun completes and its outputs match the local
  ci run byte for byte.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ENV, REPO, run

PROFILE = REPO / "workflow" / "profiles" / "slurm"
PAPER = REPO / "workflow" / "presets" / "paper.yaml"
CLUSTER = REPO / "tests" / "cluster"
GPU_RULES = ("sample", "evaluate", "pairs_sample", "pairs_label", "policy_eval", "train_judge", "dpo")


# ----------------------------------------------------------------------------- sbatch flags, no cluster
def _dry_run_dag(tmp_path: Path, *cli: str):
    """The jobs of `snakemake --profile workflow/profiles/slurm -n <cli>`, the merged config they
    were built from and the plugin's settings.

    The profile goes through Snakemake's own CLI parser (cli.parse_args), so its keys mean what they
    mean to `snakemake`; the DAG is built by the API's dry run with the slurm executor as the intended
    one. The working directory is tmp_path (the Snakefile writes results/.config there)."""
    from snakemake.api import SnakemakeApi
    from snakemake.cli import parse_args
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")   # the Snakefile's `configfile:`
    _, args = parse_args(["--profile", str(PROFILE), "--snakefile", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path), "--dry-run", *cli])
    assert args.executor == "slurm"
    settings = ExecutorPluginRegistry().get_plugin(args.executor).get_settings(args)
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(nodes=args.jobs, default_resources=args.default_resources,
                                               overwrite_resources=args.set_resources,
                                               overwrite_threads=args.set_threads),
            config_settings=ConfigSettings(configfiles=args.configfile),
            snakefile=Path(args.snakefile), workdir=tmp_path)
        workflow_api.dag(DAGSettings(targets=args.targets)).execute_workflow(
            executor=args.executor, pseudo_executor="dryrun", executor_settings=settings)
        # the dry run "finishes" its jobs, so take all of the DAG's jobs, not the needrun ones
        jobs = list(workflow_api._workflow.dag.jobs)
        config = workflow_api._workflow.config      # params.yaml + the --configfile overlays, pruned
    return jobs, config, settings


def _sbatch_flags(job, settings) -> list[str]:
    """The sbatch arguments the plugin would submit this job with (up to the --wrap'ed command)."""
    from snakemake_executor_plugin_slurm import Executor
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    # Executor.get_partition_arg reads only these attributes when the job names its slurm_partition
    executor = SimpleNamespace(_partitions=None, _fallback_partition=None, logger=None)
    params = {"run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": f"rule_{job.name}", "account": "",
              "partition": Executor.get_partition_arg(executor, job), "workdir": "/wd"}
    return shlex.split(get_submit_command(job, params, settings=settings) + set_gres_string(job))


def _flag(flags: list[str], name: str) -> str | None:
    """The value of `--name=V` / `--name V` / `-p V` in flags (None when absent)."""
    for i, f in enumerate(flags):
        if f.startswith(name + "="):
            return f.split("=", 1)[1]
        if f == name:
            return flags[i + 1]
    return None


def _resource_flags(flags: list[str]) -> str:
    """The partition, CPU, GPU, task and memory flags, for the test's printout."""
    names = ("-p", "--gpus", "--gres", "--cpus-per-task", "--cpus-per-gpu", "--ntasks", "--ntasks-per-gpu", "--mem")
    shown = [(n, _flag(flags, n)) for n in names]
    return " ".join(f"{n} {v}" if n in ("-p", "--mem") else f"{n}={v}" for n, v in shown if v is not None)


def test_paper_preset_gpu_rules_ask_slurm_for_their_gpus_and_cpus(tmp_path, monkeypatch):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from librarm.run.settings import Params

    # A dry build of the DAG: hub models and hub problem sets are read by jobs, never at DAG time.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("LIBRARM_TRACKING", "0")
    monkeypatch.chdir(tmp_path)
    jobs, config, settings = _dry_run_dag(tmp_path, "--configfile", str(PAPER))
    assert settings.status_command == "squeue"      # the profile's slurm-status-command key is read
    params = Params.from_dict(config)
    assert (params.launch.processes, params.launch.gpus_per_process) == (8, 1)

    by_rule: dict[str, list] = {}
    for job in jobs:
        by_rule.setdefault(job.rule.name, []).append(job)
    assert set(GPU_RULES) <= set(by_rule), sorted(by_rule)

    observed = {}
    for rule, rule_jobs in sorted(by_rule.items()):
        for job in rule_jobs:
            assert "gpus_per_task" not in job.resources.keys(), "the plugin never reads gpus_per_task"
            flags = _sbatch_flags(job, settings)
            gpus = _flag(flags, "--gpus")
            key = (rule, job.wildcards_dict.get("generator") or job.wildcards_dict.get("judge"))
            observed.setdefault(key, _resource_flags(flags))
            if job.resources.get("gpu"):
                # older plugins launched a GPU job as tasks (--ntasks/--ntasks-per-gpu): vLLM twice over
                assert not any(f.startswith(("--ntasks", "--ntasks-per-gpu")) for f in flags), (key, flags)
                assert _flag(flags, "-p") == "gpu", (key, flags)
                assert gpus == str(job.resources.gpu), (key, flags)
            else:
                assert gpus is None and _flag(flags, "--gres") is None, (key, flags)
                if rule not in GPU_RULES:
                    assert _flag(flags, "-p") == "cpu", (key, flags)

            if rule == "sample":
                spec = params.generators[job.wildcards.generator]
            elif rule in ("evaluate", "pairs_label"):
                spec = params.judges[job.wildcards.judge]
            elif rule in ("pairs_sample", "policy_eval"):
                spec = params.pairs.policy_engine()     # the policy runs on pairs.backend (vLLM here)
            else:
                spec = None
            if spec is not None and spec.backend == "vllm":
                assert gpus == str(spec.tensor_parallel_size), (key, flags)
                assert _flag(flags, "-p") == "gpu", (key, flags)
            if rule in ("train_judge", "dpo"):
                assert gpus == "8" and _flag(flags, "--cpus-per-task") == "8", (key, flags)
                assert _flag(flags, "-p") == "gpu", (key, flags)

    # every generator and judge of the preset was seen, the vLLM ones with more than one size
    assert {g for r, g in observed if r == "sample"} == set(params.generators)
    assert {j for r, j in observed if r == "evaluate"} == set(params.evaluate.judges)
    vllm_sizes = {params.generators[g].tensor_parallel_size for r, g in observed
                  if r == "sample" and params.generators[g].backend == "vllm"}
    assert vllm_sizes == {1, 4}
    for key, flags in sorted(observed.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        print(f"{key[0]}{'[' + key[1] + ']' if key[1] else ''}: {flags}")


def _same_result(a: Path, b: Path) -> bool:
    """Same bytes; a stats file may differ only in the commit its provenance names (the copy is of
    the ci run's current HEAD, which another test may have moved on by committing dvc.lock)."""
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix != ".json":
        return False

    def without_commit(path: Path) -> dict:
        doc = json.loads(path.read_text())
        if isinstance(doc.get("provenance"), dict):
            doc["provenance"] = {k: v for k, v in doc["provenance"].items() if k != "git_commit"}
        return doc

    return without_commit(a) == without_commit(b)


# ----------------------------------------------------------------------------- a real one-node SLURM
TEST_STATE = Path("/run/librarm-slurm-tests")    # shared by the pytest sessions that use the cluster


def _slurmctld_pid() -> str | None:
    """The running slurmctld's pid (the daemons' double fork leaves zombies named slurmctld: skipped)."""
    for pid in subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True).stdout.split():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if not any(line.startswith("State:") and line.split()[1] in ("Z", "X") for line in status.splitlines()):
            return pid
    return None


@contextmanager
def _cluster_lock():
    TEST_STATE.mkdir(parents=True, exist_ok=True)
    with open(TEST_STATE / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _live_users() -> list[Path]:
    """The users/<pid> entries of pytest sessions that still run (stale ones are removed)."""
    live = []
    for entry in (TEST_STATE / "users").glob("*"):
        try:
            os.kill(int(entry.name), 0)
            live.append(entry)
        except (ValueError, ProcessLookupError):
            entry.unlink(missing_ok=True)
    return live


@pytest.fixture(scope="session")
def slurm_cluster():
    """tests/cluster/slurm_up.sh (installs slurm-wlm with apt when missing). Session scope, so that a
    test asks for it before ci_run and skips without spending the ci run when SLURM cannot be had.

    Brought down again only when a test started it (`started-by-test` holds the pid of the slurmctld
    a test started, so a cluster restarted by hand since is left alone), and only by the last pytest
    session using it: several sessions (e.g. a full `pytest` beside a `pytest tests/test_slurm.py`)
    may share the one cluster, and slurm_down cancels every job on it."""
    marker, me = TEST_STATE / "started-by-test", TEST_STATE / "users" / str(os.getpid())
    with _cluster_lock():
        was_up = _slurmctld_pid() is not None
        # the daemons may outlive this session (another one may be using them): not in its TMPDIR
        env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "LIBRARM_TEST_TMPDIR")}
        res = subprocess.run(["bash", str(CLUSTER / "slurm_up.sh")], capture_output=True, text=True, timeout=900,
                             env=env)
        if res.returncode != 0:
            if not shutil.which("slurmctld") or not shutil.which("sbatch"):
                pytest.skip(f"apt could not install slurm-wlm (tests/cluster/slurm_up.sh): {res.stderr[-500:]}")
            pytest.fail(f"tests/cluster/slurm_up.sh failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}")
        if not was_up:
            marker.write_text(_slurmctld_pid() or "")
        me.parent.mkdir(exist_ok=True)
        me.touch()
    yield res.stdout.strip()
    with _cluster_lock():
        me.unlink(missing_ok=True)
        if not _live_users() and marker.exists():
            if marker.read_text() == _slurmctld_pid():
                subprocess.run(["bash", str(CLUSTER / "slurm_down.sh")], capture_output=True, text=True, timeout=120)
            marker.unlink()


def _squeue(workdir: Path) -> list[dict]:
    """This copy's jobs in squeue (all states SLURM still remembers)."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%P|%k|%Z"], capture_output=True,
                         text=True, check=True).stdout
    rows = [dict(zip(("id", "state", "partition", "comment", "workdir"), line.split("|"))) for line in out.splitlines()]
    return [r for r in rows if r["workdir"] == str(workdir)]


def _slurm_copy(ci_root: Path, dest: Path) -> Path:
    """ci_run's repo (same commit, same ci params.yaml) with its results, Snakemake records and
    mtimes (copy2), less the cut's outputs and the samples' chunk store: the problems and the tiny
    models stay current, and the cut's sample jobs generate every sample again, under SLURM."""
    root = dest / "repo"
    shutil.copytree(ci_root, root, ignore=shutil.ignore_patterns("mlflow", "reads", "__pycache__"), symlinks=True)
    for out in (*CUT_OUTPUTS, "results/.resume/samples"):
        shutil.rmtree(root / out)
    shared = REPO.parent / "shared"
    if shared.exists():
        os.symlink(shared, dest / "shared")
    return root


def _cluster_overrides() -> str:
    """The profile's default-resources and set-resources with mem_mb cut to fit this one small node
    (paper-scale 128-256 GB would never be scheduled here). On the command line, a key replaces the
    profile's whole entry, so every other value is passed on as the profile has it."""
    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    mem = {"mem_mb": 1000}
    default = [f"{k}={v}" for k, v in {**prof["default-resources"], **mem}.items()]
    per_rule = [f"{rule}:{k}={v}" for rule, res in prof["set-resources"].items() for k, v in {**res, **mem}.items()]
    return f"--default-resources {' '.join(default)} --set-resources {' '.join(per_rule)}"


# Deterministic outputs of the cut, compared byte for byte with the local ci run. Not compared:
# samples/*/*.meta.json (tokens_per_s) and verify/*/*.meta.json (seconds) carry timings.
COMPARED = ("results/problems/*.jsonl", "results/problems/stats.json", "results/samples/*/*.jsonl",
            "results/verify/*/*.jsonl")
# The cut: two sample jobs (on the gpu partition) and their verify jobs, in a copy of the ci run
# whose problems and tiny models are current: 4 SLURM jobs, against 21 up to the bench, for the same
# executor paths (the test's run time is mostly per-job submission and status polling, whose
# interval the plugin lengthens by 10 s after every round in which no job finished).
TARGET = "results/verify/gen_weak/tiny_l5.jsonl results/verify/gen_strong/tiny_aime25.jsonl"
CUT_OUTPUTS = ("results/samples", "results/verify")


@pytest.mark.slow
@pytest.mark.engines
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start slurmctld/slurmd (tests/cluster/slurm_up.sh)")
def test_slurm_profile_runs_a_cut_of_the_ci_dag_through_a_scancel(slurm_cluster, ci_run, tmp_path):
    t0 = time.monotonic()
    root = _slurm_copy(ci_run, tmp_path)
    env = {**ENV, "LIBRARM_TRACKING": "0", "PYTHONPATH": str(root / "workflow")}
    env.pop("LIBRARM_RECORD_READS", None)
    # test-only flags: first status check after 2 s (not 40), two jobs at a time on this 2-CPU node,
    # a short latency wait (one shared file system), and memory that fits the node
    cmd = (f"{shlex.quote(sys.executable)} -m snakemake --profile {shlex.quote(str(PROFILE))} "
           "--slurm-init-seconds-before-status-checks 2 --jobs 2 --latency-wait 10 "
           f"{_cluster_overrides()} -- {TARGET}")

    # 1. run, scancel a running sample job: snakemake reports it and exits non-zero
    log1 = tmp_path / "run1.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen(cmd, shell=True, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        cancelled = None
        deadline = time.monotonic() + 1200
        while cancelled is None and proc.poll() is None and time.monotonic() < deadline:
            running = [j for j in _squeue(root) if j["state"] == "RUNNING" and j["comment"].startswith("rule_sample_")]
            if running:
                cancelled = running[0]
                subprocess.run(["scancel", cancelled["id"]], check=True)
            else:
                time.sleep(0.3)
        try:
            rc1 = proc.wait(timeout=1200)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    t1 = time.monotonic()
    out1 = log1.read_text()
    assert cancelled is not None, f"no sample job was seen RUNNING in squeue:\n{out1[-3000:]}"
    assert cancelled["partition"] == "gpu", cancelled          # the profile's set-resources for sample
    assert rc1 != 0, out1[-3000:]
    assert f"SLURM-job '{cancelled['id']}' failed, SLURM status is: 'CANCELLED'" in out1, out1[-3000:]
    assert "Error in rule sample" in out1, out1[-3000:]

    # 2. the same command again completes the cut
    res = run(cmd, root, env=env, timeout=1800)
    t2 = time.monotonic()
    out2 = res.stdout + res.stderr
    assert "Nothing to be done" not in out2 and "steps (100%) done" in out2, out2[-3000:]
    assert not [j for j in _squeue(root) if j["state"] in ("PENDING", "RUNNING", "COMPLETING")]

    # 3. byte-identical to the local ci run
    files = sorted({p.relative_to(root).as_posix() for pat in COMPARED for p in root.glob(pat)})
    assert {f.split("/")[1] for f in files} == {"problems", "samples", "verify"}, files
    assert all(root.joinpath(t).exists() for t in TARGET.split()), files
    differ = [f for f in files if not _same_result(root / f, ci_run / f)]
    assert not differ, differ
    print(f"\n{slurm_cluster}\ncancelled SLURM job {cancelled['id']} ({cancelled['comment']}, partition "
          f"{cancelled['partition']}); run with scancel {t1 - t0:.0f} s, rerun {t2 - t1:.0f} s; "
          f"{len(files)} files byte-identical to the ci run:\n" + "\n".join(files))
