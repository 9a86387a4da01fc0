"""Mean ± sd over training seeds run as DVC experiments (`dvc exp run -S sft.seed=...`): reads
`dvc exp show --json`, groups experiments whose params differ only in seed keys, and tabulates
each judge's Libra score and each policy's downstream gain."""
from __future__ import annotations

import json
import subprocess
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from librarm.run.paths import REPORT_METRICS

SEED_KEYS = ("seed", "sft.seed", "rl.seed", "scalar_rm.seed", "dpo.seeds")
HEADLINE = REPORT_METRICS   # the one DVC metrics file (phases.render_dvc_yaml)


def experiment_records(exp_show: Any) -> Iterator[dict]:
    """Every revision in `dvc exp show --json` output that has params: {name, params, metrics}."""
    if isinstance(exp_show, list):
        for x in exp_show:
            yield from experiment_records(x)
        return
    if not isinstance(exp_show, Mapping):
        return
    data = exp_show.get("data")
    if isinstance(data, Mapping) and "params" in data:
        params = (data.get("params") or {}).get("params.yaml", {}).get("data")
        metrics = {f: (m or {}).get("data") for f, m in (data.get("metrics") or {}).items()}
        if params:
            yield {"name": exp_show.get("name") or exp_show.get("rev"), "params": params,
                   "metrics": {f: m for f, m in metrics.items() if m}}
    for key in ("experiments", "revs"):
        for x in exp_show.get(key) or []:
            yield from experiment_records(x)


def _without_seeds(params: Mapping[str, Any], keys: Sequence[str]) -> str:
    p = json.loads(json.dumps(params))
    for dotted in keys:
        cur = p
        parts = dotted.split(".")
        for k in parts[:-1]:
            cur = cur.get(k, {}) if isinstance(cur, dict) else {}
        if isinstance(cur, dict):
            cur.pop(parts[-1], None)
    return json.dumps(p, sort_keys=True)


def seed_groups(records: Sequence[Mapping[str, Any]], seed_keys: Sequence[str] = SEED_KEYS) -> list[list[dict]]:
    """Records whose params are equal once the seed keys are removed (same experiment, other seeds);
    a revision listed twice (workspace and its commit) counts once."""
    groups: dict[str, dict[str, dict]] = {}
    for r in records:
        if HEADLINE not in r["metrics"]:
            continue
        key = _without_seeds(r["params"], seed_keys)
        ident = json.dumps(r["params"], sort_keys=True)
        groups.setdefault(key, {}).setdefault(ident, dict(r))
    return [list(g.values()) for g in groups.values()]


def seed_table(group: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{row: {mean, sd, n, values}} for judge Libra scores and downstream gains (avg@k, all)."""
    values: dict[str, list[float]] = {}
    rows = {"libra.": "libra_score ", "gain.": "downstream gain "}
    for r in group:
        for key, value in (r["metrics"].get(HEADLINE) or {}).items():
            for prefix, row in rows.items():
                if key.startswith(prefix) and value is not None:
                    values.setdefault(row + key[len(prefix):], []).append(value)
    return {k: {"mean": round(float(np.mean(v)), 4), "sd": round(float(np.std(v, ddof=1)), 4) if len(v) > 1 else None,
                "n": len(v), "values": v} for k, v in values.items()}


def markdown(table: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str:
    lines = [f"Experiments: {', '.join(str(n) for n in names)}", "",
             "| metric | mean | sd | seeds |", "|---|---:|---:|---:|"]
    for k, v in table.items():
        sd = f"{100 * v['sd']:.1f}" if v["sd"] is not None else "n/a"
        lines.append(f"| {k} | {100 * v['mean']:.1f} | {sd} | {v['n']} |")
    return "\n".join(lines) + "\n"


def run_seed_summary(exp_show_json: str | None = None) -> str:
    """Markdown for every group of experiments that differ only in seeds (largest group first)."""
    if exp_show_json:
        with open(exp_show_json) as fh:
            data = json.load(fh)
    else:
        out = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True).stdout
        data = json.loads(out)
    groups = sorted(seed_groups(list(experiment_records(data))), key=len, reverse=True)
    if not groups:
        return f"No experiment with {HEADLINE} metrics (it is written by the report stage).\n"
    return "\n".join(markdown(seed_table(g), [r["name"] for r in g]) for g in groups)
