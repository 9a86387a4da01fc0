#!/usr/bin/env bash
# Bring up a one-node SLURM cluster (munged + slurmctld + slurmd on this host)
# for tests of Snakemake's SLURM executor.  Debian/Ubuntu only, needs root,
# no systemd needed: the daemons are started directly.
#
#   tests/cluster/slurm_up.sh      # idempotent: a second run starts nothing new
#   tests/cluster/slurm_down.sh    # stops only the daemons this script started
#
# Environment knobs:
#   SLURM_UP_TIMEOUT   seconds to wait for the node to become idle (default 60)
#   SLURM_UP_FORCE=1   replace an /etc/slurm/slurm.conf or gres.conf that slurm_up
#                      did not write (the old one is kept as <file>.orig-<epoch>)
#   SLURM_UP_FAKE_GPUS number of fake GPUs (GRES gpu) on the node (default 2, 0 = none).
#                      They are symlinks to /dev/null, so `sbatch --gpus=1` / `--gres=gpu:1`
#                      schedules and sets CUDA_VISIBLE_DEVICES, but there is no GPU.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm_up: needs root (installs packages, writes /etc/slurm, starts munged/slurmctld/slurmd)" >&2
    exit 2
fi

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
GRES_CONF="$CONF_DIR/gres.conf"
FAKE_GPUS="${SLURM_UP_FAKE_GPUS:-2}"
FAKE_GPU_DIR=/var/spool/slurmd/fake-gpus
MARKER="# written by librarm tests/cluster/slurm_up.sh"
STATE_DIR=/run/librarm-slurm
STATE="$STATE_DIR/started"
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PIDFILE=/run/slurmctld.pid
SLURMD_PIDFILE=/run/slurmd.pid
MUNGE_PIDFILE=/run/munge/munged.pid
TIMEOUT="${SLURM_UP_TIMEOUT:-60}"

say() { echo "slurm_up: $*" >&2; }
die() { say "$*"; exit 1; }

# ---------------------------------------------------------------- install
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
   || ! command -v munged >/dev/null 2>&1 || ! command -v sbatch >/dev/null 2>&1; then
    say "installing slurm-wlm and munge with apt-get"
    # Keep the packages' maintainer scripts from starting the daemons
    # (invoke-rc.d honours policy-rc.d); we start them ourselves below.
    tmp_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        tmp_policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$tmp_policy"
        chmod 0755 "$tmp_policy"
        trap '[ -n "$tmp_policy" ] && rm -f "$tmp_policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    if [ -n "$tmp_policy" ]; then rm -f "$tmp_policy"; tmp_policy=""; fi
fi
SLURMCTLD_BIN=$(command -v slurmctld)
SLURMD_BIN=$(command -v slurmd)
MUNGED_BIN=$(command -v munged)

# ---------------------------------------------------------------- helpers
# pid_is NAME PID: PID is alive (not a zombie) and its command name is NAME
pid_is() {
    local name=$1 pid=$2 st
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
# running_pid NAME PIDFILE: print the pid of a running NAME (pidfile first, then pgrep)
running_pid() {
    local name=$1 pidfile=$2 pid=""
    if [ -r "$pidfile" ]; then
        pid=$(tr -dc '0-9' < "$pidfile" || true)
        if pid_is "$name" "$pid"; then echo "$pid"; return 0; fi
    fi
    # (zombies left by the daemons' double fork are skipped: no reaping init here)
    for pid in $(pgrep -x "$name" 2>/dev/null || true); do
        if pid_is "$name" "$pid"; then echo "$pid"; return 0; fi
    done
    return 1
}
# wait_pidfile NAME PIDFILE: wait (<=15 s) for a daemon to write its pidfile, print pid
wait_pidfile() {
    local name=$1 pidfile=$2 pid i
    for i in $(seq 1 150); do
        if [ -r "$pidfile" ]; then
            pid=$(tr -dc '0-9' < "$pidfile" || true)
            if pid_is "$name" "$pid"; then echo "$pid"; return 0; fi
        fi
        sleep 0.1
    done
    return 1
}
record() { echo "$1 $2" >> "$STATE"; }

# Drop entries of the state file whose process is gone (e.g. after a crash).
mkdir -p "$STATE_DIR"
if [ -f "$STATE" ]; then
    tmp_state=$(mktemp "$STATE_DIR/started.XXXXXX")
    while read -r name pid; do
        [ -n "${name:-}" ] || continue
        if pid_is "$name" "$pid"; then echo "$name $pid" >> "$tmp_state"; fi
    done < "$STATE"
    mv "$tmp_state" "$STATE"
fi
touch "$STATE"

# ---------------------------------------------------------------- slurm.conf
NODE=$(hostname -s)
# `slurmd -C` prints e.g.
#   NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
hw=$("$SLURMD_BIN" -C 2>/dev/null | grep -m1 '^NodeName=' || true)
[ -n "$hw" ] || die "'slurmd -C' printed no NodeName line"
hw=${hw#NodeName=* }                      # keep CPUs=... RealMemory=...
case "$hw" in *CPUs=*RealMemory=*) ;; *) die "unexpected 'slurmd -C' output: $hw" ;; esac
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
# Default memory per allocated CPU when a job gives no --mem: an even share of
# the node, so that N one-CPU jobs without --mem can run side by side.
def_mem=$(( mem / cpus ))
gres_node=""; gres_types=""
case "$FAKE_GPUS" in ''|*[!0-9]*) die "SLURM_UP_FAKE_GPUS must be a number, not '$FAKE_GPUS'" ;; esac
if [ "$FAKE_GPUS" -gt 0 ]; then
    gres_node="Gres=gpu:$FAKE_GPUS "
    gres_types="GresTypes=gpu"
fi
# Address the node and controller by loopback, whatever the host name resolves to.
new_conf=$(cat <<CONF
$MARKER
# One node ($NODE), two partitions (cpu, gpu) on it; no accounting, no cgroups.
ClusterName=librarm-test
$gres_types
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=300
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$CTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 $gres_node$hw State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
CONF
)
# gres.conf: GPU GRES without a File= is dropped by slurmd ("Removing file-less
# GPU"), so each fake GPU is a symlink to /dev/null named fake-gpuN.
new_gres="$MARKER"
if [ "$FAKE_GPUS" -gt 0 ]; then
    new_gres+=$'\n'"AutoDetect=off"
    for i in $(seq 0 $(( FAKE_GPUS - 1 ))); do
        new_gres+=$'\n'"NodeName=$NODE Name=gpu File=$FAKE_GPU_DIR/fake-gpu$i"
    done
fi

mkdir -p "$CONF_DIR"
conf_changed=0
# write_conf FILE CONTENT: (re)write FILE if it differs; refuse to clobber foreign files
write_conf() {
    local file=$1 content=$2 bak
    if [ -e "$file" ] && ! grep -qxF "$MARKER" "$file"; then
        if [ "${SLURM_UP_FORCE:-0}" = 1 ]; then
            bak="$file.orig-$(date +%s)"
            say "keeping the existing $file as $bak"
            cp -p "$file" "$bak"
        else
            die "$file exists and was not written by slurm_up; move it away or set SLURM_UP_FORCE=1"
        fi
    fi
    if [ ! -e "$file" ] || [ "$(cat "$file")" != "$content" ]; then
        printf '%s\n' "$content" > "$file.tmp"
        chmod 0644 "$file.tmp"
        mv "$file.tmp" "$file"
        conf_changed=1
    fi
}
write_conf "$CONF" "$new_conf"
write_conf "$GRES_CONF" "$new_gres"
if [ "$FAKE_GPUS" -gt 0 ]; then
    mkdir -p "$FAKE_GPU_DIR"
    for i in $(seq 0 $(( FAKE_GPUS - 1 ))); do
        ln -sfn /dev/null "$FAKE_GPU_DIR/fake-gpu$i"
    done
fi

mkdir -p "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge

if pid=$(running_pid munged "$MUNGE_PIDFILE"); then
    grep -qx "munged $pid" "$STATE" || say "munged already running (pid $pid), not started by slurm_up: leaving it alone"
else
    rm -f "$MUNGE_PIDFILE"
    # munged forks into the background itself and writes its pidfile
    setpriv --reuid=munge --regid=munge --init-groups "$MUNGED_BIN" \
        || die "munged failed to start (see /var/log/munge/munged.log)"
    pid=$(wait_pidfile munged "$MUNGE_PIDFILE") || die "munged did not write $MUNGE_PIDFILE"
    record munged "$pid"
fi
munge -n | unmunge >/dev/null || die "munge round trip failed"

# ---------------------------------------------------------------- slurmctld
# Config changed while our own slurmctld/slurmd run (e.g. another
# SLURM_UP_FAKE_GPUS): restart them; GRES changes need a slurmd restart anyway.
if [ "$conf_changed" = 1 ]; then
    for name in slurmd slurmctld; do
        pid=$(awk -v n="$name" '$1 == n {print $2}' "$STATE")
        if [ -n "$pid" ] && pid_is "$name" "$pid"; then
            say "config changed: restarting $name (pid $pid)"
            kill -TERM "$pid"
            for _ in $(seq 1 100); do pid_is "$name" "$pid" || break; sleep 0.1; done
            pid_is "$name" "$pid" && die "$name (pid $pid) did not stop"
        fi
        awk -v n="$name" '$1 != n' "$STATE" > "$STATE.tmp" && mv "$STATE.tmp" "$STATE"
    done
fi

if pid=$(running_pid slurmctld "$CTLD_PIDFILE"); then
    grep -qx "slurmctld $pid" "$STATE" || say "slurmctld already running (pid $pid), not started by slurm_up: leaving it alone"
    if [ "$conf_changed" = 1 ]; then
        say "slurm.conf changed: scontrol reconfigure"
        scontrol reconfigure || say "scontrol reconfigure failed"
    fi
else
    rm -f "$CTLD_PIDFILE"
    "$SLURMCTLD_BIN" -f "$CONF" || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
    pid=$(wait_pidfile slurmctld "$CTLD_PIDFILE") \
        || { tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true; die "slurmctld did not come up"; }
    record slurmctld "$pid"
fi

# ---------------------------------------------------------------- slurmd
if pid=$(running_pid slurmd "$SLURMD_PIDFILE"); then
    grep -qx "slurmd $pid" "$STATE" || say "slurmd already running (pid $pid), not started by slurm_up: leaving it alone"
else
    rm -f "$SLURMD_PIDFILE"
    "$SLURMD_BIN" -f "$CONF" || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
    pid=$(wait_pidfile slurmd "$SLURMD_PIDFILE") \
        || { tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true; die "slurmd did not come up"; }
    record slurmd "$pid"
fi

# ---------------------------------------------------------------- wait for idle
state=""
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
    state=$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mix|alloc) break ;;
        down*|drain*|drng*|fail*)
            # e.g. left DOWN in the saved state by an earlier unclean stop
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 15 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
        reason=$(sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null | head -n1 || true)
        die "node $NODE not idle after ${TIMEOUT}s (state: '${state:-no answer}', reason: '${reason:-}')"
    fi
    sleep 1
done

parts=$(sinfo -h -o '%R' | sort | paste -sd, -)
gpus=""
[ "$FAKE_GPUS" -gt 0 ] && gpus=", $FAKE_GPUS fake GPUs (gres gpu)"
echo "slurm up: node $NODE, partitions $parts$gpus"
