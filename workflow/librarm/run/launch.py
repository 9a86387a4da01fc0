"""Training steps under N processes. `launch` in params says how many, under which launcher
(torchrun, or `accelerate launch` with a config file) and how they hold the model (data parallel,
or sharded with FSDP2: `launch.sharding`, the same path on GPUs and on the CPU). The
`librarm stage` process of a training step re-runs itself under the launcher; each process runs
the step, the trainers (TRL / transformers) split every global batch across them (gloo on the CPU,
NCCL on GPUs), and only rank 0 writes the step's files and its MLflow run.

The global batch and the data order stay those of one process: each process takes
batch_size / processes rows of every batch, so N processes train on what one process trains on
(tests/test_launch.py compares the per-step losses)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

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


# ----------------------------------------------------------------------------- FSDP2
# launch.sharding fsdp2 shards each decoder layer and the root with torch's fully_shard (FSDP2),
# through the trainers' own FSDP support: the same arguments on GPUs (NCCL) and on the CPU (gloo).
# Two gaps are closed here. accelerate 1.15 keeps an FSDP plugin only for GPU-like process groups
# (AcceleratorState drops it for MULTI_CPU without a word), so on the CPU the trainer's accelerator
# is switched to FSDP after it is built. And with sharded checkpoints (what resume reads) the
# trainers' save_model writes nothing, so saving gathers the full weights instead.
def sharding_args(launch: LaunchSettings, model) -> dict:
    """The trainer arguments that shard `model` across this job's processes (launch.sharding
    fsdp2, more than one process), else none: each decoder layer (the model's _no_split_modules)
    is one FSDP2 unit, and resume checkpoints are sharded (each process writes its shard)."""
    if launch.sharding != "fsdp2" or world_size() == 1:
        return {}
    layers = list(getattr(model, "_no_split_modules", None) or ())
    if not layers:
        raise LaunchError(f"launch.sharding: fsdp2 needs the model's decoder layer class ({type(model).__name__} "
                          "names no _no_split_modules)")
    return {"fsdp": True, "fsdp_config": {"fsdp_version": 2, "transformer_layer_cls_to_wrap": layers,
                                          "reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT"}}


def sharded(trainer_cls: type) -> type:
    """trainer_cls (a transformers / TRL trainer) that runs FSDP2 on the CPU as on GPUs and saves
    full weights under sharded checkpoints. Without sharding arguments it is trainer_cls itself."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    class Sharded(trainer_cls):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            state = self.accelerator.state
            if self.args.fsdp_plugin_args is not None and state.distributed_type == DistributedType.MULTI_CPU:
                state.distributed_type = DistributedType.FSDP
                # every AcceleratorState() re-reads PartialState's shared dict: set it there too
                PartialState._shared_state["distributed_type"] = DistributedType.FSDP
                state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
                if state.mixed_precision != "no":
                    state.fsdp_plugin.set_mixed_precision(state.mixed_precision)
                self.is_fsdp_enabled = True

        def save_model(self, output_dir=None, _internal_call=False):
            if self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type):
                # every process gathers (a collective); the trainer's _save writes on rank 0 alone
                self._save(output_dir or self.args.output_dir, state_dict=full_state_dict(self.model))
                return
            super().save_model(output_dir, _internal_call)

    Sharded.__name__ = Sharded.__qualname__ = f"Sharded{trainer_cls.__name__}"
    return Sharded


def _fsdp_units(model) -> tuple[object | None, list]:
    from torch.distributed.fsdp import FSDPModule

    root = model if isinstance(model, FSDPModule) else None
    return root, [m for m in model.modules() if isinstance(m, FSDPModule) and m is not root]


@contextlib.contextmanager
def gathered_for_decoding(model) -> Iterator[None]:
    """The full weights held in every process while it decodes on its own. A sharded forward
    all-gathers each layer from every process, so processes that decode different prompts (a
    different number of steps each) would wait on each other forever; gathered once here, their
    forwards need no other process. Costs the full model's memory while it lasts; no-op unsharded."""
    root, inner = _fsdp_units(model)
    if root is None and not inner:
        yield
        return
    for m in inner:
        m.set_reshard_after_forward(False)
    for m in inner + ([root] if root is not None else []):
        m.unshard()
    try:
        yield
    finally:
        for m in inner + ([root] if root is not None else []):
            m.reshard()
        for m in inner:
            m.set_reshard_after_forward(True)


def full_state_dict(model) -> dict | None:
    """The full weights of a sharded model, gathered on rank 0 (every process must call it: a
    collective); None when the model is not sharded (its own state_dict is full)."""
    root, inner = _fsdp_units(model)
    if root is None and not inner:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return retied(model, get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))


def retied(model, state_dict: dict) -> dict:
    """A gathered state dict whose tied weights (one parameter under two names, e.g. an
    lm_head tied to the embeddings) are one tensor again, as in the model's own state_dict: the
    gather copies each name apart, and save_pretrained drops a tied name only when the tensors
    share storage, so the saved folder is the one an unsharded model saves."""
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        source = first.setdefault(id(param), name)
        if source != name and name in state_dict and source in state_dict:
            state_dict[name] = state_dict[source]
    return state_dict
