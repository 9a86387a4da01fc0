"""librarm.run.io: a bad JSONL line named by file:line:field (or quarantined and counted), atomic
writes that leave no partial file, canonical JSONL, stable seeds, and output file modes that follow
the umask."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import librarm.run.io
from librarm.run.io import InputError, atomic_path, read_jsonl, stable_seed, write_json, write_jsonl

SCHEMA = {"id": "str", "n": "int"}


def _write(tmp_path, lines: list[bytes]):
    p = tmp_path / "data.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


@pytest.mark.parametrize("line,field,words", [
    (b'{"id": "b", "n": 1', "<line>", "invalid JSON"),
    (b'{"id": "b"}', "n", "missing"),
    (b'{"id": "b", "n": "1"}', "n", "expected int"),
    (b'{"id": "b", "n": true}', "n", "bool"),
    (b'{"id": "a", "n": 2}', "id", "duplicate"),
    (b'{"id": "b", "n": 1, "x": "\xff"}', "<line>", "UTF-8"),
    (b'[1, 2]', "<line>", "object"),
    (b'{"id": "b", "n": ' + b'[' * 100_000 + b']' * 100_000 + b'}', "<line>", "nested too deeply"),
])
def test_bad_line_names_file_line_field(tmp_path, line, field, words):
    p = _write(tmp_path, [b'{"id": "a", "n": 1}', line])
    with pytest.raises(InputError) as exc:
        read_jsonl(p, SCHEMA, id_field="id")
    msg = str(exc.value)
    assert f"{p}:2:" in msg and f"'{field}'" in msg and words in msg


def test_quarantine_counts_instead_of_failing(tmp_path):
    p = _write(tmp_path, [b'{"id": "a", "n": 1}', b'oops', b'{"id": "c"}', b'{"id": "d", "n": 4}'])
    rep = read_jsonl(p, SCHEMA, id_field="id", on_bad="quarantine")
    assert [r["id"] for r in rep.records] == ["a", "d"]
    assert rep.n_quarantined == 2 and [q["line"] for q in rep.quarantined] == [2, 3]


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_write_jsonl_canonical(tmp_path):
    p = tmp_path / "x.jsonl"
    write_jsonl(p, [{"b": 1, "a": "é"}])
    assert p.read_text(encoding="utf-8") == json.dumps({"a": "é", "b": 1}, ensure_ascii=False) + "\n"


# The pinned value is the contract, not an implementation detail: stored samples, resumed runs and
# DVC-cached outputs were drawn with these seeds, so a change of the derivation (hash, encoding,
# bit width) silently changes every sample of a rerun. It is the first 16 hex digits of the SHA-256
# of the canonical JSON '[1, "gen", "p1", 0]', masked to 63 bits; change it only together with a
# cache-invalidating version bump.
PINNED_SEED = 2787628901074904312


def test_stable_seed_is_pinned_and_depends_on_every_id():
    base = stable_seed(1, "gen", "p1", 0)
    assert base == PINNED_SEED
    assert 0 <= base < 2**63
    # each id on its own changes the seed, and so does its type or the order of the ids
    others = [stable_seed(2, "gen", "p1", 0), stable_seed(1, "gen2", "p1", 0), stable_seed(1, "gen", "p2", 0),
              stable_seed(1, "gen", "p1", 1), stable_seed("1", "gen", "p1", 0), stable_seed(1, "p1", "gen", 0),
              stable_seed(1, "gen", "p1")]
    assert base not in others and len(set(others)) == len(others)


def test_stable_seed_is_the_same_in_another_process():
    """Reruns and resumes happen in other processes: the seed must not depend on Python's per-process
    string-hash randomization (hash(), set order), so a fresh interpreter with another
    PYTHONHASHSEED gives the pinned value."""
    code = ("from librarm.run.io import stable_seed; "
            "print(stable_seed(1, 'gen', 'p1', 0), stable_seed(1, 'gen', 'p1', 1))")
    workflow_dir = str(Path(librarm.run.io.__file__).resolve().parents[2])     # the librarm under test
    values = set()
    for hashseed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": workflow_dir})
        assert out.returncode == 0, out.stderr
        values.add(out.stdout.strip())
    assert values == {f"{PINNED_SEED} {stable_seed(1, 'gen', 'p1', 1)}"}


def test_output_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o002)
        write_json(tmp_path / "b.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_nested_line_is_quarantined_like_bad_json(tmp_path):
    p = _write(tmp_path, [b'{"id": "a", "n": 1}', b'[' * 100_000 + b']' * 100_000, b'{"id": "d", "n": 4}'])
    rep = read_jsonl(p, SCHEMA, id_field="id", on_bad="quarantine")
    assert [r["id"] for r in rep.records] == ["a", "d"] and rep.quarantined[0]["line"] == 2


def test_a_folder_is_not_a_jsonl_file(tmp_path):
    with pytest.raises(InputError, match=r"a folder, not a JSONL file"):
        read_jsonl(tmp_path)


def test_model_folders_get_the_umask_mode(tmp_path):
    """safetensors writes its files 0600: set_tree_mode gives a whole folder the mode of every other
    output (0644 files, 0755 folders under umask 022; 0664/0775 under 002)."""
    import torch
    from safetensors.torch import save_file

    from librarm.run.io import set_tree_mode

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "sub" / "x.json").write_text("{}")
    os.chmod(folder / "sub" / "x.json", 0o600)
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o600   # the writer's mode
    old = os.umask(0o022)
    try:
        set_tree_mode(folder)
        modes = {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}
        assert modes == {".": 0o755, "model.safetensors": 0o644, "sub": 0o755, "sub/x.json": 0o644}
        os.umask(0o002)
        set_tree_mode(folder)
        assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o664
        assert stat.S_IMODE((folder / "sub").stat().st_mode) == 0o775
    finally:
        os.umask(old)


def test_stage_io_gives_each_file_by_its_rules_name():
    from librarm.run.io import StageIO

    io = StageIO({"bench": ("b.jsonl",), "extra": (), "metrics": ("eval/rl/m.json", "eval/base/m.json")},
                 {"stats": ("s.json",), "sets": ("p/a.jsonl", "p/b.jsonl")}, {"judge": "rl"}, 2)
    assert io.input("bench") == "b.jsonl" and io.input_list("extra") == [] and io.wildcard("judge") == "rl"
    assert io.output("stats") == "s.json"
    # a list is matched to its keys by the paths pattern, whatever the order of either
    assert io.keyed("metrics", "eval/{judge}/m.json", "judge", ["base", "rl"]) == \
        {"base": "eval/base/m.json", "rl": "eval/rl/m.json"}
    assert io.keyed("sets", "p/{subset}.jsonl", "subset", ["b", "a"], output=True) == {"b": "p/b.jsonl", "a": "p/a.jsonl"}
    with pytest.raises(ValueError, match=r"missing \['eval/sft/m.json'\], unexpected \['eval/base/m.json'\]"):
        io.keyed("metrics", "eval/{judge}/m.json", "judge", ["rl", "sft"])
    with pytest.raises(ValueError, match="no input named 'model'"):
        io.input("model")
    with pytest.raises(ValueError, match="output 'sets': expected one path, got 2"):
        io.output("sets")
    with pytest.raises(ValueError, match="no wildcard 'policy'"):
        io.wildcard("policy")
