"""Training steps under N processes. `launch` in params says how many and under which launcher
(torchrun, or `accelerate launch` with a config file: FSDP or DeepSpeed ZeRO-3 on GPUs). The
`librarm stage` process of a training step re-runs itself under the launcher; each process runs
the step, the trainers (TRL / transformers) split every global batch across them (gloo on the CPU,
NCCL on GPUs), and only rank 0 writes the step's files and its MLflow run.

The global batch and the data order stay those of one process: each process takes
batch_size / processes rows of every batch, so N processes train on what one process trains on
(tests/test_launch.py compares the per-step losses)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from librarm.run.settings import DpoSettings, LaunchSettings, RlSettings, ScalarRmSettings, SettingsError, SftSettings

RUNNING_ARGV: list[str] | None = None   # the arguments of the running librarm command (set by cli.main)

INSIDE = "LIBRARM_LAUNCHED"          # set in the processes the launcher starts
TRAINING_STEPS = ("train", "dpo")    # the `librarm stage` steps that run under the launcher


class LaunchError(SettingsError):
    """A launcher that cannot start; the message names the params key."""


# The training sections whose batch_size splits across processes.
BATCH_SECTIONS = ("sft", "rl", "scalar_rm", "dpo")


def batch_problems(*, launch: LaunchSettings, sft: SftSettings | None, rl: RlSettings | None,
                   scalar_rm: ScalarRmSettings | None, dpo: DpoSettings | None) -> list[str]:
    """What stops launch.processes from splitting each training batch evenly (empty when nothing)."""
    n = launch.processes
    problems = []
    for section, settings in zip(BATCH_SECTIONS, (sft, rl, scalar_rm, dpo)):
        batch = settings.batch_size if settings is not None else None
        if batch is not None and batch % n:
            problems.append(f"launch.processes: {n} processes cannot split {section}.batch_size {batch} evenly "
                            f"(each process takes {section}.batch_size / launch.processes rows of every batch)")
    if n > 1 and rl is not None and (rl.batch_size // n) % rl.num_generations:
        problems.append(f"launch.processes: {n} processes give each {rl.batch_size // n} completions of rl.batch_size "
                        f"{rl.batch_size}, not a multiple of rl.num_generations {rl.num_generations} "
                        "(a prompt's group must stay in one process)")
    return problems


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def inside_launch() -> bool:
    return os.environ.get(INSIDE) == "1" or "LOCAL_RANK" in os.environ


def barrier() -> None:
    """Wait for every process (a no-op in one process). Starts the process group the way the
    trainers will (accelerate's PartialState reads the launcher's environment) if none is up yet."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState()
    dist.barrier()


def shared_on_disk(dataset, folder: Path):
    """An in-memory dataset saved once (rank 0) and loaded by every process from `folder`: TRL
    writes caches next to a dataset's files (the DPO reference log-probs), and an in-memory
    dataset's cache sits in a temporary folder of each process, where the others cannot read it."""
    from datasets import load_from_disk

    if is_main():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        dataset.save_to_disk(str(tmp))
        tmp.rename(folder)
    barrier()
    return load_from_disk(str(folder))


def per_process(batch: int, key: str) -> int:
    """This process's share of a global batch (the config check has made it even)."""
    n = world_size()
    if batch % n:
        raise LaunchError(f"launch.processes: {n} processes cannot split {key} {batch} evenly")
    return batch // n


def settings_for_step(launch: LaunchSettings, step: str) -> LaunchSettings | None:
    """The launch settings when this step runs under a launcher, else None."""
    return launch if step in TRAINING_STEPS and launch.processes > 1 else None


def launch_command(s: LaunchSettings, cli_args: Sequence[str], program: Sequence[str] = ("-m", "librarm.cli")) -> list[str]:
    """The command that runs `python <program> <cli_args>` (by default the librarm CLI) in
    s.processes processes."""
    if s.launcher == "torchrun":
        # torch's own launcher, as a module of this interpreter: no PATH lookup, no free-port race
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={s.processes}",
                *program, *cli_args]
    exe = shutil.which("accelerate")
    if exe is None:
        raise LaunchError("launch.launcher: 'accelerate' is set but the `accelerate` command is not on PATH "
                          "(pip install accelerate, or use launcher: torchrun)")
    cmd = [exe, "launch", "--num_processes", str(s.processes)]
    if s.accelerate_config:
        if not Path(s.accelerate_config).is_file():
            raise LaunchError(f"launch.accelerate_config: {s.accelerate_config} is not a file")
        cmd += ["--config_file", s.accelerate_config]
    return [*cmd, *program, *cli_args]


def run_launched(s: LaunchSettings, cli_args: Sequence[str], threads: int | None) -> int:
    """Run the step in s.processes processes; the job's threads are shared among them."""
    cmd = launch_command(s, cli_args)
    env = {**os.environ, INSIDE: "1", "OMP_NUM_THREADS": str(max(1, (threads or 1) // s.processes))}
    print(f"librarm: {s.processes} processes under {s.launcher}: {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, env=env).returncode
