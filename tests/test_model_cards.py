"""Model cards (librarm.stages.model_cards): one Hugging Face card per trained judge and DPO policy,
written by the report stage beside the report, never into the model folders; and `librarm
push-model`, which uploads a model folder with its card as README.md in one commit (huggingface_hub
runs for real; only its HTTP transport is a stub that answers like the Hub)."""
from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path

import pytest

from librarm.run import paths as P
from librarm.run.io import file_sha256, write_json
from librarm.run.settings import call
from librarm.stages.model_cards import (
    MODEL_CARDS,
    collect_models,
    find_model,
    push_model,
    write_model_cards,
)

JUDGES = {"sft": "judge_sft", "rl": "judge_rl", "scalar": "judge_scalar"}
LIBRA = {"base": 0.61, "sft": 0.777, "rl": 0.825, "scalar": 0.489}


def small_params(params: dict, seeds=(0,)) -> dict:
    p = copy.deepcopy(params)
    p["evaluate"]["judges"] = ["base", "sft", "rl", "scalar"]
    p["pairs"].update(labelers=["rl", "gold"], gold_curve=[50], raw_labelers=[])
    p["dpo"]["seeds"] = list(seeds)
    p["report"]["fit_labelers"] = ["rl"]
    return p


def _jsonl(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(n)))


def _model(folder: Path, seed: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
    (folder / "model.safetensors").write_bytes(hashlib.sha256(seed.encode()).digest() * 64)
    (folder / "tokenizer.json").write_text("{}")
    return hashlib.sha256(file_sha256(folder / "model.safetensors").encode()).hexdigest()


def make_run(root: Path, params: dict) -> dict:
    """The files a finished run leaves that the cards read (a stand-in for results/, tiny)."""
    _jsonl(root / P.BENCH_FILE, 24)
    for f in (P.RS_SFT, P.JUDGE_TRAIN, P.JUDGE_RL_POOL):
        _jsonl(root / f, 10)
    bench_sha = file_sha256(root / P.BENCH_FILE)
    digests = {}
    inits = {"judge_sft": "results/bootstrap/models/judge_base", "judge_rl": "results/train/judge_sft",
             "judge_scalar": "results/bootstrap/models/judge_base"}
    for judge, model in JUDGES.items():
        folder = P.TRAINED_MODEL.format(model=model)
        digests[model] = _model(root / folder, model)
        write_json(root / P.TRAIN_LOG.format(model=model),
                   {"init": inits[model], "kind": params["models"][model]["train"], "global_step": 30, "seconds": 2.0})
    summary = {}
    for judge in params["evaluate"]["judges"]:
        s = LIBRA[judge]
        m = {"libra_score": s, "accuracy": s, "macro_f1": s - 0.01, "n_items": 24,
             "subset_accuracy": {"a": s - 0.02, "b": s + 0.02},
             "ci95": {"libra_score": [s - 0.05, s + 0.05], "subset_accuracy.a": [s - 0.1, s + 0.06]},
             "provenance": {"git_commit": "c0ffee", "data": {P.BENCH_FILE: bench_sha},
                            "models": [{"model": P.TRAINED_MODEL.format(model=JUDGES[judge]),
                                        "weights_sha256": digests.get(JUDGES.get(judge))}] if judge in JUDGES else []}}
        write_json(root / P.EVAL_METRICS.format(judge=judge), m)
        summary[judge] = {"libra_score": s, "libra_score_ci95": [s - 0.05, s + 0.05]}
    write_json(root / P.EVAL_SUMMARY, {"judges": summary})
    policies = {}
    for policy in ["rl", "gold", "curve/gold-50"]:
        _jsonl(root / P.PAIRS_FILE.format(policy=policy), 12)
        for seed in params["dpo"]["seeds"]:
            folder = P.DPO_MODEL.format(policy=policy, seed=seed)
            digests[f"{policy}/{seed}"] = _model(root / folder, f"{policy}/{seed}")
            write_json(root / P.DPO_LOG.format(policy=policy, seed=seed), {"global_step": 4, "pairs": 12})
            write_json(root / P.POLICY_RUN_EVAL.format(policy=policy, run=f"seed-{seed}"),
                       {"avg_at_k": {"all": 0.4, "s1": 0.5}, "ci95": {"all": [0.3, 0.5], "s1": [0.4, 0.6]}, "k": 4,
                        "provenance": {"git_commit": "c0ffee", "data": {"results/problems/s1.jsonl": "ab" * 32}}})
        policies[policy] = {"gain": {"all": 0.15}, "gain_ci95": {"all": [0.05, 0.25]}}
    write_json(root / P.DOWNSTREAM_SUMMARY, {"policies": policies})
    return digests


@pytest.fixture
def run_root(tmp_path, params):
    p = small_params(params)
    digests = make_run(tmp_path, p)
    return tmp_path, p, digests


def test_a_card_per_trained_judge_and_policy_outside_the_model_folders(run_root):
    from huggingface_hub import ModelCard

    root, p, digests = run_root
    out = root / MODEL_CARDS
    written = call(write_model_cards, p, out, root, params_hash="0123456789abcdef", git_commit="deadbeef")
    cards = sorted(Path(w).parent.name for w in written[1:])
    # base and teacher are not trained by the pipeline: no card; every DPO policy has one
    assert cards == ["libra-judge-rl", "libra-judge-scalar", "libra-judge-sft", "libra-policy-curve-gold-50",
                     "libra-policy-gold", "libra-policy-rl"]
    assert written[0] == str(out / "models.json")
    for model in JUDGES.values():
        assert not (root / P.TRAINED_MODEL.format(model=model) / "README.md").exists()
    assert not list((root / "results/dpo").rglob("README.md"))

    card = ModelCard((out / "libra-judge-rl" / "README.md").read_text())
    (result,) = card.data.eval_results
    assert (result.metric_name, result.metric_value) == ("Libra score", 82.5)
    assert "tiny-world" in card.data.tags and card.data.librarm["tiny_world"] is True
    assert card.data.librarm["weights_sha256"] == digests["judge_rl"]
    assert card.data.librarm["params_hash"] == "0123456789abcdef" and card.data.librarm["git_commit"] == "deadbeef"
    text = card.text
    assert "**Libra score: 82.5%** (95% CI [77.5, 87.5])" in text
    assert f"sha256 `{file_sha256(root / P.BENCH_FILE)}`" in text
    # an rl judge trains on the rl pool (rl.items: pool), starts from the SFT judge, and says so
    assert f"`{P.JUDGE_RL_POOL}` (10 records, sha256 `{file_sha256(root / P.JUDGE_RL_POOL)}`)" in text
    assert "Starts from: `judge_sft`" in text and "Base model: `judge_base`, a tiny-world model" in text
    assert "**Tiny world.**" in text and "Do not deploy it" in text

    policy = ModelCard((out / "libra-policy-rl" / "README.md").read_text())
    assert policy.data.eval_results[0].metric_value == 40.0
    assert "Gain over the base policy: +15.0 points (95% CI [+5.0, +25.0])" in policy.text
    assert "The labeler's Libra score: 82.5%." in policy.text
    assert f"`{P.PAIRS_FILE.format(policy='rl')}` (12 records" in policy.text
    assert f"dpo.beta: {p['dpo']['beta']}" in policy.text


def test_the_manifest_names_each_models_folder_digest_data_and_scores(run_root):
    root, p, digests = run_root
    models = {m["card"]: m for m in call(collect_models, p, root, params_hash="h", git_commit="c")}
    sft = models["libra-judge-sft"]
    assert sft["path"] == "results/train/judge_sft" and sft["weights_sha256"] == digests["judge_sft"]
    assert sft["registered_name"] == "libra-judge-sft" and sft["kind"] == "sft"
    assert [d["path"] for d in sft["training_data"]] == [P.RS_SFT]
    assert sft["dataset"] == {"name": "libra_bench", "path": P.BENCH_FILE, "sha256": file_sha256(root / P.BENCH_FILE),
                              "records": 24}
    assert sft["metrics"]["values"]["libra_score"] == LIBRA["sft"]
    assert sft["metrics"]["ci95"]["libra_score"] == [LIBRA["sft"] - 0.05, LIBRA["sft"] + 0.05]
    # a digest the evaluation did not record is computed from the folder (the same way)
    gold = models["libra-policy-gold"]
    assert gold["weights_sha256"] == digests["gold/0"] and gold["path"] == "results/dpo/gold/seed-0/model"
    assert gold["labeler_kind"] == "gold" and gold["labeler_libra_score"] is None
    assert models["libra-policy-curve-gold-50"]["registered_name"] == "libra-policy-curve-gold-50"


def test_several_dpo_seeds_give_a_card_each_under_one_registered_name(tmp_path, params):
    p = small_params(params, seeds=(0, 1))
    make_run(tmp_path, p)
    models = call(collect_models, p, tmp_path)
    rl = [m for m in models if m.get("policy") == "rl"]
    assert [(m["card"], m["registered_name"], m["seed"]) for m in rl] == [
        ("libra-policy-rl-seed-0", "libra-policy-rl", 0), ("libra-policy-rl-seed-1", "libra-policy-rl", 1)]
    assert "gain" not in rl[0]["metrics"]["values"]      # the gain is over seeds: not one model's


def test_find_model_by_card_judge_model_or_policy_name(run_root):
    root, p, _ = run_root
    call(write_model_cards, p, root / MODEL_CARDS, root)
    cards = root / MODEL_CARDS
    assert find_model("libra-judge-rl", cards)["card"] == "libra-judge-rl"
    assert find_model("judge_rl", cards)["card"] == "libra-judge-rl"
    assert find_model("curve/gold-50", cards)["card"] == "libra-policy-curve-gold-50"
    # "rl" is a judge and a labeler's policy: the judge wins the lookup order, the card name is exact
    assert find_model("rl", cards)["card"] == "libra-judge-rl"
    with pytest.raises(ValueError, match="no model 'nope'.*libra-judge-rl"):
        find_model("nope", cards)
    with pytest.raises(FileNotFoundError, match="no model cards"):
        find_model("rl", root / "elsewhere")


# ----------------------------------------------------------------------------- push-model
class FakeHub:
    """The Hub's HTTP API as huggingface_hub's create_repo / create_commit use it (repo creation,
    README metadata validation, upload modes, the NDJSON commit), answering every file as a regular
    (inline) upload; anything else is recorded and refused."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self.repos: list[dict] = []

    def __call__(self, request):
        import httpx2

        path = request.url.path
        self.requests.append((request.method, path))
        if request.method == "POST" and path == "/api/repos/create":
            self.repos.append(json.loads(request.content))
            return httpx2.Response(200, json={"url": "https://huggingface.co/team/judge", "name": "team/judge"})
        if request.method == "POST" and path == "/api/validate-yaml":
            return httpx2.Response(200, json={})
        if request.method == "POST" and "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                        for f in files]})
        if request.method == "POST" and "/commit/" in path:
            lines = [json.loads(line) for line in request.content.decode().splitlines()]
            files = {ln["value"]["path"]: base64.b64decode(ln["value"]["content"]) for ln in lines if ln["key"] == "file"}
            self.commits.append({"path": path, "header": lines[0]["value"], "files": files})
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/team/judge/commit/" + "a" * 40,
                                              "commitOid": "a" * 40})
        return httpx2.Response(404, json={"error": f"not part of the fake hub: {request.method} {path}"})

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]


@pytest.fixture
def fake_hub(monkeypatch):
    import httpx2
    from huggingface_hub.utils import _http

    hub = FakeHub()
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub), follow_redirects=True))
    try:
        yield hub
    finally:
        _http.set_client_factory(_http.default_client_factory)


def test_push_model_uploads_the_folder_and_its_card_in_one_commit(run_root, fake_hub, monkeypatch):
    root, p, _ = run_root
    call(write_model_cards, p, root / MODEL_CARDS, root, params_hash="h", git_commit="c")
    info = push_model("libra-judge-rl", "team/judge", root=root, private=True)
    assert info.oid == "a" * 40
    assert fake_hub.repos == [{"name": "judge", "organization": "team", "visibility": "private"}]
    (commit,) = fake_hub.commits
    assert commit["path"] == "/api/models/team/judge/commit/main"
    folder = root / P.TRAINED_MODEL.format(model="judge_rl")
    want = {f.name: f.read_bytes() for f in folder.iterdir()}
    want["README.md"] = (root / MODEL_CARDS / "libra-judge-rl" / "README.md").read_bytes()
    assert commit["files"] == want
    assert "libra-judge-rl" in commit["header"]["summary"]
    # the card went up as README.md; the model folder itself is unchanged (no README written there)
    assert not (folder / "README.md").exists()
    assert [w for w in fake_hub.writes() if w[1] not in ("/api/repos/create", "/api/validate-yaml")
            and "/preupload/" not in w[1] and "/commit/" not in w[1]] == []

    # the command line does the same; an unknown model is one line, before any request
    from librarm.cli import main

    monkeypatch.chdir(root)
    assert main(["push-model", "curve/gold-50", "team/judge"]) == 0
    assert sorted(fake_hub.commits[-1]["files"]) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    n = len(fake_hub.requests)
    assert main(["push-model", "nope", "team/judge"]) == 2
    assert main(["push-model", "rl", "not a repo id"]) == 2
    assert len(fake_hub.requests) == n


def test_push_model_refuses_a_missing_folder(run_root, fake_hub):
    import shutil

    root, p, _ = run_root
    call(write_model_cards, p, root / MODEL_CARDS, root)
    shutil.rmtree(root / P.TRAINED_MODEL.format(model="judge_sft"))
    with pytest.raises(FileNotFoundError, match="model folder is missing"):
        push_model("sft", "team/judge", root=root)
    assert fake_hub.requests == []
