#!/usr/bin/env bash
# Stop the daemons that tests/cluster/slurm_up.sh started (by the PIDs it
# recorded in /run/librarm-slurm/started), then remove that state file.
# Daemons slurm_up did not start are left alone.  Harmless if nothing is up.
set -euo pipefail

STATE_DIR=/run/librarm-slurm
STATE="$STATE_DIR/started"

say() { echo "slurm_down: $*" >&2; }

if [ ! -f "$STATE" ]; then
    echo "slurm down: nothing to stop (no $STATE)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm_down: needs root (stops the root-owned daemons slurm_up started)" >&2
    exit 2
fi

# pid_is NAME PID: PID is alive (not a zombie) and its command name is NAME
pid_is() {
    local name=$1 pid=$2 st
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

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
echo "slurm down: stopped ${stopped[*]:-nothing}"
