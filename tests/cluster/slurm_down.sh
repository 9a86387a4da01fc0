#!/usr/bin/env bash
# Stop the daemons that tests/cluster/slurm_up.sh started (by the PIDs it
# recorded in /run/librarm-slurm/started), then remove that state file.
# Daemons slurm_up did not start are left alone.  Harmless if nothing is up.
#
# When no slurmctld/slurmd is left running, it also removes /etc/slurm/slurm.conf
# and gres.conf if slurm_up wrote them (marker line); slurm_up writes them again.
# Why: with a slurm.conf whose controller is down, `scontrol show config` waits
# ~9 s for it, and snakemake-executor-plugin-slurm runs that command when it is
# imported (its --help text), i.e. at the start of every snakemake command in a
# venv that has the plugin, local runs included. Without a slurm.conf scontrol
# fails at once.
set -euo pipefail

STATE_DIR=/run/librarm-slurm
STATE="$STATE_DIR/started"
CONF_DIR=/etc/slurm
MARKER="# written by librarm tests/cluster/slurm_up.sh"

say() { echo "slurm_down: $*" >&2; }

# pid_is NAME PID: PID is alive (not a zombie) and its command name is NAME
pid_is() {
    local name=$1 pid=$2 st
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
# any_running NAME: some live (non-zombie) process is called NAME
any_running() {
    local pid
    for pid in $(pgrep -x "$1" 2>/dev/null || true); do
        pid_is "$1" "$pid" && return 0
    done
    return 1
}
# drop_conf: remove the config files slurm_up wrote, unless a SLURM daemon still runs
drop_conf() {
    local f removed=()
    if any_running slurmctld || any_running slurmd; then
        return 0
    fi
    for f in "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf"; do
        if [ -f "$f" ] && grep -qxF "$MARKER" "$f"; then
            rm -f "$f"
            removed+=("$f")
        fi
    done
    [ "${#removed[@]}" -eq 0 ] || say "removed ${removed[*]} (slurm_up writes them again)"
}

if [ ! -f "$STATE" ]; then
    if [ "$(id -u)" -eq 0 ]; then drop_conf; fi
    echo "slurm down: nothing to stop (no $STATE)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm_down: needs root (stops the root-owned daemons slurm_up started)" >&2
    exit 2
fi

declare -A PID=()
while read -r name pid; do
    [ -n "${name:-}" ] || continue
    PID[$name]=$pid
done < "$STATE"

# The controller is ours: cancel its jobs first so no slurmstepd/job processes
# outlive slurmd.
if [ -n "${PID[slurmctld]:-}" ] && pid_is slurmctld "${PID[slurmctld]}"; then
    jobs=$(squeue -h -o '%i' 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        say "cancelling jobs: $(tr '\n' ' ' <<<"$jobs")"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 20); do
            [ -z "$(squeue -h -t R,CG -o '%i' 2>/dev/null || true)" ] && break
            sleep 0.5
        done
    fi
fi

stopped=()
for name in slurmd slurmctld munged; do      # reverse start order
    pid=${PID[$name]:-}
    [ -n "$pid" ] || continue
    if ! pid_is "$name" "$pid"; then
        say "$name (pid $pid) is no longer running"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do                 # up to 10 s
        pid_is "$name" "$pid" || break
        sleep 0.1
    done
    if pid_is "$name" "$pid"; then
        say "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    stopped+=("$name($pid)")
done

rm -f "$STATE"
rmdir "$STATE_DIR" 2>/dev/null || true
drop_conf
echo "slurm down: stopped ${stopped[*]:-nothing}"
