"""The DAG itself: dry-runs of every preset, lint, drift between Snakemake and dvc.yaml (with a
planted-mismatch twin), and, marked slow, a real ci run with the Snakemake/DVC agreement checks:
no-op reruns both ways, exact rerun sets after a params edit and after a module edit."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import COPY_IGNORE, ENV, FIRST_DVC_REPRO, REPO, needs_shared_data, outputs_digest, require_smollm2, run

from librarm.phases import out_paths
from librarm.run.io import read_jsonl


def dry_run_jobs(cwd, extra="") -> dict[str, int]:
    """Job counts per rule that `snakemake -n` would run (empty when nothing to do)."""
    res = run(f"snakemake -n --quiet rules {extra}", cwd)
    jobs: dict[str, int] = {}
    text = res.stdout + res.stderr
    block = re.search(r"Job stats:\n(.*?)\n\n", text + "\n\n", re.S)
    if not block:
        return jobs
    for line in block.group(1).splitlines()[2:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total",):
            jobs[parts[0]] = int(parts[1])
    return jobs


# ----------------------------------------------------------------------------- static checks
@pytest.mark.parametrize("preset", [None, "ci", "smoke-real", "paper", "seeds"])
def test_dry_run(preset):
    """Each preset's full DAG (--forceall, even after a run here) has that preset's own jobs: its rule
    set, its generators x subsets, judges, DPO policies and seeds, and (paper) its GPU resources."""
    extra = f"--configfile workflow/presets/{preset}.yaml" if preset else ""
    res = run(f"snakemake -n -p --forceall {extra}", REPO)
    # rule -> one (wildcards, resources) pair of dicts per job, from the printed job blocks
    jobs: dict[str, list[tuple[dict, dict]]] = {}
    for rule, block in re.findall(r"^rule (\w+):\n(.*?)\nShell command", res.stdout, re.S | re.M):
        fields = dict(re.findall(r"^\s*(\w+): (.*)$", block, re.M))
        wildcards = dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if kv)
        resources = dict(kv.split("=", 1) for kv in fields.get("resources", "").split(", ") if kv)
        jobs.setdefault(rule, []).append((wildcards, resources))
    counts = dry_run_jobs(REPO, f"--forceall {extra}")        # Snakemake's own job-count table
    assert counts == {rule: len(js) for rule, js in jobs.items()}, (counts, {r: len(j) for r, j in jobs.items()})

    def values(rule, key):
        return {w[key] for w, _ in jobs.get(rule, [])}

    def policies():                                          # (DPO policy, seed) of every dpo job
        return {(w["policy"], int(w["seed"])) for w, _ in jobs.get("dpo", [])}

    tiny_gens = {"gen_weak", "gen_mid", "gen_strong"}
    tiny_sets = {"tiny_l5", "tiny_aime24", "tiny_aime25", "judge_pool"}
    base_judges = {"base", "teacher", "sft", "nothink", "rl", "rl_from_base", "rl_no_length_penalty", "scalar"}
    base_models = {f"judge_{j}" for j in base_judges - {"base", "teacher"}}
    # every phase: bootstrap (tiny models), sampling, verification, bench, judges, downstream, report
    full = {"problems", "bootstrap_tiny", "bootstrap_stats", "sample", "sample_stats", "verify", "verify_stats",
            "bench", "judge_data", "rs", "train_judge", "train_stats", "evaluate", "eval_summary", "pairs_split",
            "pairs_sample", "pairs_verify", "pairs_label", "pairs_build", "dpo", "dpo_stats", "policy_eval",
            "policy_metrics", "downstream_summary", "report", "all"}
    tiny_samples = {(g, s) for g in tiny_gens for s in tiny_sets}
    samples = {(w["generator"], w["subset"]) for w, _ in jobs.get("sample", [])}
    assert counts["verify"] == counts["sample"]               # one verify job per sample job

    if preset is None:
        assert set(counts) == full, set(counts) ^ full
        assert samples == tiny_samples
        assert values("evaluate", "judge") == base_judges
        assert values("train_judge", "model") == base_models
        # one seed; every labeler, plus gold's curve; no raw/ policies (pairs.raw_labelers is empty)
        labelers = {"base", "sft", "rl", "nothink", "scalar", "gold", "gold_p60", "gold_p70", "gold_p80",
                    "gold_p90", "random"}
        assert policies() == {(p, 0) for p in labelers | {"curve/gold-50", "curve/gold-100", "curve/gold-200"}}
    elif preset == "ci":
        assert set(counts) == full, set(counts) ^ full
        assert samples == tiny_samples
        assert values("evaluate", "judge") == base_judges
        # ci's labelers, its one gold-curve point and the raw/gold policy (pairs.raw_labelers: [gold])
        assert policies() == {(p, 0) for p in ("base", "rl", "scalar", "gold", "gold_p70", "random",
                                               "curve/gold-15", "raw/gold")}
        assert values("pairs_label", "judge") == {"base", "rl", "scalar"}   # gold/random need no judge
    elif preset == "smoke-real":
        # stops at the judges: no tiny bootstrap (the GGUF model is prepared instead), no downstream
        assert set(counts) == {"prepare_model", "problems", "bootstrap_stats", "sample", "sample_stats", "verify",
                               "verify_stats", "bench", "judge_data", "rs", "train_judge", "train_stats",
                               "evaluate", "eval_summary", "all"}, set(counts)
        assert not any(r.startswith(("dpo", "pairs_", "policy_")) for r in counts)
        assert values("prepare_model", "model") == {"smollm2"}
        assert samples == {(g, s) for g in ("smollm2", "reference", "reference_wrong")
                           for s in ("math500_l5", "aime24", "aime25", "judge_pool")}
        assert values("train_judge", "model") == {"judge_sft", "judge_rl"}
        assert values("evaluate", "judge") == {"base", "sft", "rl"}
    elif preset == "paper":
        assert set(counts) == full - {"bootstrap_tiny"}, set(counts)     # hub models, nothing tiny to train
        gens = {"deepseek_r1": "0", "qwen3_32b": "4", "qwq_32b": "4", "r1_distill_7b": "1", "r1_distill_1_5b": "1"}
        # 5 generators x (3 eval subsets + judge pool), each sample job holding its generator's GPUs:
        # tensor_parallel_size 4 for the 32B vLLM models, 1 for the distills, none for the HTTP API
        assert samples == {(g, s) for g in gens for s in ("math500_l5", "aime24", "aime25", "judge_pool")}
        assert {(w["generator"], r["gpu"]) for w, r in jobs["sample"]} == set(gens.items())
        # vLLM judges hold their 4 GPUs; the HTTP teacher none
        ev = {w["judge"]: r["gpu"] for w, r in jobs["evaluate"]}
        assert ev["teacher"] == "0" and ev["rl"] == ev["sft"] == ev["base"] == "4", ev
        # training jobs: launch.processes 8 x gpus_per_process 1
        for rule in ("train_judge", "dpo"):
            assert jobs[rule] and all(r["gpu"] == "8" for _, r in jobs[rule]), rule
        assert {s for _, s in policies()} == {0, 1, 2}
        assert {p for p, _ in policies()} >= {"curve/gold-250", "curve/gold-500", "curve/gold-1000"}
    elif preset == "seeds":
        assert set(counts) == full | {"replicates"}, set(counts)
        assert counts["replicates"] == 1
        # 6 judge groups x 3 seeds and the scalar RM: 19 trainings; 26 labelers x 3 DPO seeds
        assert (counts["train_judge"], counts["dpo"]) == (19, 78), counts
        replicas = {f"{j}_s{k}" for j in ("sft", "nothink", "rl", "rl_from_base", "rl_no_length_penalty", "sft_more")
                    for k in (1, 2)}
        assert values("train_judge", "model") == base_models | {"judge_sft_more"} | {f"judge_{r}" for r in replicas}
        assert values("evaluate", "judge") == base_judges | {"sft_more"} | replicas
        assert {s for _, s in policies()} == {0, 1, 2} and ("sft_s1", 2) in policies()
        assert not any(p.startswith("curve/") for p, _ in policies())   # gold_curve: [] in this preset


def test_lint_clean():
    res = run("snakemake --lint", REPO, check=False)
    assert res.returncode == 0 and "Lints for" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_dvc_yaml_matches_registry():
    from librarm.phases import check_dvc_yaml

    assert check_dvc_yaml(REPO / "dvc.yaml") == []


@pytest.mark.parametrize("preset", [None, "ci", "paper", "smoke-real"])
def test_every_declared_param_is_in_the_params_file_dvc_reads(preset):
    """`dvc repro` fails on a declared params key missing from params.yaml (even one the schema
    defaults): the default file, and each preset's file as `librarm params --preset` writes it."""
    from librarm.phases import PHASES
    from librarm.run.config import load_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = raw if preset is None else load_params(REPO / "params.yaml", [preset])

    def has(key):
        node = cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    # a phase whose optional section the preset turns off (null) is not in its DAG
    missing = {p.name: [k for k in p.params if not has(k)] for p in PHASES.values()
               if not p.optional or cfg.get(p.optional) is not None}
    assert {p: ks for p, ks in missing.items() if ks} == {}


def load_rules(configfiles=()):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
    )

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with SnakemakeApi(OutputSettings(quiet={"all"} if False else None)) as api:
            wf = api.workflow(resource_settings=ResourceSettings(cores=1),
                              config_settings=ConfigSettings(configfiles=[Path(c) for c in configfiles]),
                              storage_settings=StorageSettings(), snakefile=Path("Snakefile"), workdir=Path("."))
            w = wf._get_workflow()
            w.include(wf.snakefile, overwrite_default_target=True)
            return [{"name": r.name, "outputs": [str(o) for o in r.output],
                     "params": sorted(n for n in r.params._names if n not in ("code", "cfg", "io")),
                     "has_code_param": "code" in r.params._names} for r in w.rules if r.name != "all"]
    finally:
        os.chdir(cwd)


def drift(rules, dvc_doc) -> list[str]:
    """What Snakemake builds vs what dvc.yaml declares: every rule output lies in exactly one
    stage's outs; each rule's params keys equal its stage's params; every stage has rules and its
    cmd targets a file some rule writes."""
    problems = []
    stages = dvc_doc["stages"]
    rules_of: dict[str, list] = {s: [] for s in stages}
    for r in rules:
        homes = set()
        for out in r["outputs"]:
            owner = [s for s, st in stages.items() for o in out_paths(st) if out == o or out.startswith(o.rstrip("/") + "/")]
            if len(owner) != 1:
                problems.append(f"rule {r['name']}: output {out} is in {len(owner)} DVC stages' outs")
            homes.update(owner)
        if len(homes) != 1:
            problems.append(f"rule {r['name']}: outputs span stages {sorted(homes)}")
            continue
        stage = homes.pop()
        rules_of[stage].append(r["name"])
        want = sorted(k.replace(".", "__") for k in stages[stage].get("params", []))
        if r["params"] != want:
            problems.append(f"rule {r['name']}: params {r['params']} but DVC stage {stage} lists {want}")
        if not r["has_code_param"]:
            problems.append(f"rule {r['name']}: no code-hash param (module edits would not rerun it)")
    for s, st in stages.items():
        if not rules_of[s]:
            problems.append(f"DVC stage {s}: no Snakemake rule writes into {out_paths(st)}")
        target = st["cmd"].split()[-1]
        if not any(target in r["outputs"] for r in rules):
            problems.append(f"DVC stage {s}: cmd target {target} is no rule's output")
    return problems


def test_no_drift_between_snakemake_and_dvc():
    rules = load_rules()
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert drift(rules, doc) == []


def test_drift_detects_planted_mismatch():
    rules = load_rules()
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    bad = copy.deepcopy(doc)
    bad["stages"]["sample"]["params"].remove("sampling")
    assert any("rule sample:" in p for p in drift(rules, bad))
    bad2 = copy.deepcopy(doc)
    bad2["stages"]["bench"]["outs"] = ["results/benchmark"]
    assert any("bench" in p for p in drift(rules, bad2))
    from librarm.phases import check_dvc_yaml

    tmp = REPO / "results" / ".drift-test-dvc.yaml"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text(yaml.safe_dump(bad))
    try:
        assert check_dvc_yaml(tmp)
    finally:
        tmp.unlink()


# ----------------------------------------------------------------------------- a real ci run
@pytest.fixture
def ci_copy(ci_run):
    """The session's one ci run (conftest.ci_run)."""
    return ci_run


# Keys a phase declares that its jobs never read in the ci run, each with the reason.
_DAG_SHAPE = "read by rules/common.smk to list the phase's jobs (adding one must rerun the stage)"
DECLARED_UNREAD = {
    "dpo": {"pairs.labelers": _DAG_SHAPE, "pairs.raw_labelers": _DAG_SHAPE, "pairs.gold_curve": _DAG_SHAPE,
            # the policy folder is the `init` input when the pipeline makes it (ci); a hub or path
            # policy is found through its models entry (pairs.policy is read: the policy's engine)
            "models": "read only for a starting policy the pipeline does not make"},
    # the base policy's folder is an input when the pipeline makes it (ci); a hub or path policy is
    # found through its models entry
    "evaluate_policy": {"models": "read only for a base policy the pipeline does not make"},
    "report": {"dpo.seeds": _DAG_SHAPE,
               "compare.pairs": "read only by the seeds stage (report.replicates: the seeds preset), off in ci"},
}
# Keys whose values never change an output (MLflow settings): jobs read them, no stage declares them.
NOT_RESULTS = ("tracking",)


def _reads_by_phase(root: Path) -> dict[str, set[str]]:
    from librarm.phases import STEP_PHASE

    out: dict[str, set[str]] = {}
    for f in sorted((root / "reads").glob("*.json")):
        step = f.stem.rsplit("-", 1)[0]
        out.setdefault(STEP_PHASE[step], set()).update(json.loads(f.read_text()))
    return out


@pytest.mark.slow
def test_declared_reads(ci_copy):
    """What each phase's jobs read (recorded through the config view) is declared in the phase
    registry, so DVC reruns the stage when it changes; and every declared key is read, or listed
    above with the reason ci does not read it."""
    from librarm.phases import PHASES
    from librarm.run.reads import covered

    reads = _reads_by_phase(ci_copy)
    undeclared = {p: sorted(k for k in keys if not covered(k, PHASES[p].params + NOT_RESULTS)) for p, keys in reads.items()}
    assert {p: v for p, v in undeclared.items() if v} == {}
    unread = {p: sorted(d for d in PHASES[p].params
                        if not any(covered(k, [d]) or covered(d, [k]) for k in reads.get(p, ()))
                        and d not in DECLARED_UNREAD.get(p, {}))
              for p in reads}
    assert {p: v for p, v in unread.items() if v} == {}
    # and the allowlist stays true: a key listed as unread that the ci run does read is a stale entry
    stale = {p: sorted(d for d in keys if any(covered(k, [d]) or covered(d, [k]) for k in reads.get(p, ())))
             for p, keys in DECLARED_UNREAD.items()}
    assert {p: v for p, v in stale.items() if v} == {}


def rules_unused() -> dict[str, tuple[str, set[str]]]:
    """Each rule's step and the params keys its UNUSED(...) leaves out of its params, read from
    rules/*.smk: rule name -> (step, keys)."""
    import ast
    import re

    out = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        blocks = re.split(r"^\s*rule (\w+):", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            step = re.search(r'stage\("([\w-]+)"', body)
            keys = set()
            for m in re.finditer(r"UNUSED\(([^)]*)\)", body):
                keys |= set(ast.literal_eval(f"({m.group(1)},)"))
            if step and keys:
                out[name] = (step.group(1), keys)
    return out


@pytest.mark.slow
def test_the_keys_a_rule_leaves_out_are_not_read_by_its_jobs(ci_copy):
    """A rule's UNUSED(...) keys are left out of its params (editing them does not rerun its jobs):
    so its jobs must not read them. Checked against what the ci run's jobs read, step by step."""
    from librarm.run.reads import covered

    read: dict[str, set[str]] = {}
    for f in sorted((ci_copy / "reads").glob("*.json")):
        read.setdefault(f.stem.rsplit("-", 1)[0], set()).update(json.loads(f.read_text()))
    unused = rules_unused()
    assert len(unused) >= 10, unused                       # the parser finds the rules that use UNUSED
    wrong = {rule: sorted(k for k in read.get(step, ()) if covered(k, sorted(keys)))
             for rule, (step, keys) in unused.items()}
    assert {r: v for r, v in wrong.items() if v} == {}
    ran = {rule for rule, (step, _keys) in unused.items() if step in read}
    assert len(ran) >= 0.8 * len(unused), sorted(set(unused) - ran)     # most of them ran in ci


@pytest.mark.slow
def test_ci_run_outputs(ci_copy):
    r = ci_copy / "results"
    bench = read_jsonl(r / "bench" / "libra_bench.jsonl").records
    assert bench and set(bench[0]) == {"index", "question", "response", "label", "model", "reference", "subset",
                                       "response_with_cot"}
    m = json.loads((r / "eval" / "base" / "metrics.json").read_text())
    for key in ("libra_score", "subset_accuracy", "macro_f1", "confusion", "ci95", "generator_accuracy",
                "unparsed_rate", "n_items", "n_problems"):
        assert key in m
    assert json.loads((r / "verify" / "stats.json").read_text())["reasons"]
    assert (r / "eval" / "table.md").read_text().startswith("| judge |")
    params = yaml.safe_load((ci_copy / "params.yaml").read_text())
    for policy in ["none"] + params["pairs"]["labelers"]:
        d = json.loads((r / "downstream" / policy / "metrics.json").read_text())
        assert set(params["evaluate_policy"]["subsets"]) <= set(d["avg_at_k"]) and "all" in d["ci95"]
        # a labeler without pairs (a near-constant judge) is allowed, but must be flagged short
        assert (d["pairs"] == 0 and d["label_accuracy"] is None) if policy == "none" else (d["pairs"] > 0 or d["short"])
    stats = json.loads((r / "pairs" / "stats.json").read_text())
    budget = params["pairs"]["budget"]
    for name, st in stats["labelers"].items():
        assert st["pairs_trained"] == min(budget, st["pairs_raw"]) and st["short"] == (st["pairs_raw"] < budget)
    steps = {k: v["steps"] for k, v in json.loads((r / "dpo" / "stats.json").read_text()).items()
             if not k.startswith("raw/") and v["pairs"]}
    assert len(set(steps.values())) == 1, steps        # every budget and curve run: the same optimizer steps
    from librarm.stages.report import check_report

    assert check_report(r / "report", root=ci_copy) == []
    assert (r / "report" / "summary.md").read_text().startswith("# Libra run report")
    # the pipeline's judges as a leaderboard, one row per judge on the bench
    board = (r / "report" / "leaderboard" / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 1 + len(params["evaluate"]["judges"]) and (r / "report" / "leaderboard" / "leaderboard.html").exists()


@pytest.mark.slow
def test_bench_byte_identical_on_rerun(ci_copy):
    before = (ci_copy / "results/bench/libra_bench.jsonl").read_bytes()
    run("snakemake --cores 2 --forcerun bench --until bench", ci_copy)
    assert (ci_copy / "results/bench/libra_bench.jsonl").read_bytes() == before


@pytest.mark.slow
def test_snakemake_and_dvc_agree(ci_copy):
    first = json.loads((ci_copy.parent / FIRST_DVC_REPRO).read_text())      # conftest.ci_run ran it
    assert not first["changed"], f"dvc repro after snakemake changed outputs: {first['changed']}"
    assert "nothing to be done" in first["output"].lower(), first["output"][-3000:]
    assert dry_run_jobs(ci_copy) == {}, "snakemake wants to rerun after dvc repro"
    status = run("dvc status", ci_copy).stdout
    assert "up to date" in status.lower(), status
    metrics = run("dvc metrics show", ci_copy).stdout
    # one file, the report's headline, with few enough columns to read in a terminal
    rows = [line.split() for line in metrics.splitlines() if line.strip()]
    assert [r[0] for r in rows[1:]] == ["results/report/metrics.json"], metrics
    assert 5 <= len(rows[0]) - 1 <= 40, rows[0]
    assert {"libra.base", "gain.gold", "bench_items", "pair_budget"} <= set(rows[0]), rows[0]
    run("dvc plots show -o dvc_plots_out", ci_copy)
    html = (ci_copy / "dvc_plots_out" / "index.html").read_text()
    for curve in ("sft_loss", "grpo_reward", "dpo_loss"):
        assert f"curves_{curve}_" in html, curve
    shutil.rmtree(ci_copy / "dvc_plots_out")


@pytest.mark.slow
def test_a_pulled_clone_is_current_after_one_command_and_edits_rerun_exact_sets(ci_copy, tmp_path):
    """The team round trip: `dvc push` to a remote, a fresh clone, `dvc pull`. The pulled files have
    checkout-time mtimes and no Snakemake records, so `snakemake -n` wants to rerun; `librarm
    after-pull` (the README's one command) fixes that only when `dvc status` is clean: with a param
    edited first it refuses and marks nothing current. Afterwards a param edit reruns exactly its
    dependents, as in the run that made the results."""
    assert (ci_copy / "dvc.lock").exists()                   # written by conftest.ci_run's dvc repro
    remote = tmp_path / "remote"
    run(f"dvc remote add -d -f team {remote} && dvc push -q", ci_copy)
    run("git add -A && git -c user.email=t@t -c user.name=t commit -qm lock --allow-empty", ci_copy)
    clone = tmp_path / "team" / "repo"
    clone.parent.mkdir()
    os.symlink(REPO.parent / "shared", clone.parent / "shared")
    run(f"git clone -q {ci_copy} {clone}", tmp_path)
    env = {**ENV, "PYTHONPATH": str(clone / "workflow")}
    run("dvc pull -q", clone, env=env)
    assert "up to date" in run("dvc status", clone, env=env).stdout.lower()
    assert outputs_digest(clone) == outputs_digest(ci_copy)
    stale_before = dry_run_jobs(clone)
    assert stale_before, "a pulled clone was expected to look out of date to Snakemake (new mtimes)"
    original = (clone / "params.yaml").read_text()
    _edit_param(clone, "dpo.beta", 0.2)
    refused = run("librarm after-pull", clone, check=False, env=env)
    # dvc names the section the dpo stage declares (`dpo`), not the key inside it
    assert refused.returncode == 1 and "dpo: changed deps (params.yaml: dpo modified)" in refused.stderr, \
        refused.stderr
    assert dry_run_jobs(clone).items() >= stale_before.items(), "a refused after-pull must mark nothing current"
    (clone / "params.yaml").write_text(original)
    run("librarm after-pull", clone, env=env)
    assert dry_run_jobs(clone) == {}
    assert "up to date" in run("dvc status", clone, env=env).stdout.lower()
    _edit_param(clone, "dpo.beta", 0.2)
    assert set(dry_run_jobs(clone)) - {"all"} == AFTER_DPO
    assert _dvc_rerun_set(clone) == {"dpo", "evaluate_policy", "report"}
    (clone / "params.yaml").write_text(original)
    assert dry_run_jobs(clone) == {}


def _edit_param(root: Path, dotted: str, value):
    params = yaml.safe_load((root / "params.yaml").read_text())
    cur = params
    keys = dotted.split(".")
    for k in keys[:-1]:
        cur = cur[k]
    cur[keys[-1]] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _dvc_rerun_set(root: Path) -> set[str]:
    """Stages `dvc repro` would run: those `dvc status` reports changed (params, code), plus every
    stage downstream of them through dvc.yaml's data deps (`repro --dry` does not propagate)."""
    status = run("dvc status --json", root).stdout
    print(f"dvc status --json in {root}: {status}")      # shown when the test fails
    changed = set(json.loads(status or "{}"))
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    grew = True
    while grew:
        grew = False
        for name, st in stages.items():
            if name in changed:
                continue
            ups = {u for u in changed for o in out_paths(stages[u]) if o in st.get("deps", [])}
            if ups:
                changed.add(name)
                grew = True
    return changed


TRAIN_SIDE = {"judge_data", "rs", "train_judge", "train_stats"}
SAMPLE_SIDE = {"sample", "sample_stats", "verify", "verify_stats", "bench", "evaluate", "eval_summary"} | TRAIN_SIDE
AFTER_DPO = {"dpo", "dpo_stats", "policy_eval", "policy_metrics", "downstream_summary", "report"}
AFTER_LABELS = {"pairs_label", "pairs_build"} | AFTER_DPO
DOWNSTREAM = {"pairs_split", "pairs_sample", "pairs_verify"} | AFTER_LABELS


@pytest.mark.slow
@pytest.mark.parametrize("dotted,value,snake_rules,dvc_stages", [
    # the policy samples with the sampling params too (not the pool split)
    ("sampling.max_new_tokens", 79, SAMPLE_SIDE | DOWNSTREAM - {"pairs_split"},
     {"sample", "verify", "bench", "judge_data", "rs", "train", "evaluate", "pairs", "dpo", "evaluate_policy", "report"}),
    # the judging params feed the teacher's rejection sampling, training (validation curves, GRPO
    # prompts), evaluation and the judges' labels of the policy's responses, not the bench
    ("judge.max_new_tokens", 159, {"rs", "train_judge", "train_stats", "evaluate", "eval_summary"} | AFTER_LABELS,
     {"rs", "train", "evaluate", "pairs", "dpo", "evaluate_policy", "report"}),
    # a DPO parameter reruns exactly the DPO policies, their evaluation and the report
    ("dpo.beta", 0.2, AFTER_DPO, {"dpo", "evaluate_policy", "report"}),
])
def test_param_edit_reruns_exact_set(ci_copy, dotted, value, snake_rules, dvc_stages):
    original = (ci_copy / "params.yaml").read_text()
    try:
        _edit_param(ci_copy, dotted, value)
        jobs = dry_run_jobs(ci_copy)
        assert set(jobs) - {"all"} == snake_rules
        assert not {"problems", "bootstrap_tiny", "bootstrap_stats"} & set(jobs)
        assert _dvc_rerun_set(ci_copy) == dvc_stages
    finally:
        (ci_copy / "params.yaml").write_text(original)
    assert dry_run_jobs(ci_copy) == {}


@pytest.mark.slow
def test_unrelated_edit_reruns_nothing(ci_copy):
    """Negative twin: a value no stage reads changes nothing."""
    original = (ci_copy / "params.yaml").read_text()
    try:
        _edit_param(ci_copy, "tracking.experiment", "other")
        assert dry_run_jobs(ci_copy) == {}
    finally:
        (ci_copy / "params.yaml").write_text(original)


@pytest.mark.slow
def test_module_edit_reruns_users_and_downstream(ci_copy):
    mod = ci_copy / "workflow/librarm/stages/bench.py"
    original = mod.read_text()
    try:
        mod.write_text(original + "\n# edited\n")
        jobs = dry_run_jobs(ci_copy)
        # stages/bench.py (the assembly) is used by bench and by judge_data (same assembly), and so by
        # the judges' training and DPO; evaluate and the labels rerun because their inputs do. The
        # pool's split, sampling and verification do not use it (the bench reader is in judging/)
        assert set(jobs) - {"all"} == {"bench", "evaluate", "eval_summary"} | TRAIN_SIDE | AFTER_LABELS
        assert _dvc_rerun_set(ci_copy) == {"bench", "judge_data", "rs", "train", "evaluate", "pairs", "dpo",
                                           "evaluate_policy", "report"}
    finally:
        mod.write_text(original)


@pytest.mark.slow
@pytest.mark.parametrize("module, old, new, dvc_too", [
    # cli.py is a table of steps, in no phase's code
    ("cli.py", None, None, True),
    # params validation runs when the DAG is built, in no job: a new message reruns nothing
    ("run/config.py", "is not a key of 'models'", "names no entry of 'models'", True),
    # the ci params use no http backend: Snakemake's code hashes leave it out (DVC's static deps
    # list every backend for the phases that sample or judge)
    ("engines/http.py", "required for backend 'http'", "needs a URL for backend 'http'", False),
])
def test_editing_code_no_job_runs_reruns_nothing(ci_copy, module, old, new, dvc_too):
    """The other way round: editing the CLI, a config-validation message or an unused backend
    reruns no Snakemake job (and, but for the backend, no DVC stage)."""
    mod = ci_copy / "workflow/librarm" / module
    original = mod.read_text()
    try:
        assert old is None or old in original
        mod.write_text(original.replace(old, new) if old else original + "\n# edited\n")
        assert dry_run_jobs(ci_copy) == {}
        if dvc_too:
            assert _dvc_rerun_set(ci_copy) == set()
    finally:
        mod.write_text(original)


@pytest.mark.slow
@needs_shared_data()
def test_smoke_real_preset_bench_and_base_judge(tmp_path_factory):
    """Real MATH-500 L5 / AIME items, SmolLM2-135M-Instruct converted from its GGUF file, the
    pseudo-generators; the bench is non-empty and the base judge is scored. The preset's training
    jobs (SmolLM2 SFT and GRPO on CPU, about 20 minutes) are left to `make smoke-real`: this test
    targets the base judge's metrics, which no training job feeds."""
    require_smollm2()
    root = tmp_path_factory.mktemp("smoke") / "repo"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(*COPY_IGNORE, ".git", "tiny_models"))
    os.symlink(REPO.parent / "shared", root.parent / "shared")
    env = {**ENV, "PYTHONPATH": str(root / "workflow")}
    # the target goes first: --configfile takes every word after it. The SmolLM2 sample and the
    # base judge's evaluation run alone at the end of this cut (the critical path): two threads each
    # The preset at its smallest (a second configfile, merged over it; a list replaces the preset's):
    # 2 problems per real eval set, 1 bench item per label and subset (the base judge reads real
    # problems and solutions of up to 768 tokens: 1.8 s an item here), and no stress set (its
    # templates are the same on any question: the ci run's tests cover them; `make smoke-real` runs
    # it on these questions). The same path through every real-data stage as the preset's sizes.
    preset = yaml.safe_load((root / "workflow/presets/smoke-real.yaml").read_text())
    sets = [dict(s, limit=2) if s["role"] == "eval" else s for s in preset["problems"]["sets"]]
    (root / "smaller.yaml").write_text(yaml.safe_dump(
        {"problems": {"sets": sets}, "sampling": {"n": 1}, "bench": {"balance": {"per_label": 1}}, "stress": None}))
    run("snakemake results/eval/base/metrics.json --cores 2 --set-threads evaluate=2 sample=2 "
        "--configfile workflow/presets/smoke-real.yaml smaller.yaml", root, env=env, timeout=1200)
    r = root / "results"
    assert (r / "bootstrap" / "models" / "smollm2" / "config.json").exists()
    bench = read_jsonl(r / "bench" / "libra_bench.jsonl").records
    assert bench and {b["label"] for b in bench} == {0, 1}
    assert {b["subset"] for b in bench} == {"math500_l5", "aime24", "aime25"}
    # the eval subsets' verify files (verify/stats.json also needs the judge pool, not built here);
    # math-verify mis-grades a few real answers both ways (see tests/fixtures/answer_forms.jsonl)
    accuracy = {g: [rec["label"] for f in sorted((r / "verify" / g).glob("*.jsonl")) for rec in read_jsonl(f).records]
                for g in ("reference", "reference_wrong")}
    assert all(accuracy.values())
    assert sum(accuracy["reference"]) / len(accuracy["reference"]) >= 0.8
    assert sum(accuracy["reference_wrong"]) / len(accuracy["reference_wrong"]) <= 0.2
    m = json.loads((r / "eval" / "base" / "metrics.json").read_text())
    assert m["n_items"] == len(bench) and "libra_score" in m


@pytest.mark.slow
def test_a_failing_job_shows_its_one_line_error_in_snakemakes_output(tmp_path):
    """A bad problem file: the job's error (file:line: field) is at the end of its log, and
    Snakemake's own output shows it (not only "check log file(s)")."""
    root = tmp_path / "repo"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(*COPY_IGNORE, ".git"))
    src = tmp_path / "mine.jsonl"
    src.write_text('{"id": "1", "problem": "What is 1+1?", "answer": "2"}\n{"id": "2", "problem": 3, "answer": "1"}\n')
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["problems"]["sets"][0] = {"name": "tiny_l5", "role": "eval", "source": "jsonl", "path": str(src)}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**ENV, "PYTHONPATH": str(root / "workflow")}
    res = run("snakemake --cores 1 results/problems/stats.json", root, check=False, env=env, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"{src}:2: field 'problem'" in out, out[-3000:]
    assert "Traceback" not in out
