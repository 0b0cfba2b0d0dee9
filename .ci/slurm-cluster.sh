#!/usr/bin/env bash
# Emulated SLURM 22.05 cluster on ONE machine (Debian 12 packages, no systemd).
#
# Packages (CI installs them separately; this script installs nothing):
#   apt-get update && apt-get install -y slurmctld slurmd slurm-client munge
# Optional, only for MPI launches inside the cluster: mpirun.openmpi,
# mpiexec.hydra, and srun --mpi=pmix (Debian's mpi_pmix_v4.so dlopens the
# unversioned .../pmix2/lib/libpmix.so, which only libpmix-dev ships):
#   apt-get install -y openmpi-bin mpich libpmix-dev
#
# Usage:
#   .ci/slurm-cluster.sh up [NODES]   # start munged, slurmctld, NODES slurmd's (default 2)
#   .ci/slurm-cluster.sh status       # daemons + sinfo
#   .ci/slurm-cluster.sh env          # prints "export SLURM_CONF=..." (eval it)
#   .ci/slurm-cluster.sh down         # stop everything this script started
#
# Then:  eval "$(.ci/slurm-cluster.sh env)"; sbatch --nodes=2 --ntasks-per-node=2 ...
#
# Layout: every file lives under the state dir ($XFFL_SLURM_DIR, default
# /tmp/xffl-slurm); the only thing written outside is one marked line in
# /etc/hosts (127.0.0.1 n1 n2 ...), removed by `down`.  Daemons run as root
# (munged as user munge), talk over 127.0.0.1 only, and are tracked by pid
# files plus an environment marker (XFFL_SLURM_TAG=<state dir>) so leftovers of
# a previous run whose pid files were lost can still be found and stopped.
# slurmstepd blanks its environ (process title), so it is recognised by the
# slurmd log it keeps open instead: fd -> $DIR/log/slurmd-<node>.log.  All
# emulated nodes share one hostname; that open log is also how a test can tell
# which emulated node ran a process (walk PPid up to the nearest slurmstepd).
#
# Knobs: XFFL_SLURM_DIR, XFFL_SLURM_CPUS (CPUs declared per node, default 4),
# XFFL_SLURM_CTLD_PORT (default 16817), XFFL_SLURM_SLURMD_PORT (first slurmd
# port, default 17001), XFFL_SLURM_NODE_PREFIX (default "n"),
# XFFL_SLURM_WAIT (seconds to wait for idle nodes, default 30),
# XFFL_SLURM_SCHED (default sched/backfill with bf_interval=1: sched/builtin
# starts plain jobs as fast but rejects heterogeneous jobs, "Requested
# operation not supported on this system").
set -euo pipefail

DIR="${XFFL_SLURM_DIR:-/tmp/xffl-slurm}"
CPUS="${XFFL_SLURM_CPUS:-4}"
CTLD_PORT="${XFFL_SLURM_CTLD_PORT:-16817}"
SLURMD_PORT="${XFFL_SLURM_SLURMD_PORT:-17001}"
PREFIX="${XFFL_SLURM_NODE_PREFIX:-n}"
WAIT="${XFFL_SLURM_WAIT:-30}"
SCHED="${XFFL_SLURM_SCHED:-sched/backfill}"

APT_LINE="apt-get update && apt-get install -y slurmctld slurmd slurm-client munge"
HOSTS_MARK="# xffl-slurm:${DIR}"
CONF="$DIR/etc/slurm.conf"
MUNGE_DIR="$DIR/munge"
MUNGE_SOCK="$MUNGE_DIR/munge.socket"
MUNGE_PID="$MUNGE_DIR/munged.pid"
CTLD_PID="$DIR/run/slurmctld.pid"
TAG="XFFL_SLURM_TAG=$DIR"

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=.ci/cluster-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster-common.sh"

need_bins() {
    local missing=() b
    for b in munged mungekey slurmctld slurmd sinfo scontrol srun sbatch runuser; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    if ((${#missing[@]})); then
        log "missing binaries: ${missing[*]}"
        log "install them with:  $APT_LINE"
        exit 1
    fi
}

# --- process helpers -------------------------------------------------------
# alive and not a zombie (an init that is not a real init may reap late)

# pid from a pid file if that process is alive and is the expected program

# every live process of ours: daemons carry the environment marker; a
# slurmstepd (environ blanked) holds $DIR/log/slurmd-<node>.log open
tagged_pids() {
    local p fd
    for p in /proc/[0-9]*; do
        [[ -r "$p/environ" ]] || continue
        if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "$TAG"; then
            echo "${p#/proc/}"
        elif [[ "$(cat "$p/comm" 2>/dev/null)" == slurmstepd ]]; then
            for fd in "$p"/fd/*; do
                if [[ "$(readlink "$fd" 2>/dev/null)" == "$DIR/log/"* ]]; then
                    echo "${p#/proc/}"
                    break
                fi
            done
        fi
    done
}

descendants() { # pid -> all pids below it
    ps -eo pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END { for (p in parent) { q = p
                  while (q in parent && parent[q] != 0 && q != root) q = parent[q]
                  if (q == root && p != root) printf "%s ", p } }'
}


nodes_of_conf() { # -> node count recorded by the last `up`
    cat "$DIR/etc/nodes" 2>/dev/null || echo 0
}

node_names() { # N -> n1 n2 ...
    local i
    for ((i = 1; i <= $1; i++)); do printf '%s%d ' "$PREFIX" "$i"; done
}

# --- /etc/hosts --------------------------------------------------------------
# /etc/hosts is often a bind mount (containers): rewrite it in place, never
# replace the inode (no sed -i / mv).
hosts_remove() {
    [[ -w /etc/hosts ]] || return 0
    if grep -qF "$HOSTS_MARK" /etc/hosts; then
        local tmp
        tmp=$(mktemp)
        grep -vF "$HOSTS_MARK" /etc/hosts >"$tmp" || true
        cat "$tmp" >/etc/hosts
        rm -f "$tmp"
        log "removed emulated node names from /etc/hosts"
    fi
}

hosts_add() { # names...
    local want="127.0.0.1 $* $HOSTS_MARK"
    if grep -qxF "$want" /etc/hosts 2>/dev/null; then return 0; fi
    hosts_remove
    printf '%s\n' "$want" >>/etc/hosts || die "cannot write /etc/hosts (need root)"
    log "added to /etc/hosts: 127.0.0.1 $*"
}

# --- config ------------------------------------------------------------------
write_conf() { # N -> writes $CONF.new
    local n=$1 host last_port
    host=$(hostname -s)
    last_port=$((SLURMD_PORT + n - 1))
    local port_spec="$SLURMD_PORT" nodelist="${PREFIX}1"
    if ((n > 1)); then
        port_spec="$SLURMD_PORT-$last_port"
        nodelist="${PREFIX}[1-$n]"
    fi
    cat >"$CONF.new" <<EOF
# generated by .ci/slurm-cluster.sh -- $n emulated nodes on host $host
ClusterName=xffl
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
StateSaveLocation=$DIR/state
SlurmctldPidFile=$CTLD_PID
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmdSpoolDir=$DIR/spool/%n
# per node: mpi/pmix makes spmix_appdir_<uid>_<job>.<step> under TmpFS, and
# two emulated nodes sharing /tmp collide on it ("File exists")
TmpFS=$DIR/tmp/%n
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
# pgid, not linuxproc: linuxproc follows parent ids, so a task's child orphaned by the
# task's death escapes it and outlives the job (and holds srun's output open)
ProctrackType=proctrack/pgid
# task/affinity pins each task to its own cores (Cores: srun --cpu-bind=cores by default),
# so a task's sched_getaffinity shows the CPUs per task its step asked for. A node's
# declared CPUs wrap onto this machine's real ones (CPU i -> i mod nproc): a node pins at
# most nproc CPUs, shared out among its tasks, and a step with more than nproc tasks on one
# node fails ("Unable to layout tasks"). No task/cgroup: it depends on the host's cgroup
# setup and leaves its cgroups behind after "down".
TaskPlugin=task/affinity
TaskPluginParam=Cores
SchedulerType=$SCHED
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
Waittime=0
NodeName=$nodelist NodeHostname=$host NodeAddr=127.0.0.1 Port=$port_spec CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# --- daemons -----------------------------------------------------------------
start_munge() {
    local pid
    if pid=$(pid_of "$MUNGE_PID" munged); then
        log "munged already running (pid $pid)"
        return 0
    fi
    rm -f "$MUNGE_PID" "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    install -d -m 0755 -o munge -g munge "$MUNGE_DIR"  # munged wants o+x on the socket dir
    if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
        mungekey -c -k "$MUNGE_DIR/munge.key"
    fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0600 "$MUNGE_DIR/munge.key"
    log "starting munged"
    runuser -u munge -- env "$TAG" munged \
        --socket="$MUNGE_SOCK" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_PID" --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" \
        || { tail -n 20 "$MUNGE_DIR/munged.log" >&2 || true; die "munged failed to start"; }
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -S "$MUNGE_SOCK" ]] && return 0
        sleep 0.1
    done
    die "munged socket $MUNGE_SOCK did not appear"
}

start_ctld() {
    local pid
    if pid=$(pid_of "$CTLD_PID" slurmctld); then
        log "slurmctld already running (pid $pid)"
        return 0
    fi
    log "starting slurmctld (port $CTLD_PORT)"
    # -c: ignore saved state (jobs/nodes) of a previous run
    env "$TAG" slurmctld -c -f "$CONF" \
        || { tail -n 30 "$DIR/log/slurmctld.log" >&2 || true; die "slurmctld failed to start"; }
}

start_slurmd() { # node
    local node=$1 pid
    if pid=$(pid_of "$DIR/run/slurmd-$node.pid" slurmd); then
        log "slurmd $node already running (pid $pid)"
        return 0
    fi
    mkdir -p "$DIR/spool/$node" "$DIR/tmp/$node"
    log "starting slurmd $node"
    env "$TAG" slurmd -f "$CONF" -N "$node" \
        || { tail -n 30 "$DIR/log/slurmd-$node.log" >&2 || true; die "slurmd $node failed to start"; }
}


all_running() { # N
    local node
    pid_of "$MUNGE_PID" munged >/dev/null || return 1
    pid_of "$CTLD_PID" slurmctld >/dev/null || return 1
    for node in $(node_names "$1"); do
        pid_of "$DIR/run/slurmd-$node.pid" slurmd >/dev/null || return 1
    done
}

stop_all() {
    local pid
    stop_daemons
    # leftovers whose pid files were lost, and orphaned slurmstepd's: a
    # slurmstepd ignores SIGTERM, so it and the tasks under it get SIGKILL
    local comm kids
    for pid in $(tagged_pids); do
        [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        if [[ "$comm" == slurmstepd ]]; then
            kids=$(descendants "$pid")
            log "killing leftover slurmstepd (pid $pid) and its tasks (${kids:-none})"
            # shellcheck disable=SC2086
            kill -KILL "$pid" $kids 2>/dev/null || true
        else
            stop_pid "$pid" "leftover $comm"
        fi
    done
}

# --- commands ----------------------------------------------------------------
cmd_up() {
    local n=${1:-2} t0 names node f pid
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "NODES must be a positive integer, got '$n'"
    ((EUID == 0)) || die "must run as root (daemons, /etc/hosts)"
    need_bins
    t0=$EPOCHREALTIME
    mkdir -p "$DIR"/{etc,run,log,state,spool}
    chmod 0755 "$DIR"
    write_conf "$n"
    if [[ -f "$CONF" ]] && ! cmp -s "$CONF" "$CONF.new"; then
        log "configuration changed (or first run): stopping anything left over"
        stop_all
    elif ! all_running "$n" && [[ -n "$(tagged_pids)" ]]; then
        log "some daemons are missing but leftovers run: restarting the cluster"
        stop_all
    fi
    mv "$CONF.new" "$CONF"
    echo "$n" >"$DIR/etc/nodes"
    names=$(node_names "$n")
    # shellcheck disable=SC2086
    hosts_add $names
    start_munge
    start_ctld
    for node in $names; do start_slurmd "$node"; done

    log "waiting up to ${WAIT}s for $n idle node(s)"
    local deadline=$(($(date +%s) + WAIT)) idle=0
    while :; do
        idle=$(SLURM_CONF="$CONF" timeout 5 sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2=="idle"' | sort -u | wc -l || true)
        ((idle >= n)) && break
        if (($(date +%s) >= deadline)); then
            log "ERROR: only $idle/$n nodes idle after ${WAIT}s"
            SLURM_CONF="$CONF" timeout 5 sinfo -N -l >&2 || true
            show_logs
            exit 1
        fi
        sleep 0.5
    done
    SLURM_CONF="$CONF" sinfo -N -o '%N %t %c %P' >&2
    log "$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$n" 'BEGIN{printf "cluster up: %d node(s) idle in %.1f s", n, b-a}')"
    log "use it with:  export SLURM_CONF=$CONF"
}

cmd_down() {
    ((EUID == 0)) || die "must run as root"
    stop_all
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    hosts_remove
    log "cluster down (state kept in $DIR; rm -rf it to start from scratch)"
}

cmd_status() {
    local pid f node rc=0
    if pid=$(pid_of "$MUNGE_PID" munged); then echo "munged     running pid $pid"; else echo "munged     stopped"; rc=1; fi
    if pid=$(pid_of "$CTLD_PID" slurmctld); then echo "slurmctld  running pid $pid"; else echo "slurmctld  stopped"; rc=1; fi
    for node in $(node_names "$(nodes_of_conf)"); do
        f="$DIR/run/slurmd-$node.pid"
        if pid=$(pid_of "$f" slurmd); then echo "slurmd $node running pid $pid"; else echo "slurmd $node stopped"; rc=1; fi
    done
    if ((rc == 0)); then
        SLURM_CONF="$CONF" timeout 5 sinfo -N -o '%N %t %c %P' || rc=1
    fi
    return $rc
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 {up [NODES]|down|status|env}" >&2; exit 2 ;;
esac
