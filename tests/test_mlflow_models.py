"""MLflow as a team uses it, and DVC's tables of the same runs.

Unit level (a store in a temporary folder, records made the way jobs make them): the pipeline run
carries the params (hash, preset, every setting) and the report's headline metrics; every trained
judge and DPO policy of the report's models.json becomes an external LoggedModel (its folder and
weights digest as tags, no weights copied) with its bench metrics bound to the model and the bench
dataset, registered as libra-judge-<judge> / libra-policy-<labeler>, one version per set of
weights; a copied store writes into the copy, never into the original.

On the ci run (conftest.ci_run, copied): the report tracked into the default store, `dvc repro`,
a no-op `dvc repro` (timed), `dvc exp run -S dpo.beta=0.2` tracked: two pipeline runs that differ
in dpo.beta, registered judges (one version: not retrained) and policies (two), the documented
`dvc exp show` / `dvc metrics diff` recipes at 80 columns, and the MLflow UI in a browser (the
models page lists the judges; the compare page shows the two dpo.beta values side by side)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import ENV, REPO, free_port, mlflow_server_env, run, serve_on_loopback, stop_group
from test_model_cards import JUDGES, make_run, small_params

from librarm.run.settings import call
from librarm.run.tracking import flush_spool, make_relocatable, pipeline_context, preset_of, stage_run
from librarm.stages.model_cards import MODEL_CARDS, write_model_cards

# the browser fixtures (browser, page): Playwright with the OS's Chromium
pytest_plugins = ("browser",)

HEADLINE = {"libra.rl": 0.825, "libra.sft": 0.777, "gain.rl": 0.15, "gain.gold": 0.12, "bench_items": 24,
            "r_gain_vs_libra_score": None}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIBRARM_TRACKING", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def client_of(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root}/mlflow/mlflow.db")


def tracked_report(params: dict, root: Path, headline=HEADLINE) -> None:
    """What the report job leaves in the spool (its headline as metrics, the cards and models.json
    as artifacts), then the import at the run's end."""
    written = call(write_model_cards, params, MODEL_CARDS, root, params_hash="h", git_commit="c")
    with stage_run(pipeline_context(params), "report", {"report": params["report"]}) as run:
        run.log_metrics(headline)
        for path in written:
            run.log_artifact(os.path.relpath(path, root))
    assert flush_spool() == 1


def pipelines(client, experiment="libra"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`librarm.kind` = 'pipeline'", order_by=["attributes.start_time"])


def versions(client, name: str) -> list:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def test_the_pipeline_run_carries_the_params_and_the_headline(store, params):
    p = small_params(params)
    make_run(store, p)
    tracked_report(p, store)
    beta = copy.deepcopy(p)
    beta["dpo"]["beta"] = 0.2
    tracked_report(beta, store, {**HEADLINE, "gain.rl": 0.2})
    client = client_of(store)
    first, second = pipelines(client)
    for pipe, want, gain in ((first, p, 0.15), (second, beta, 0.2)):
        assert pipe.data.params == dict(pipeline_context(want).shown)
        assert pipe.data.params["dpo.beta"] == str(want["dpo"]["beta"])
        assert pipe.data.params["preset"] == "default" and len(pipe.data.params["params_hash"]) == 16
        assert pipe.data.params["judges"] == ",".join(want["judges"])        # a registry by its names
        assert pipe.data.metrics == {k: float(v) for k, v in {**HEADLINE, "gain.rl": gain}.items() if v is not None}
    assert first.data.params["params_hash"] != second.data.params["params_hash"]


def test_every_trained_model_is_logged_and_registered_without_its_weights(store, params):
    p = small_params(params)
    digests = make_run(store, p)
    tracked_report(p, store)
    client = client_of(store)
    exp = client.get_experiment_by_name("libra")
    models = {m.name: m for m in client.search_logged_models([exp.experiment_id])}
    assert sorted(models) == ["libra-judge-rl", "libra-judge-scalar", "libra-judge-sft", "libra-policy-curve-gold-50",
                              "libra-policy-gold", "libra-policy-rl"]
    rl = models["libra-judge-rl"]
    assert rl.tags["mlflow.model.isExternal"] == "true"
    assert rl.tags["librarm.path"] == "results/train/judge_rl"
    assert rl.tags["librarm.weights_sha256"] == digests["judge_rl"]
    assert rl.tags["librarm.training_data.0"].startswith("results/judge_data/rl_pool.jsonl@sha256:")
    assert rl.model_type == "judge" and str(rl.status).endswith("READY")
    bench_sha = hashlib.sha256((store / "results/bench/libra_bench.jsonl").read_bytes()).hexdigest()
    got = {m.key: (m.value, m.dataset_name, m.dataset_digest) for m in rl.metrics}
    assert got["libra_score"] == (0.825, "libra_bench", bench_sha[:16])
    assert got["ci95.libra_score.low"][0] == pytest.approx(0.775)
    # the model's own run holds the bench as a dataset input and the model as a model input
    (model_run,) = client.search_runs([exp.experiment_id], "tags.`librarm.model_card` = 'libra-judge-rl'")
    assert model_run.data.tags["mlflow.parentRunId"] == pipelines(client)[0].info.run_id
    (ds,) = model_run.inputs.dataset_inputs
    assert (ds.dataset.name, ds.dataset.digest) == ("libra_bench", bench_sha[:16])
    assert json.loads(ds.dataset.source)["uri"] == "results/bench/libra_bench.jsonl"
    assert [i.model_id for i in client.get_run(model_run.info.run_id).inputs.model_inputs] == [rl.model_id]
    # the model's artifacts: MLflow's MLmodel stub and the card; no weights
    names = sorted(a.path for a in client.list_logged_model_artifacts(rl.model_id))
    assert names == ["MLmodel", "README.md"]
    assert not list((store / "mlflow").rglob("*.safetensors"))
    # registered: one version per model, pointing at the logged model
    for name in models:
        (v,) = versions(client, name)
        assert v.source == f"models:/{models[name].model_id}"      # the registry's link to the logged model
        assert v.tags["librarm.path"] == models[name].tags["librarm.path"]
    assert "Libra score 82.5%" in versions(client, "libra-judge-rl")[0].description


def test_the_same_weights_are_one_model_and_new_weights_a_new_version(store, params):
    """A DVC experiment that changes dpo.beta retrains the policies, not the judges: the judges stay
    one version, each policy gets a second."""
    p = small_params(params)
    make_run(store, p)
    tracked_report(p, store)
    beta = copy.deepcopy(p)
    beta["dpo"]["beta"] = 0.2
    for policy in ("rl", "gold", "curve/gold-50"):
        weights = store / f"results/dpo/{policy}/seed-0/model/model.safetensors"
        weights.write_bytes(weights.read_bytes()[::-1])
    tracked_report(beta, store)
    client = client_of(store)
    assert [len(versions(client, f"libra-judge-{j}")) for j in JUDGES] == [1, 1, 1]
    assert [len(versions(client, f"libra-policy-{n}")) for n in ("rl", "gold", "curve-gold-50")] == [2, 2, 2]
    exp = client.get_experiment_by_name("libra")
    assert len(client.search_logged_models([exp.experiment_id])) == 3 + 2 * 3


def test_preset_of_names_the_presets_the_params_hold(params):
    from librarm.run.config import load_params

    assert preset_of(params) == "default"
    assert preset_of(load_params(REPO / "params.yaml", ["ci"])) == "ci"
    assert preset_of(load_params(REPO / "params.yaml", ["ci", "vllm-cpu"])) == "ci+vllm-cpu"
    edited = load_params(REPO / "params.yaml", ["ci"])
    edited["sampling"]["n"] += 1                 # ci with an edit is no longer the ci preset
    assert preset_of(edited) == "default"


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _record(params, stage: str, tmp: Path, text: str) -> None:
    art = tmp / f"{stage}.txt"
    art.write_text(text)
    with stage_run(pipeline_context(params), stage, {"x": 1}) as run:
        run.log_metrics({"a": 1.0})
        run.log_artifact(art.relative_to(tmp))


def test_a_copied_store_writes_into_the_copy_never_into_the_original(tmp_path, params, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("LIBRARM_TRACKING", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, copied = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    monkeypatch.chdir(original)
    _record(params, "bench", original, "first")
    assert flush_spool() == 1
    before = _tree(original / "mlflow")
    assert any(k.startswith("artifacts/") and k.endswith("bench.txt") for k in before)
    shutil.copytree(original / "mlflow", copied / "mlflow")
    monkeypatch.chdir(copied)
    # the librarm import into the copy ...
    _record(params, "verify", copied, "second")
    assert flush_spool() == 1
    # ... and a plain MLflow client on the copy (cwd: the copy's checkout, like `mlflow ui`)
    client = MlflowClient("sqlite:///mlflow/mlflow.db")
    exp = client.get_experiment_by_name("libra")
    assert exp.artifact_location == "mlflow/artifacts"
    (bench,) = client.search_runs([exp.experiment_id], "tags.`librarm.stage` = 'bench'")
    assert not Path(bench.info.artifact_uri).is_absolute()
    (copied / "extra.txt").write_text("third")
    client.log_artifact(bench.info.run_id, str(copied / "extra.txt"))
    assert [a.path for a in client.list_artifacts(bench.info.run_id)] == ["bench.txt", "extra.txt"]
    assert _tree(original / "mlflow") == before, "writing to the copy changed the original store"
    after = _tree(copied / "mlflow")
    assert any(k.endswith("verify.txt") for k in after) and any(k.endswith("extra.txt") for k in after)
    assert str(original).encode() not in (copied / "mlflow" / "mlflow.db").read_bytes()


def test_an_old_store_with_absolute_locations_becomes_relocatable(tmp_path, monkeypatch):
    """A store from before (absolute file:// locations under the checkout) is rewritten in place on
    the next import; a location outside the checkout stays."""
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    client = MlflowClient()
    inside = client.create_experiment("libra", artifact_location=(tmp_path / "mlflow/artifacts").as_uri())
    outside = client.create_experiment("elsewhere", artifact_location=(tmp_path.parent / "far").as_uri())
    run_id = client.create_run(inside).info.run_id
    assert client.get_run(run_id).info.artifact_uri.startswith("file://")
    assert make_relocatable(db) >= 2
    assert client.get_experiment(inside).artifact_location == "mlflow/artifacts"
    assert client.get_run(run_id).info.artifact_uri == f"mlflow/artifacts/{run_id}/artifacts"
    assert client.get_experiment(outside).artifact_location == (tmp_path.parent / "far").as_uri()
    assert make_relocatable(db) == 0


# ----------------------------------------------------------------------------- the ci run, tracked, and a DVC experiment
# The documented recipes (docs/configuration.md, DVC), run as written
CONFIG_DOC = REPO / "docs" / "configuration.md"


def documented(prefix: str) -> str:
    """The first command line in docs/configuration.md that starts with `prefix` (its comment cut)."""
    for line in CONFIG_DOC.read_text().splitlines():
        if line.startswith(prefix):
            return re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
    raise AssertionError(f"no `{prefix}` line in {CONFIG_DOC}")


@pytest.fixture(scope="module")
def tracked(ci_run, tmp_path_factory):
    """A copy of the session's ci run (results, Snakemake records and mtimes kept): its report rerun
    with tracking on (the pipeline run, its models), then `dvc repro` (ci_run holds a dvc.lock: only
    the report stage, rerun here, differs from it; the lock is committed), a
    no-op `dvc repro` timed, and `dvc exp run -S dpo.beta=0.2` with tracking on."""
    root = tmp_path_factory.mktemp("tracked") / "repo"
    shutil.copytree(ci_run, root, symlinks=True, ignore=shutil.ignore_patterns("mlflow", "reads", "__pycache__"))
    shared = REPO.parent / "shared"
    if shared.exists() and not (root.parent / "shared").exists():
        os.symlink(shared, root.parent / "shared")
    env = {k: v for k, v in ENV.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "LIBRARM_RECORD_READS")}
    env.update(PYTHONPATH=str(root / "workflow"), LIBRARM_TRACKING="1")
    seconds = {}
    started = time.monotonic()
    run("snakemake --cores 2 --forcerun report", root, env=env)
    seconds["report"] = time.monotonic() - started
    baseline = json.loads((root / "results/report/metrics.json").read_text())
    started = time.monotonic()
    run("dvc repro", root, env=env)
    seconds["repro"] = time.monotonic() - started
    run("git add dvc.lock && git -c user.email=t@t -c user.name=t commit -qm 'dvc repro'", root, env=env)
    started = time.monotonic()
    noop = run("dvc repro", root, env=env)
    seconds["noop_repro"] = time.monotonic() - started
    started = time.monotonic()
    run("dvc exp run -n beta02 -S dpo.beta=0.2", root, env=env, timeout=1800)
    seconds["exp_run"] = time.monotonic() - started
    print(f"seconds: {seconds}")
    return {"root": root, "env": env, "seconds": seconds, "noop": noop.stdout + noop.stderr, "baseline": baseline,
            "exp": json.loads((root / "results/report/metrics.json").read_text())}


@pytest.mark.slow
def test_two_pipeline_runs_differ_in_dpo_beta_and_carry_their_headlines(tracked):
    client = client_of(tracked["root"])
    runs = pipelines(client)
    assert [r.data.params["dpo.beta"] for r in runs] == ["0.1", "0.2"]
    assert [r.data.params["dvc_exp"] for r in runs] == ["None", "beta02"]
    assert {r.data.params["preset"] for r in runs} == {"ci"}
    for r, want in zip(runs, (tracked["baseline"], tracked["exp"])):
        assert r.data.metrics == {k: float(v) for k, v in want.items() if v is not None}


@pytest.mark.slow
def test_judges_are_registered_once_and_retrained_policies_again(tracked):
    from librarm.run.config import load_params
    from librarm.stages.model_cards import trained_judges

    root = tracked["root"]
    client = client_of(root)
    judges = call(trained_judges, load_params(root / "params.yaml"))
    for judge in judges:
        (v,) = versions(client, f"libra-judge-{judge}")       # the experiment did not retrain them
        model = client.get_logged_model(v.source.removeprefix("models:/"))
        assert model.tags["librarm.path"] == f"results/train/{judges[judge]}"
        assert any(m.key == "libra_score" and m.dataset_name == "libra_bench" for m in model.metrics)
        card = (root / MODEL_CARDS / f"libra-judge-{judge}" / "README.md").read_text()
        assert f"**Libra score: {100 * tracked['exp'][f'libra.{judge}']:.1f}%**" in card
    changed = [v for v in client.search_registered_models() if v.name.startswith("libra-policy-")
               and len(versions(client, v.name)) == 2]
    assert changed, "no policy got a second version from the dpo.beta experiment"


@pytest.mark.slow
def test_a_noop_dvc_repro_is_quick(tracked):
    assert "didn't change" in tracked["noop"] or "up to date" in tracked["noop"].lower()
    assert tracked["seconds"]["noop_repro"] <= 10, tracked["seconds"]


def _render(cmd: str, root: Path, env: dict) -> list[str]:
    res = run(cmd, root, env={**env, "COLUMNS": "80"})
    return [ln.rstrip() for ln in res.stdout.splitlines() if ln.strip()]


@pytest.mark.slow
def test_dvc_tables_fit_80_columns_with_the_documented_recipes(tracked):
    root, env = tracked["root"], tracked["env"]
    lines = _render(documented("dvc exp show --only-changed --drop") + " --no-pager", root, env)
    table = "\n".join(lines)
    assert max(map(len, lines)) <= 80 and "…" not in table, table
    header = next(ln for ln in lines if "Experiment" in ln).split()
    assert header[0] == "Experiment" and {"libra.rl", "gain.rl", "gain.gold", "dpo.beta"} <= set(header), table
    (exp_row,) = [ln for ln in lines if "[beta02]" in ln]
    assert exp_row.split()[-1] == "0.2", table
    assert any(ln.split()[-1] == "0.1" for ln in lines if ln.split()[0] in ("main", "master")), table
    changed = _render(documented("dvc metrics diff --no-path"), root, env)
    assert max(map(len, changed)) <= 80 and changed[0].split()[0] == "Metric", "\n".join(changed)
    every = _render(documented("dvc metrics diff --all --no-path"), root, env)
    assert max(map(len, every)) <= 80, "\n".join(every)
    # (a metric without a value, here the ci run's correlations over no fitted labeler, DVC leaves out)
    assert {ln.split()[0] for ln in every[1:]} == {k for k, v in tracked["exp"].items() if v is not None}, \
        "\n".join(every)
    params = _render(documented("dvc params diff"), root, env)
    assert any("dpo.beta" in ln and "0.2" in ln for ln in params) and max(map(len, params)) <= 80


# ----------------------------------------------------------------------------- the MLflow UI in a browser
@pytest.fixture(scope="module")
def mlflow_ui(tracked):
    """`mlflow ui` on the tracked copy's store (from its checkout, like the README says), on a free
    loopback port; stopped by PID."""
    root = tracked["root"]
    port = free_port()
    env = mlflow_server_env()
    proc = serve_on_loopback([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri",
                              "sqlite:///mlflow/mlflow.db", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                             f"http://127.0.0.1:{port}/health", root / "mlflow-ui.log", "mlflow ui", 120, cwd=root, env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


@pytest.mark.slow
@pytest.mark.engines
def test_the_mlflow_models_page_lists_the_registered_judges(mlflow_ui, tracked, page):
    from librarm.run.config import load_params
    from librarm.stages.model_cards import trained_judges

    judges = call(trained_judges, load_params(tracked["root"] / "params.yaml"))
    page.goto(f"{mlflow_ui}/#/models")
    for judge in judges:
        page.get_by_role("link", name=f"libra-judge-{judge}", exact=True).wait_for(timeout=60_000)
    page.keep("mlflow-models")


@pytest.mark.slow
@pytest.mark.engines
def test_the_mlflow_compare_view_shows_two_pipeline_runs_side_by_side(mlflow_ui, tracked, page):
    from urllib.parse import quote

    client = client_of(tracked["root"])
    runs = pipelines(client)
    exp = client.get_experiment_by_name("libra")
    ids = json.dumps([r.info.run_id for r in runs])
    page.goto(f"{mlflow_ui}/#/compare-runs?runs={quote(ids)}&experiments={quote(json.dumps([exp.experiment_id]))}")
    row = page.locator("tr", has=page.get_by_text("dpo.beta", exact=True)).first
    row.wait_for(timeout=60_000)
    cells = row.inner_text().split()
    assert cells[0] == "dpo.beta" and sorted(cells[1:]) == ["0.1", "0.2"], cells
    for metric in ("gain.rl", "libra.rl"):
        assert page.get_by_text(metric, exact=True).count() >= 1
    page.wait_for_timeout(2000)                  # the parallel-coordinates plot draws last (for the screenshot)
    page.keep("mlflow-compare")
