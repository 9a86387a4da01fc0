#!/usr/bin/env bash
# Same params, same bytes whatever the core count and whether jobs fork from the warm job server:
# one preset (default: ci) run once per variant, each in its own copy of this checkout (tracked and
# untracked files, no results), and every variant compared with the first by scripts/repro_check.sh.
# .ci/run runs it after `make run`.
#   scripts/repro_ci.sh [--preset NAME] [--variants "CORES:WARM ..."] [--rev REV] [--json FILE] [--keep DIR]
# --rev REV copies that commit (git archive) instead of the working tree.
# A variant is CORES:WARM, e.g. 2:1 (--cores 2, warm job server on) or 1:0 (--cores 1, LIBRARM_WARM=0).
# Default variants: 2:1 (the reference) 2:0 1:1. Exit 1 when any variant differs.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
preset=ci
variants="2:1 2:0 1:1"
json=""
keep=""
rev=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --preset) preset="$2"; shift 2 ;;
        --variants) variants="$2"; shift 2 ;;
        --json) json="$(realpath -m "$2")"; shift 2 ;;
        --keep) keep="$(realpath -m "$2")"; shift 2 ;;
        --rev) rev="$(git -C "$here" rev-parse --verify "$2^{commit}")"; shift 2 ;;
        *) echo "usage: $0 [--preset NAME] [--variants \"CORES:WARM ...\"] [--rev REV] [--json FILE] [--keep DIR]" >&2; exit 2 ;;
    esac
done
bin="${LIBRARM_BIN:-$here/.venv/bin}"
[ -x "$bin/snakemake" ] || { echo "no snakemake in $bin (make setup)" >&2; exit 2; }
configfile=""
[ "$preset" = default ] || configfile="--configfile workflow/presets/$preset.yaml"
work="${keep:-$(mktemp -d /tmp/librarm-repro-XXXXXX)}"
mkdir -p "$work"
[ -n "$keep" ] || trap 'rm -rf "$work"' EXIT
# presets that read ../shared/data find it beside the copies too
[ -e "$here/../shared" ] && [ ! -e "$work/shared" ] && ln -s "$(realpath "$here/../shared")" "$work/shared"

describe() { local c="${1%%:*}" w="${1##*:}"; echo "--cores $c, warm job server $([ "$w" = 1 ] && echo on || echo off)"; }

first=""
status=0
for v in $variants; do
    cores="${v%%:*}"; warm="${v##*:}"
    dest="$work/run-c${cores}-w${warm}"
    rm -rf "$dest" && mkdir -p "$dest"
    if [ -n "$rev" ]; then
        git -C "$here" archive "$rev" | tar -xf - -C "$dest"
    else
        (cd "$here" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - 2>/dev/null) | tar -xf - -C "$dest"
    fi
    echo "== $preset preset: $(describe "$v") ($dest)"
    start=$(date +%s)
    if ! (cd "$dest" && env PATH="$bin:$PATH" PYTHONPATH="$dest/workflow" LIBRARM_TRACKING=0 LIBRARM_WARM="$warm" \
            "$bin/snakemake" --cores "$cores" $configfile > "$dest.log" 2>&1); then
        echo "the run failed; last lines of $dest.log:" >&2
        tail -20 "$dest.log" >&2
        exit 1
    fi
    echo "   done in $(( $(date +%s) - start )) s"
    if [ -z "$first" ]; then
        first="$v"
        continue
    fi
    label="$preset preset: $(describe "$v") vs $(describe "$first")"
    if ! PYTHON="$bin/python" "$here/scripts/repro_check.sh" "$work/run-c${first%%:*}-w${first##*:}" "$dest" \
            --label "$label" ${json:+--json "$json"} > "$dest.repro" 2>&1; then
        status=1
        echo "   DIFFERS: $label" >&2
        grep '^DIFF' "$dest.repro" | head -20 >&2
    else
        echo "   same bytes: $label ($(grep -o 'compared [0-9]* files' "$dest.repro"))"
    fi
done
exit "$status"
