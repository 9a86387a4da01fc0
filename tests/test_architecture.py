"""The package's shape: subpackages by layer (run < engines, judging, stats < stages < the commands),
no import cycle and no import upward (imports inside functions count), the tiny world reached only
by the bootstrap phase, and each phase's code dependencies computed as its import closure (plus the
backends its params use), so editing a module reruns exactly the phases that import it."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from librarm.phases import (
    COMMON_CODE,
    PHASES,
    PKG,
    REPO_ROOT,
    code_hash,
    import_closure,
    module_file,
    module_imports,
    package_modules,
    phase_backends,
)
from librarm.run.settings import BenchSettings, Judges, PairsSettings, Params, RsSettings, Seed, SettingsError, call

MODULES = sorted(package_modules())
# Layers, lowest first: a module imports only modules of its own layer or below.
TOOLS = {"cli", "params_doc", "phases", "profile", "results_doc", "scoring", "seeds"}


def layer(module: str) -> int:
    top = module.split(".")[0]
    if module in TOOLS:
        return 3
    if module in ("engines", "engines.base"):   # the backend registry and the Sampler protocol's types
        return 0
    return {"run": 0, "engines": 1, "judging": 1, "stats": 1, "stages": 2}[top]


def test_every_module_has_a_layer_and_none_imports_upward():
    upward = [f"{m} -> {i}" for m in MODULES for i in module_imports(m) if layer(i) > layer(m)]
    assert upward == []
    # the check sees a planted upward import
    assert layer("stages.report") > layer("run.io")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_counting_imports_inside_functions():
    graph = {m: module_imports(m) for m in MODULES}
    assert _cycles(graph) == []
    # the detector itself finds a planted cycle
    assert _cycles({**graph, "run.labelers": graph["run.labelers"] | {"run.config"}}) == [["run.config", "run.labelers"]]


def test_only_the_bootstrap_phase_reaches_the_tiny_world():
    importers = {m for m in MODULES if "stages.bootstrap_tiny" in module_imports(m)}
    assert importers <= {"cli"}, f"only the CLI's bootstrap steps may import the tiny world, not {importers - {'cli'}}"
    reached = [p.name for p in PHASES.values() if "stages/bootstrap_tiny.py" in p.code]
    assert reached == ["bootstrap"]


def _repo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / PKG, root / PKG)
    return root


@pytest.mark.parametrize("module, phases", [
    ("stages.bootstrap_tiny", {"bootstrap"}),
    ("stages.report", {"report"}),
    ("stages.dpo", {"dpo"}),
    ("judging.metrics", {"evaluate", "pairs", "dpo", "evaluate_policy", "report"}),
    ("cli", set()),            # the dispatcher: a table of step -> function, no stage logic
    ("run.config", set()),     # params validation: run before the DAG is built, by no job
])
def test_editing_a_module_changes_exactly_the_phases_that_import_it(tmp_path, module, phases):
    root = _repo_copy(tmp_path)
    before = {p: code_hash(p, root) for p in PHASES}
    f = root / PKG / module_file(module)
    f.write_text(f.read_text() + "\n# an edit\n")
    import_closure.cache_clear()
    after = {p: code_hash(p, root) for p in PHASES}
    import_closure.cache_clear()
    assert {p for p in PHASES if before[p] != after[p]} == phases
    assert all(module_file(module) in PHASES[p].code for p in phases)


def test_a_backend_counts_only_in_the_phases_whose_params_use_it(tmp_path):
    """The default params use hf and pseudo: editing the http or vllm backend changes no phase's
    Snakemake code hash; editing hf changes those that sample or judge with it. DVC's static deps
    list every backend for the phases that sample or judge."""
    from librarm.run.config import load_params

    params = load_params(REPO_ROOT / "params.yaml")
    root = _repo_copy(tmp_path)
    before = {p: code_hash(p, root, phase_backends(params, p)) for p in PHASES}
    for backend, changed in (("http", set()), ("vllm", set()), ("hf", {"sample", "evaluate", "pairs", "evaluate_policy"})):
        f = root / PKG / "engines" / f"{backend}.py"
        f.write_text(f.read_text() + "\n# an edit\n")
        after = {p: code_hash(p, root, phase_backends(params, p)) for p in PHASES}
        f.write_text(f.read_text().removesuffix("\n# an edit\n"))
        moved = {p for p in PHASES if before[p] != after[p]}
        assert changed <= moved and (not changed or moved <= changed | {"bootstrap", "judge_data", "rs", "train", "dpo", "report"}), (backend, moved)
        if not changed:
            assert moved == set(), (backend, moved)


def test_common_code_is_the_registry_only():
    # the phase registry holds every rule's params and code hashes; the CLI is no phase's code
    assert COMMON_CODE == ("phases.py",)
    assert not any("cli.py" in p.code_files for p in PHASES.values())


def test_every_step_is_in_the_cli_table_and_the_registry():
    from librarm.cli import STEPS
    from librarm.phases import STEP_PHASE

    assert set(STEPS) == set(STEP_PHASE)
    for step, (module, function) in STEPS.items():
        phase = PHASES[STEP_PHASE[step]]
        assert module_file(module) in phase.code, f"{step}: {module} is not in the code of phase {phase.name}"
        assert callable(getattr(importlib.import_module(f"librarm.{module}"), function))


def test_editing_a_steps_entry_function_reruns_its_phase(tmp_path):
    root = _repo_copy(tmp_path)
    before = {p: code_hash(p, root) for p in PHASES}
    f = root / PKG / "stages" / "report.py"
    f.write_text(f.read_text().replace("def step_report(", "def step_report(  ", 1))
    import_closure.cache_clear()
    after = {p: code_hash(p, root) for p in PHASES}
    import_closure.cache_clear()
    assert {p for p in PHASES if before[p] != after[p]} == {"report"}


def test_results_paths_are_built_in_one_module():
    offenders = [f"{m}:{i}" for m, p in package_modules().items() if m != "run.paths"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if "results/" in line]
    assert offenders == []


def test_no_module_imports_another_modules_private_names():
    import ast

    offenders = []
    for m in MODULES:
        tree = ast.parse(package_modules()[m].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("librarm")):
                offenders += [f"{m}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_recording_view_notes_leaf_reads_and_defaults(monkeypatch):
    import copy

    from librarm.run import reads

    monkeypatch.setenv(reads.ENV, "/nonexistent")
    view, log = reads.recording({"seed": 1, "pairs": {"budget": 4, "labelers": ["a"]}, "judges": {"x": {"kind": "g"}}})
    assert view["pairs"]["budget"] == 4 and view["pairs"].get("gold_curve", []) == []
    assert view["judges"]["x"]["kind"] == "g"
    merged = {**view, "sampling": {}}                    # a stage's stand-in dict keeps recording below the top
    assert merged["pairs"]["labelers"] == ["a"]
    assert copy.deepcopy(view) == {"seed": 1, "pairs": {"budget": 4, "labelers": ["a"]}, "judges": {"x": {"kind": "g"}}}
    assert log == {"pairs.budget", "pairs.gold_curve", "judges.x.kind", "pairs.labelers"}
    assert reads.covered("pairs.budget", ["pairs"]) and reads.covered("judges.x.kind", ["judges"])
    assert not reads.covered("pairs.budget", ["pairs.labelers", "pair"])


# The functions that receive the whole params tree (the params mapping, a view of it, or the
# Params built from it): config code and the one dispatcher, settings.call. Every other function
# names the sections it reads as typed parameters, and steps receive them from `call`.
PARAMS_TREE_FUNCTIONS = {
    "run.config": {"validate_params", "prune_removed"},        # the schema and the cross-checks
    "run.settings": {"from_params", "from_dict", "call"},      # sections, all sections, the dispatcher
    "run.reads": {"recording"},                                # the recording view of a job's params
    "run.tracking": {"pipeline_context", "preset_of"},         # the pipeline's identity and shown params
    "phases": {"active_phases", "declared_params", "rule_params", "phase_backends"},  # rules' params
    "seeds": {"_without_seeds"},                               # a DVC experiment's params, seeds removed
}
# A parameter holds the tree when it is named so (`params`, `config`, `tree`) or typed Params, or when
# it is a `cfg` or `p` of a function (not a one-line lambda's row) that does not type it as
# something else: such a parameter has to say what it is.
TREE_NAMES = {"params", "config", "tree"}
SHORT_NAMES = {"cfg", "p"}
UNTYPED = {"", "Any", "dict", "dict[str, Any]", "Mapping[str, Any]"}


def _params_tree_functions() -> dict[str, set[str]]:
    import ast
    import re

    found: dict[str, set[str]] = {}
    for m, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            args = node.args
            for a in args.posonlyargs + args.args + args.kwonlyargs + [x for x in (args.vararg, args.kwarg) if x]:
                annotation = ast.unparse(a.annotation) if a.annotation is not None else ""
                if a.arg in TREE_NAMES or re.search(r"(?<![A-Za-z_])Params\b", annotation) or (
                        a.arg in SHORT_NAMES and annotation in UNTYPED and not isinstance(node, ast.Lambda)):
                    found.setdefault(m, set()).add(getattr(node, "name", f"<lambda line {node.lineno}>"))
    return found


def test_at_most_15_functions_take_the_whole_params_tree():
    found = _params_tree_functions()
    assert found == PARAMS_TREE_FUNCTIONS
    assert sum(map(len, found.values())) <= 15


def _stage_of_sections(a, b=2, *, seed: Seed, bench: BenchSettings, judges: Judges, rs: RsSettings | None,
                       pairs: PairsSettings | None, plain: int = 5):
    # what a stage function looks like to the dispatcher (its annotations resolve in this module)
    return a, b, seed, bench, judges, rs, pairs, plain


def test_the_dispatcher_gives_a_function_the_sections_it_names():
    from librarm.run.config import load_params

    params = load_params(REPO_ROOT / "params.yaml")
    a, b, seed, bench, judges, rs, pairs, plain = call(_stage_of_sections, params, 1, plain=6)
    assert (a, b, plain, seed) == (1, 2, 6, params["seed"])
    assert bench == BenchSettings.from_params(params) and set(judges) == set(params["judges"])
    assert rs is not None and pairs is not None
    # an optional section params leave out is None; a given argument is not rebuilt
    without = {k: v for k, v in params.items() if k != "rs"}
    assert call(_stage_of_sections, without, 1, pairs=None)[5:7] == (None, None)
    # the Params built from the tree serve as well (the config checks)
    assert call(_stage_of_sections, Params.from_dict(params), 1)[3] == bench
    with pytest.raises(SettingsError, match=r"judges\.nope: not defined \(defined: "):
        judges["nope"]
