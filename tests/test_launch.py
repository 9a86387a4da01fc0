"""Training in N processes (librarm.run.launch): the settings are checked with one line naming the key;
2 real processes (torchrun, gloo on the CPU) train what 1 process trains at the same global batch
and data order (SFT and DPO per-step losses within 1e-4; GRPO gives the same rewards to the same
completions); a 2-process run killed after a checkpoint resumes to the uninterrupted run's weights;
and `librarm stage train` with launch.processes 2 runs the real stage under the launcher."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from librarm.run.config import ConfigError, validate_params
from librarm.run.io import read_jsonl, write_json, write_jsonl
from librarm.run.launch import LaunchError, batch_problems, launch_command
from librarm.run.settings import LaunchSettings, SettingsError, call

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "dist_train.py"


# ----------------------------------------------------------------------------- settings (fast)
def test_processes_that_cannot_split_a_batch_are_refused_naming_the_keys(params):
    p = copy.deepcopy(params)
    p["launch"]["processes"] = 3
    with pytest.raises(ConfigError) as err:
        validate_params(p)
    msg = str(err.value)
    assert "launch.processes: 3 processes cannot split sft.batch_size 16 evenly" in msg
    assert "dpo.batch_size 16" in msg
    p["launch"]["processes"] = 8          # rl: 32 completions / 8 processes = 4, not a multiple of 8 generations
    assert any("rl.num_generations 8" in line for line in call(batch_problems, p))
    p["launch"]["processes"] = 2
    assert call(batch_problems, p) == []


def test_launch_settings_and_commands(tmp_path, monkeypatch):
    with pytest.raises(SettingsError, match="launch.processes"):
        LaunchSettings(processes=0)
    with pytest.raises(SettingsError, match="launch.accelerate_config"):
        LaunchSettings(processes=2, accelerate_config="x.yaml")
    cmd = launch_command(LaunchSettings(processes=2), ["stage", "train"])
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "librarm.cli", "stage", "train"]
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(LaunchError, match="launch.launcher: 'accelerate' is set but the `accelerate` command"):
        launch_command(LaunchSettings(processes=2, launcher="accelerate"), ["stage", "train"])
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/accelerate")
    with pytest.raises(LaunchError, match="launch.accelerate_config: .*nope.yaml is not a file"):
        launch_command(LaunchSettings(processes=2, launcher="accelerate", accelerate_config=str(tmp_path / "nope.yaml")),
                       ["stage", "train"])
    cfg = tmp_path / "accelerate.yaml"
    cfg.write_text("distributed_type: MULTI_GPU\n")
    cmd = launch_command(LaunchSettings(processes=8, launcher="accelerate", accelerate_config=str(cfg)), ["stage", "dpo"])
    assert cmd[:6] == ["/usr/bin/accelerate", "launch", "--num_processes", "8", "--config_file", str(cfg)]


def test_paper_preset_launches_training_on_gpus():
    from librarm.run.config import load_params

    p = load_params(REPO / "params.yaml", ["paper"])
    s = LaunchSettings.from_params(p)
    assert s.launcher == "torchrun" and s.processes > 1 and s.gpus_per_process == 1 and s.sharding == "fsdp2"


@pytest.mark.engines
def test_bad_launch_settings_stop_the_real_stage_command_with_one_line(tmp_path, params):
    """Through the real `librarm stage train` process: a process count that cannot split the
    batch, and a launcher that is not installed, each end the job with one line naming the key."""
    p = copy.deepcopy(params)
    p["launch"]["processes"] = 3
    write_json(tmp_path / "three.json", p)
    p["launch"].update(processes=2, launcher="accelerate")
    write_json(tmp_path / "accelerate.json", p)
    args = ["--in", "train", "t.jsonl", "--in", "val", "v.jsonl", "--out", "model", "m", "--out", "log", "l.json",
            "--wildcard", "model=judge_sft", "--threads", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "LIBRARM_TRACKING": "0",
           "PATH": "/usr/bin:/bin"}                      # no `accelerate` command on this PATH
    for cfg, line in (("three.json", "launch.processes: 3 processes cannot split sft.batch_size 16 evenly"),
                      ("accelerate.json", "launch.launcher: 'accelerate' is set but the `accelerate` command is not on PATH")):
        res = subprocess.run([sys.executable, "-m", "librarm.cli", "stage", "train", "--config", str(tmp_path / cfg), *args],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert line in res.stderr, res.stderr


# ----------------------------------------------------------------------------- 2 real processes
def _run(spec: dict, tmp: Path, processes: int, tag: str) -> subprocess.CompletedProcess:
    spec_path = tmp / f"{tag}.json"
    write_json(spec_path, spec)
    if processes == 1:
        return _run_here(spec_path)
    program = [str(DRIVER)]
    cmd = launch_command(LaunchSettings(processes=processes), [str(spec_path)], program=program)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'workflow'}:{REPO / 'tests'}",
           "LIBRARM_TRACKING": "0"}
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


def _run_here(spec_path: Path) -> subprocess.CompletedProcess:
    """The 1-process reference run in this test process, which has torch, transformers and TRL
    imported already (a fresh process spends about 9 s of one core importing them). What the driver
    changes in the process (torch's thread count, the GRPO reward and rollout recorders) is put back."""
    import dist_train
    import torch

    import librarm.judging.rewards as rewards
    import librarm.stages.train as train

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIBRARM_TRACKING", "0")
        # restored on exit: dist_train wraps them to record what each process scored and decoded
        mp.setattr(rewards, "build_reward_funcs", rewards.build_reward_funcs)
        mp.setattr(train, "_rollout_func", train._rollout_func)
        try:
            rc = dist_train.main(str(spec_path))
        finally:
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess([str(DRIVER), str(spec_path)], rc, "", "")


def _ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _losses(out: Path) -> dict[int, float]:
    log = json.loads((out / "log.json").read_text())
    hist = log.get("log_history") or log.get("loss_curve")
    return {h["step"]: h["loss"] for h in hist if "loss" in h}


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture
def rand_lm(tmp_path):
    from tiny_fixtures import make_random_lm

    return make_random_lm(tmp_path / "rand", hidden=32, layers=1)


def _sft_spec(tmp: Path, init: Path, tag: str, **cfg) -> dict:
    rows = [{"prompt": f"<|user|>Judge {i}<|end|><|assistant|>",
             "completion": f"<think>{i}+{i % 5}={i + i % 5}" + "x" * (i % 7) + "</think>\\boxed{correct}",
             "kind": "judging"} for i in range(40)]
    write_jsonl(tmp / "sft.jsonl", rows)
    return {"kind": "sft", "data": str(tmp / "sft.jsonl"), "init": str(init), "out": str(tmp / tag),
            "resume_root": str(tmp / f"resume-{tag}"),
            "cfg": {"steps": 10, "learning_rate": 1e-3, "batch_size": 4, "save_steps": 5, "max_length": 128, **cfg}}


def _close(a: dict, b: dict, atol: float) -> float:
    """The largest weight difference of two state dicts with the same keys and shapes."""
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    gap = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert gap <= atol, gap
    return gap


@pytest.mark.slow
@pytest.mark.engines
def test_sft_in_two_processes_matches_one_process_and_resumes_after_a_kill(tmp_path, rand_lm):
    """Completions have different lengths, so the per-process token counts differ: the loss is
    averaged over the tokens of the GLOBAL batch (transformers' average_tokens_across_devices),
    which is what makes the runs agree; here sharded (fsdp2: every process holds half of each
    weight). The sharded run's saved model is full weights. The
    sharded run killed after its step-5 checkpoint (each process's shard, in
    pytorch_model_fsdp_0/) resumes to the uninterrupted sharded run's weights, bit for bit."""
    import torch

    # data parallel (launch.sharding none) in 2 processes is run by the DPO test's 10-pair case
    runs = {"one": (1, "none"), "fsdp2": (2, "fsdp2")}
    for tag, (n, sharding) in runs.items():
        _ok(_run({**_sft_spec(tmp_path, rand_lm, tag), "sharding": sharding}, tmp_path, n, tag))
    one = _losses(tmp_path / "one")
    assert sorted(one) == list(range(1, 11))
    for tag in ("fsdp2",):
        two = _losses(tmp_path / tag)
        assert sorted(two) == sorted(one)
        gaps = {s: abs(one[s] - two[s]) for s in one}
        print(f"sft, {tag}: max |loss(1 process) - loss(2 processes)| over 10 steps = {max(gaps.values()):.1e}")
        assert max(gaps.values()) <= 1e-4, (tag, gaps)
    print(f"sft, fsdp2: max |weight - 1 process| = {_close(_weights(tmp_path / 'fsdp2' / 'model'), _weights(tmp_path / 'one' / 'model'), 1e-4):.1e}")
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp2" / "model").num_parameters() == \
        AutoModelForCausalLM.from_pretrained(rand_lm).num_parameters()

    spec = {**_sft_spec(tmp_path, rand_lm, "killed"), "sharding": "fsdp2"}
    killed = _run({**spec, "kill_after_save": 5}, tmp_path, 2, "killed")
    assert killed.returncode != 0 and not (tmp_path / "killed" / "model").exists()
    ckpts = list(Path(spec["resume_root"]).glob("*/*/checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-5"], ckpts
    assert (ckpts[0] / "pytorch_model_fsdp_0").is_dir() and (ckpts[0] / "model.safetensors").is_file()
    _ok(_run(spec, tmp_path, 2, "resumed"))
    assert _losses(tmp_path / "killed").keys() == set(range(1, 11))
    a, b = _weights(tmp_path / "fsdp2" / "model"), _weights(tmp_path / "killed" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.engines
@pytest.mark.parametrize("n_pairs, epochs", [(12, 2), (10, 1)])
def test_dpo_in_two_processes_matches_one_process_step_by_step(tmp_path, rand_lm, params, n_pairs, epochs):
    """12 pairs at batch 4, two epochs: every step within 1e-4. 10 pairs: the epoch ends on a batch
    of 2, which one process trains on alone, while 2 processes pad it to a full batch with repeated
    pairs (accelerate's even_batches): steps 1-2 still agree, step 3 (the short batch) does not.
    That is the cause of the gap; with a pair count divisible by dpo.batch_size it is gone, and a
    multi-process run says so in its log when it is not. The 12-pair run trains sharded
    (launch.sharding fsdp2), with full, equal weights in every saved folder; the 10-pair one data
    parallel."""
    import torch

    p = copy.deepcopy(params)
    # 12 pairs: validated (and checkpointed) at steps 3 and 6, so the sharded run saves trained weights
    p["dpo"].update(learning_rate=0.003, beta=0.1, epochs=epochs, batch_size=4, val_every=3 if n_pairs == 12 else 100,
                    val_k=1, max_length=96)
    p["evaluate_policy"]["max_new_tokens"] = 8
    pairs = [{"pair_id": f"p{i}", "problem_id": f"q{i}", "question": f"Compute {i % 9}+{i % 4}.",
              "chosen": f"<think>{i % 9}+{i % 4}</think>\\boxed{{{i % 9 + i % 4}}}" + " " * (i % 3),
              "rejected": f"<think>no</think>\\boxed{{{i % 9 + i % 4 + 1}}}"} for i in range(n_pairs)]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "val.jsonl", [{"id": f"v{i}", "problem": f"Compute {i}+1.", "answer": str(i + 1)}
                                         for i in range(2)])
    out = {}
    # the sharded run (fsdp2) on the pair count every process splits evenly
    # 12 pairs: sharded; 10 pairs: data parallel (the padding of the short batch is the same in both)
    runs = [(1, "none"), (2, "fsdp2" if n_pairs % 4 == 0 else "none")]
    for n, sharding in runs:
        tag = f"dpo{n}" + ("-fsdp2" if sharding == "fsdp2" else "")
        spec = {"kind": "dpo", "params": p, "data": str(tmp_path / "pairs.jsonl"), "val": str(tmp_path / "val.jsonl"),
                "init": str(rand_lm), "out": str(tmp_path / tag), "resume_root": str(tmp_path / f"resume-{tag}"),
                "sharding": sharding}
        out[n] = _run(spec, tmp_path, n, tag)
        _ok(out[n])
    one, two = _losses(tmp_path / "dpo1"), _losses(tmp_path / ("dpo2-fsdp2" if n_pairs % 4 == 0 else "dpo2"))
    steps = epochs * -(-n_pairs // 4)
    assert sorted(one) == sorted(two) == list(range(1, steps + 1))
    gaps = {s: abs(one[s] - two[s]) for s in one}
    print(f"dpo, {n_pairs} pairs: |loss(1 process) - loss(2 processes)| by step", gaps)
    if n_pairs % 4 == 0:
        assert max(gaps.values()) <= 1e-4, gaps
        assert "padded" not in out[2].stdout + out[2].stderr
        # sharded: the best checkpoint (gathered by every process, written by rank 0), the
        # published policy and the last resume checkpoint's weights are full models with the
        # 1-process weights
        folders = {}
        for tag in ("dpo1", "dpo2-fsdp2"):
            (best,) = Path(tmp_path / f"resume-{tag}").glob("*/*/best")
            (last,) = Path(tmp_path / f"resume-{tag}").glob("*/*/checkpoint-6")
            folders[tag] = {"best": best, "policy": tmp_path / tag / "model", "checkpoint-6": last}
        assert (folders["dpo2-fsdp2"]["checkpoint-6"] / "pytorch_model_fsdp_0").is_dir()
        for name, folder in folders["dpo2-fsdp2"].items():
            gap = _close(_weights(folder), _weights(folders["dpo1"][name]), 1e-4)
            print(f"dpo, fsdp2: max |weight - 1 process| in {name} = {gap:.1e}")
        trained, init = _weights(folders["dpo2-fsdp2"]["checkpoint-6"]), _weights(rand_lm)
        assert any(not torch.equal(trained[k], init[k]) for k in init)
    else:
        assert max(gaps[1], gaps[2]) <= 1e-4 and gaps[3] > 1e-3, gaps
        assert "not a multiple of dpo.batch_size" in out[2].stdout + out[2].stderr


@pytest.mark.slow
@pytest.mark.engines
def test_grpo_in_two_processes_gives_the_same_rewards_to_the_same_completions(tmp_path, rand_lm, params):
    """Every process scores its own share of the completions; each completion's rewards are those a
    single process gives it (recomputed here from the item it was generated for, so a label
    shipped to the wrong completion would show), and the rollouts are the one-process rollouts."""
    from librarm.judging.rewards import build_reward_funcs

    items = [{"question": f"Compute {i}+1.", "response": f"\\boxed{{{i + 1 + i % 2}}}", "label": 1 - i % 2,
              "item_id": f"it{i}", "index": i} for i in range(16)]
    write_jsonl(tmp_path / "items.jsonl", items)
    p = copy.deepcopy(params)
    p["judge"].update(prompt_template="Judge.\nQ: {question}\nA: {response}", batch_size=16)
    p["rl"].update({"steps": 3, "batch_size": 8, "num_generations": 4, "max_completion_length": 12,
                    "learning_rate": 1e-4, "passrate_k": 2, "passrate_band": [0.0, 1.0], "l_exp": 8, "l_max": 12,
                    "val_every": 1000})
    rewards = {"correctness": 1.0, "format": 0.2, "length": 0.5}
    # two processes sharded (fsdp2): each decodes its own prompts on gathered weights
    for tag, n, sharding in (("grpo1", 1, "none"), ("grpo2", 2, "fsdp2")):
        spec = {"kind": "grpo", "params": p, "data": str(tmp_path / "items.jsonl"), "init": str(rand_lm),
                "out": str(tmp_path / tag), "resume_root": str(tmp_path / f"resume-{tag}"), "rewards": rewards,
                "sharding": sharding}
        _ok(_run(spec, tmp_path, n, tag))
    recs = {n: [r for f in sorted((tmp_path / f"grpo{n}").glob("rewards-rank*.jsonl")) for r in read_jsonl(f).records]
            for n in (1, 2)}
    assert len(list((tmp_path / "grpo2").glob("rewards-rank*.jsonl"))) == 2       # both processes scored
    by_id = {it["item_id"]: it for it in items}
    funcs, _ = build_reward_funcs(rewards, 8, 12)
    for r in recs[2]:
        it = by_id[r["item_id"]]
        assert f"Compute {it['question'].split()[1]}" in r["prompt"]               # the completion's own item
        (fn,) = [f for f in funcs if f.__name__ == r["func"]]
        again = fn(prompts=[r["prompt"]], completions=[r["completion"]], label=[it["label"]], item_id=[it["item_id"]],
                   completion_ids=[r["completion_ids"]], finish_reason=[r["finish_reason"]])
        assert again == [r["reward"]], r
    key = lambda r: (r["func"], r["item_id"], r["completion"], r["reward"])   # noqa: E731
    assert sorted(map(key, recs[1])) == sorted(map(key, recs[2]))
    # the same per-step losses, and the saved model is full weights
    one, two = _losses(tmp_path / "grpo1"), _losses(tmp_path / "grpo2")
    assert sorted(one) == sorted(two) == [1, 2, 3] and max(abs(one[s] - two[s]) for s in one) <= 1e-4, (one, two)
    print(f"grpo, fsdp2: max |weight - 1 process| = "
          f"{_close(_weights(tmp_path / 'grpo2' / 'model'), _weights(tmp_path / 'grpo1' / 'model'), 1e-4):.1e}")


@pytest.mark.slow
@pytest.mark.engines
def test_stage_train_runs_under_torchrun_when_launch_processes_is_two(tmp_path, rand_lm, params):
    """The real `librarm stage train` step with launch.processes 2, sharded (launch.sharding
    fsdp2): the CLI re-runs itself under torchrun, both processes train, the validation callback
    decodes on gathered weights in both, rank 0 writes the model (full weights) and the log."""
    p = copy.deepcopy(params)
    p["models"]["rand"] = {"source": "path", "path": str(rand_lm), "role": "judge"}
    p["sft"].update(init="rand", steps=4, batch_size=4, val_items=2, val_every=1000, save_steps=2, max_length=128)
    p["judge"]["max_new_tokens"] = 8
    p["launch"].update(processes=2, sharding="fsdp2")
    write_json(tmp_path / "config.json", p)
    spec = _sft_spec(tmp_path, rand_lm, "unused")
    val = [{"question": f"Compute {i}+1.", "response": f"\\boxed{{{i + 1}}}", "label": 1, "item_id": f"v{i}",
            "index": i, "subset": "val", "model": "g"} for i in range(2)]
    write_jsonl(tmp_path / "val.jsonl", val)
    cmd = [sys.executable, "-m", "librarm.cli", "stage", "train", "--config", str(tmp_path / "config.json"),
           "--in", "train", str(tmp_path / "val.jsonl"), "--in", "val", str(tmp_path / "val.jsonl"),
           "--in", "sft", spec["data"], "--out", "model", str(tmp_path / "judge_sft"),
           "--out", "log", str(tmp_path / "log.json"), "--wildcard", "model=judge_sft", "--threads", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "LIBRARM_TRACKING": "0"}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 processes under torchrun" in res.stdout
    assert res.stdout.count("librarm train model=judge_sft:") == 1          # rank 0 alone reports
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["global_step"] == 4 and [h["step"] for h in log["val_curve"]] == [4]
    saved, init = _weights(tmp_path / "judge_sft"), _weights(rand_lm)
    assert saved.keys() == init.keys() and all(saved[k].shape == init[k].shape for k in init)
