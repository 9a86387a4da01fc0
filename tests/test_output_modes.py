"""Every output file gets the same mode, model folders included: safetensors writes its files 0600,
and the trainers' model folders (train._finish, dpo's copied base policy) are given the umask's
mode (0644 files, 0755 folders under umask 022) before they are moved into place."""
import os
import stat
from pathlib import Path

import pytest


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def test_trained_model_folder_is_0644(tmp_path, umask_022):
    import torch
    from safetensors.torch import save_file

    from librarm.stages.train import _finish

    class State:
        global_step, log_history = 3, [{"loss": 1.0}]

    class Trainer:
        state = State()

        def save_model(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            save_file({"w": torch.zeros(2)}, str(Path(path) / "model.safetensors"))   # 0600, as safetensors does

    class Tok:
        def save_pretrained(self, path):
            (Path(path) / "tokenizer.json").write_text("{}")

    out = tmp_path / "models" / "judge_sft"
    out.parent.mkdir()
    _finish(Trainer(), Tok(), out, 0.0, 10)
    assert _modes(out) == {".": 0o755, "model.safetensors": 0o644, "tokenizer.json": 0o644}


def test_dpo_without_pairs_copies_the_base_policy_with_the_umask_mode(tmp_path, umask_022, params):
    from librarm.run.settings import call
    from librarm.stages.dpo import run_dpo

    init = tmp_path / "init"
    init.mkdir()
    (init / "model.safetensors").write_bytes(b"x")
    os.chmod(init / "model.safetensors", 0o600)
    pairs, val = tmp_path / "pairs.jsonl", tmp_path / "val.jsonl"
    pairs.write_text("")
    val.write_text("")
    out = tmp_path / "policy"
    log = call(run_dpo, params, str(pairs), str(val), str(init), str(out), name="none", seed=0)
    assert log["pairs"] == 0
    assert _modes(out) == {".": 0o755, "model.safetensors": 0o644}
