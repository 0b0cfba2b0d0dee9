#!/usr/bin/env bash
# A real multi-host network on ONE machine, with SLURM 22.05 across it.
#
# Every emulated host (h1, h2, ...) is a set of Linux namespaces held open by a
# long-lived holder process (`sleep infinity`):
#   net   its own network namespace (ip netns "xffl-hN"): lo, eth0 = veth into
#         bridge xbr0 in the root namespace (10.77.0.(10+N)/24), eth1 = veth into
#         bridge xbr1 with 10.99.N.1/24 -- up but unrouted (every host is on its
#         own /24 there, there is no default route), so "the only non-loopback
#         interface" is never an answer
#   uts   its own host name (hN)
#   mnt   its own /etc/hosts (a bind mount of $DIR/hosts/hN): its own name is
#         127.0.1.1 as on a default Debian/Ubuntu install, the other hosts and
#         the controller have their 10.77.0.x address.  Everything else,
#         /tmp, /work, the munge socket, slurm.conf, is the shared file system.
# slurmctld and munged run in the root namespace (slurmctld reached on the bridge
# address 10.77.0.1), one `slurmd -N hN` runs inside each host's namespaces.
# Jobs are submitted from inside a host, as from a login node:
#   .ci/netns-cluster.sh exec h1 sbatch ...      (SLURM_CONF from `env`)
# The namespaces are entered with nsenter --target HOLDER --net --mount --uts:
# `ip netns exec` would remount /sys, and slurmd's cgroup probe fails there.
#
# Packages: iproute2 (ip), util-linux (nsenter, unshare, setsid), plus what
# .ci/slurm-cluster.sh needs (slurmctld slurmd slurm-client munge).  This
# script installs nothing.  It needs root and veth/bridge support in the kernel.
#
# Usage:
#   .ci/netns-cluster.sh up            # build network + hosts, start munged, slurmctld, slurmd's
#   .ci/netns-cluster.sh status        # what runs (exit 1 when something is missing)
#   .ci/netns-cluster.sh env           # "export SLURM_CONF=..." lines (eval them)
#   .ci/netns-cluster.sh exec HOST CMD...   # run CMD inside HOST (cwd and environment kept)
#   .ci/netns-cluster.sh down          # stop everything, remove namespaces, links, bridges
# .ci/netns-rsh is the matching ssh stand-in for mpirun/mpiexec (see there).
#
# It shares nothing with .ci/slurm-cluster.sh (state dir, munge socket and key,
# ports, node names, cluster name, process marker are all different) and both
# can run at once.  Nothing outside the state dir is written except the network
# objects (namespaces xffl-hN, links xffl-hN/xffl-hNb, bridges) and, if it did
# not exist, the /run/netns mount that `ip netns` makes; `down` removes them.
#
# Knobs: XFFL_NETNS_DIR (default /tmp/xffl-netns), XFFL_NETNS_HOSTS (default 2;
# `status` defaults to the count of the last `up`),
# XFFL_NETNS_PREFIX (host name prefix, default h), XFFL_NETNS_CPUS (CPUs declared
# per host, default 4), XFFL_NETNS_CTLD_PORT (default 16827),
# XFFL_NETNS_SLURMD_PORT (default 17101, the same on every host: each host has
# its own network), XFFL_NETNS_BRIDGE / XFFL_NETNS_BRIDGE2 (default xbr0 / xbr1),
# XFFL_NETNS_WAIT (seconds to wait for idle nodes, default 30).
set -euo pipefail

DIR="${XFFL_NETNS_DIR:-/tmp/xffl-netns}"
NHOSTS="${XFFL_NETNS_HOSTS:-2}"
PREFIX="${XFFL_NETNS_PREFIX:-h}"
CPUS="${XFFL_NETNS_CPUS:-4}"
CTLD_PORT="${XFFL_NETNS_CTLD_PORT:-16827}"
SLURMD_PORT="${XFFL_NETNS_SLURMD_PORT:-17101}"
BR="${XFFL_NETNS_BRIDGE:-xbr0}"
BR2="${XFFL_NETNS_BRIDGE2:-xbr1}"
WAIT="${XFFL_NETNS_WAIT:-30}"

NET=10.77.0          # eth0 of host N: $NET.(10+N)/24, the bridge (controller): $NET.1
CTL_ADDR="$NET.1"
NET2=10.99           # eth1 of host N: $NET2.N.1/24, unrouted
NS_PREFIX=xffl-      # netns and root-side veth names: xffl-hN (eth0), xffl-hNb (eth1)

CONF="$DIR/etc/slurm.conf"
MUNGE_DIR="$DIR/munge"
MUNGE_SOCK="$MUNGE_DIR/munge.socket"
MUNGE_PID="$MUNGE_DIR/munged.pid"
CTLD_PID="$DIR/run/slurmctld.pid"
TAG="XFFL_NETNS_TAG=$DIR"
NETNS_DIR=/run/netns
APT_LINE="apt-get install -y iproute2 util-linux slurmctld slurmd slurm-client munge"

log() { printf '[netns-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=.ci/cluster-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster-common.sh"

need_bins() {
    local missing=() b
    for b in ip nsenter unshare setsid munged mungekey slurmctld slurmd sinfo squeue scancel runuser getent; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    if ((${#missing[@]})); then
        log "missing binaries: ${missing[*]}"
        log "install them with:  apt-get update && $APT_LINE"
        exit 1
    fi
}

host_names() { # -> h1 h2 ...
    local i
    for ((i = 1; i <= NHOSTS; i++)); do printf '%s%d ' "$PREFIX" "$i"; done
}
host_index() { echo "${1#"$PREFIX"}"; }
host_addr() { echo "$NET.$((10 + $(host_index "$1")))"; }
host_addr2() { echo "$NET2.$(host_index "$1").1"; }

# --- process helpers (same conventions as .ci/slurm-cluster.sh) --------------


holder_of() { pid_of "$DIR/run/holder-$1.pid" sleep; }

# this process and its ancestors: never killed (down may run inside a host)
protected_pids() {
    local p=$$
    while [[ -n "$p" && "$p" != 0 ]]; do
        echo "$p"
        p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) || break
    done
    echo "$BASHPID"
}

tagged_pids() { # daemons and holders carry $TAG in their environment
    local p
    for p in /proc/[0-9]*; do
        [[ -r "$p/environ" ]] || continue
        if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "$TAG"; then
            echo "${p#/proc/}"
        fi
    done
}

# every process inside one of our network namespaces (slurmd, slurmstepd, jobs,
# holders, anything started with `exec` or netns-rsh)
netns_pids() {
    local ids=() f p id
    for f in "$NETNS_DIR/$NS_PREFIX$PREFIX"*; do
        [[ -e "$f" ]] || continue
        id=$(stat -L -c %i "$f" 2>/dev/null) && ids+=("net:[$id]")
    done
    for f in "$DIR"/run/holder-*.pid; do
        [[ -e "$f" ]] || continue
        p=$(tr -dc '0-9' <"$f")
        [[ -n "$p" ]] && id=$(readlink "/proc/$p/ns/net" 2>/dev/null) && ids+=("$id")
    done
    # recorded by net_up: finds a namespace whose file and holder are both gone
    # (ignored when written before the last boot: the ids may be reused since)
    local up boot
    up=$(cut -d. -f1 /proc/uptime)
    boot=$(($(date +%s) - up - 5))
    if [[ -s "$DIR/run/netns-ids" ]] && (($(stat -c %Y "$DIR/run/netns-ids") >= boot)); then
        while read -r id; do ids+=("$id"); done <"$DIR/run/netns-ids"
    fi
    ((${#ids[@]})) || return 0
    local mine
    mine=$(readlink /proc/self/ns/net)
    for p in /proc/[0-9]*; do
        id=$(readlink "$p/ns/net" 2>/dev/null) || continue
        [[ "$id" == "$mine" ]] && continue
        for f in "${ids[@]}"; do
            if [[ "$id" == "$f" ]]; then echo "${p#/proc/}"; break; fi
        done
    done
}


# --- configuration -----------------------------------------------------------
ctl_name() { # the controller's name: the root namespace's short host name
    local n
    n=$(hostname -s 2>/dev/null || hostname)
    echo "${n:-xffl-ctl}"
}

write_conf() { # -> $CONF.new
    local ctl h nodes=""
    ctl=$(ctl_name)
    for h in $(host_names); do
        nodes+="NodeName=$h NodeHostname=$h NodeAddr=$(host_addr "$h") CPUs=$CPUS RealMemory=1000 State=UNKNOWN"$'\n'
    done
    cat >"$CONF.new" <<EOF
# generated by .ci/netns-cluster.sh -- $NHOSTS hosts in network namespaces, controller $ctl on $CTL_ADDR
ClusterName=xfflnet
SlurmctldHost=$ctl($CTL_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
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
# per node: the hosts share /tmp (one file system), mpi/pmix collides on it otherwise
TmpFS=$DIR/tmp/%n
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SchedulerType=sched/backfill
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
${nodes}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

write_hosts_file() { # host -> $DIR/hosts/host (its /etc/hosts)
    local me=$1 h ctl
    ctl=$(ctl_name)
    {
        echo "127.0.0.1 localhost"
        echo "127.0.1.1 $me"
        echo
        echo "# The following lines are desirable for IPv6 capable hosts"
        echo "::1 localhost ip6-localhost ip6-loopback"
        echo "ff02::1 ip6-allnodes"
        echo "ff02::2 ip6-allrouters"
        echo
        echo "# emulated cluster (.ci/netns-cluster.sh)"
        echo "$CTL_ADDR $ctl"
        for h in $(host_names); do
            [[ "$h" == "$me" ]] || echo "$(host_addr "$h") $h"
        done
    } >"$DIR/hosts/$me"
    chmod 0644 "$DIR/hosts/$me"
}

# --- network -----------------------------------------------------------------
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

net_up() {
    if [[ ! -d "$NETNS_DIR" ]]; then
        touch "$DIR/etc/created-run-netns"   # `down` removes the /run/netns mount again
    fi
    # no STP: ports forward at once
    if ! link_exists "$BR"; then ip link add "$BR" type bridge stp_state 0 forward_delay 0; fi
    ip addr replace "$CTL_ADDR/24" dev "$BR"
    ip link set "$BR" up
    if ! link_exists "$BR2"; then ip link add "$BR2" type bridge stp_state 0 forward_delay 0; fi
    ip link set "$BR2" up
    local h ns
    for h in $(host_names); do
        ns="$NS_PREFIX$h"
        ip netns add "$ns"
        echo "net:[$(stat -L -c %i "$NETNS_DIR/$ns")]" >>"$DIR/run/netns-ids"
        ip link add "$ns" type veth peer name "$ns-e0"
        ip link set "$ns-e0" netns "$ns"
        ip link set "$ns" master "$BR"
        ip link set "$ns" up
        ip -n "$ns" link set "$ns-e0" name eth0
        ip -n "$ns" addr add "$(host_addr "$h")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip link add "${ns}b" type veth peer name "$ns-e1"
        ip link set "$ns-e1" netns "$ns"
        ip link set "${ns}b" master "$BR2"
        ip link set "${ns}b" up
        ip -n "$ns" link set "$ns-e1" name eth1
        ip -n "$ns" addr add "$(host_addr2 "$h")/24" dev eth1
        ip -n "$ns" link set eth1 up
        ip -n "$ns" link set lo up
        log "host $h: netns $ns, eth0 $(host_addr "$h")/24 (bridge $BR), eth1 $(host_addr2 "$h")/24 (bridge $BR2, unrouted)"
    done
}

net_down() { # removes every object of ours, whatever the host count was
    local ns l
    for ns in "$NETNS_DIR/$NS_PREFIX$PREFIX"*; do
        [[ -e "$ns" ]] || continue
        ns=${ns##*/}
        if ip netns del "$ns" 2>/dev/null; then log "deleted netns $ns"; fi
    done
    # deleting a namespace destroys its veth ends and so their peers, but not
    # always at once (gVisor keeps them while the namespace has sockets left)
    for l in $(ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}'); do
        if [[ "$l" =~ ^${NS_PREFIX}${PREFIX}[0-9]+(b|-e0|-e1)?$ ]]; then
            if ip link del "$l" 2>/dev/null; then log "deleted link $l"; fi
        fi
    done
    for l in "$BR" "$BR2"; do
        if link_exists "$l"; then ip link del "$l" && log "deleted bridge $l"; fi
    done
    if [[ -e "$DIR/etc/created-run-netns" && -d "$NETNS_DIR" ]] && [[ -z "$(ls -A "$NETNS_DIR")" ]]; then
        while mountpoint -q "$NETNS_DIR"; do umount "$NETNS_DIR" || break; done
        if rmdir "$NETNS_DIR" 2>/dev/null; then log "removed $NETNS_DIR (ip netns made it)"; fi
    fi
    rm -f "$DIR/etc/created-run-netns"
}

# --- hosts (namespace holders) -----------------------------------------------
start_holder() { # host
    local h=$1 ns="$NS_PREFIX$1" pid i
    write_hosts_file "$h"
    # nsenter and unshare exec (no fork), so $! is the holder itself
    # shellcheck disable=SC2016 # $1 $2 are the inner shell's
    setsid env -u XFFL_SLURM_TAG "$TAG" nsenter --net="$NETNS_DIR/$ns" \
        unshare --mount --uts --propagation private \
        sh -c 'hostname "$1" && mount --bind "$2" /etc/hosts && exec sleep infinity' \
        holder "$h" "$DIR/hosts/$h" </dev/null >>"$DIR/log/holder-$h.log" 2>&1 &
    pid=$!
    echo "$pid" >"$DIR/run/holder-$h.pid"
    for ((i = 0; i < 50; i++)); do
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == sleep ]]; then
            log "host $h: holder pid $pid (hostname $h, /etc/hosts from $DIR/hosts/$h)"
            return 0
        fi
        alive "$pid" || break
        sleep 0.05
    done
    cat "$DIR/log/holder-$h.log" >&2 || true
    die "host $h: namespace holder did not start"
}

in_host() { # host cmd... (cwd and environment kept)
    local h=$1 pid
    shift
    pid=$(holder_of "$h") || die "host $h is not up (no holder; run: $0 up)"
    nsenter --target "$pid" --net --mount --uts --wd="$PWD" -- "$@"
}

# --- daemons -----------------------------------------------------------------
start_munge() {
    install -d -m 0755 -o munge -g munge "$MUNGE_DIR"
    if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then mungekey -c -k "$MUNGE_DIR/munge.key"; fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0600 "$MUNGE_DIR/munge.key"
    rm -f "$MUNGE_PID" "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    runuser -u munge -- env -u XFFL_SLURM_TAG "$TAG" munged \
        --socket="$MUNGE_SOCK" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_PID" --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" \
        || { tail -n 20 "$MUNGE_DIR/munged.log" >&2 || true; die "munged failed to start"; }
    local i
    for ((i = 0; i < 50; i++)); do
        if [[ -S "$MUNGE_SOCK" ]]; then
            log "munged: pid $(cat "$MUNGE_PID" 2>/dev/null), socket $MUNGE_SOCK"
            return 0
        fi
        sleep 0.1
    done
    die "munged socket $MUNGE_SOCK did not appear"
}

start_ctld() {
    # -c: ignore saved state (jobs/nodes) of a previous run
    env -u XFFL_SLURM_TAG "$TAG" slurmctld -c -f "$CONF" \
        || { tail -n 30 "$DIR/log/slurmctld.log" >&2 || true; die "slurmctld failed to start"; }
    log "slurmctld: root namespace, $CTL_ADDR:$CTLD_PORT"
}

start_slurmd() { # host
    local h=$1 pid
    pid=$(holder_of "$h")
    mkdir -p "$DIR/spool/$h" "$DIR/tmp/$h"
    (cd / && env -u XFFL_SLURM_TAG "$TAG" nsenter --target "$pid" --net --mount --uts --wd=/ \
        slurmd -f "$CONF" -N "$h") \
        || { tail -n 30 "$DIR/log/slurmd-$h.log" >&2 || true; die "slurmd $h failed to start"; }
    log "slurmd $h: inside host $h, $(host_addr "$h"):$SLURMD_PORT"
}


all_running() {
    local h
    [[ -f "$CONF" ]] || return 1
    pid_of "$MUNGE_PID" munged >/dev/null || return 1
    pid_of "$CTLD_PID" slurmctld >/dev/null || return 1
    link_exists "$BR" && link_exists "$BR2" || return 1
    for h in $(host_names); do
        holder_of "$h" >/dev/null || return 1
        [[ -e "$NETNS_DIR/$NS_PREFIX$h" ]] || return 1
        pid_of "$DIR/run/slurmd-$h.pid" slurmd >/dev/null || return 1
    done
}

stop_all() {
    local pid protected
    stop_daemons
    # whatever still runs inside the hosts (slurmstepd's, jobs, mpirun's, holders)
    # and tagged leftovers whose pid files were lost: SIGKILL
    protected=" $(protected_pids | tr '\n' ' ') "
    local victims=()
    for pid in $( (netns_pids; tagged_pids) | sort -un); do
        [[ "$protected" == *" $pid "* ]] && continue
        victims+=("$pid")
    done
    if ((${#victims[@]})); then
        log "killing what is left in the hosts: ${victims[*]}"
        kill -KILL "${victims[@]}" 2>/dev/null || true
        local i
        for ((i = 0; i < 50; i++)); do
            local left=0
            for pid in "${victims[@]}"; do alive "$pid" && left=1; done
            ((left)) || break
            sleep 0.1
        done
    fi
    rm -f "$DIR"/run/holder-*.pid "$DIR/run/netns-ids"
}

teardown() {
    stop_all
    net_down
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
}

# --- checks ------------------------------------------------------------------
verify() {
    local h first=${PREFIX}1 got idle deadline
    for h in $(host_names); do
        got=$(in_host "$h" hostname)
        [[ "$got" == "$h" ]] || die "host $h: hostname says '$got'"
        got=$(in_host "$h" getent hosts "$h" | awk '{print $1}')
        [[ "$got" == 127.0.1.1 ]] || die "host $h: its own name resolves to '$got', not 127.0.1.1"
    done
    log "check: each host has its own name, resolving to 127.0.1.1 there"
    for h in $(host_names); do
        [[ "$h" == "$first" ]] && continue
        # slurmd listens on every host: a TCP connect from $first proves the route
        if ! in_host "$first" timeout 5 bash -c "exec 3<>/dev/tcp/$(host_addr "$h")/$SLURMD_PORT" 2>/dev/null; then
            if [[ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" == 1 ]]; then
                log "hint: br_netfilter sends bridged traffic through iptables FORWARD (Docker sets it to DROP):"
                log "      iptables -I FORWARD -i $BR -o $BR -j ACCEPT   (or sysctl net.bridge.bridge-nf-call-iptables=0)"
            fi
            die "$first cannot reach $h at $(host_addr "$h"):$SLURMD_PORT"
        fi
        log "check: $first reaches $h at $(host_addr "$h"):$SLURMD_PORT over TCP"
    done
    log "waiting up to ${WAIT}s for $NHOSTS idle node(s)"
    deadline=$(($(date +%s) + WAIT))
    while :; do
        idle=$(in_host "$first" env SLURM_CONF="$CONF" timeout 5 sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2=="idle"' | sort -u | wc -l || true)
        ((idle >= NHOSTS)) && break
        if (($(date +%s) >= deadline)); then
            log "ERROR: only $idle/$NHOSTS nodes idle after ${WAIT}s"
            SLURM_CONF="$CONF" timeout 5 sinfo -N -l >&2 || true
            show_logs
            exit 1
        fi
        sleep 0.2
    done
    log "check: sinfo from inside $first: $(in_host "$first" env SLURM_CONF="$CONF" sinfo -h -N -o '%N=%t' | tr '\n' ' ')"
}

# --- commands ----------------------------------------------------------------
in_root_netns() { # up/down manage links in the namespace they run in: not one of the hosts'
    local mine f
    mine=$(readlink /proc/self/ns/net)
    for f in "$NETNS_DIR/$NS_PREFIX$PREFIX"*; do
        [[ -e "$f" ]] || continue
        [[ "$mine" != "net:[$(stat -L -c %i "$f" 2>/dev/null)]" ]] \
            || die "run this from the machine's own network namespace, not from inside host ${f##*/"$NS_PREFIX"}"
    done
}

cmd_up() {
    local t0 h
    if ! [[ "$NHOSTS" =~ ^[1-9][0-9]*$ ]] || ((NHOSTS > 200)); then
        die "XFFL_NETNS_HOSTS must be 1..200, got '$NHOSTS'"
    fi
    ((EUID == 0)) || die "must run as root (namespaces, links, daemons)"
    in_root_netns
    need_bins
    t0=$EPOCHREALTIME
    mkdir -p "$DIR"/{etc,run,log,state,spool,tmp,hosts}
    chmod 0755 "$DIR"
    write_conf
    if [[ -f "$CONF" ]] && cmp -s "$CONF" "$CONF.new" && all_running; then
        rm -f "$CONF.new"
        log "already up: $(host_names)"
    else
        log "tearing down anything left over"
        teardown
        mv "$CONF.new" "$CONF"
        echo "$NHOSTS" >"$DIR/etc/hosts-count"
        net_up
        for h in $(host_names); do start_holder "$h"; done
        start_munge
        start_ctld
        for h in $(host_names); do start_slurmd "$h"; done
    fi
    verify
    log "$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$NHOSTS" 'BEGIN{printf "bed up: %d host(s) in %.1f s", n, b-a}')"
    log "use it with:  eval \"\$($0 env)\"; $0 exec ${PREFIX}1 srun -N$NHOSTS hostname"
}

cmd_down() {
    ((EUID == 0)) || die "must run as root"
    in_root_netns
    teardown
    log "bed down (state kept in $DIR; rm -rf it to start from scratch)"
}

cmd_status() {
    local pid h rc=0
    for h in $(host_names); do
        if pid=$(holder_of "$h"); then
            echo "host $h     holder pid $pid, $(nsenter --target "$pid" --uts hostname), $(ip -n "$NS_PREFIX$h" -br -4 addr 2>/dev/null | awk '$1!="lo"{printf "%s %s  ", $1, $3}')"
        else
            echo "host $h     down"; rc=1
        fi
    done
    if pid=$(pid_of "$MUNGE_PID" munged); then echo "munged      running pid $pid"; else echo "munged      stopped"; rc=1; fi
    if pid=$(pid_of "$CTLD_PID" slurmctld); then echo "slurmctld   running pid $pid ($CTL_ADDR:$CTLD_PORT)"; else echo "slurmctld   stopped"; rc=1; fi
    for h in $(host_names); do
        if pid=$(pid_of "$DIR/run/slurmd-$h.pid" slurmd); then echo "slurmd $h   running pid $pid"; else echo "slurmd $h   stopped"; rc=1; fi
    done
    if ((rc == 0)); then
        SLURM_CONF="$CONF" timeout 5 sinfo -N -o '%N %t %c %P' || rc=1
    fi
    return $rc
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status)
        # the host count of the last `up`, unless asked for another
        NHOSTS=${XFFL_NETNS_HOSTS:-$(cat "$DIR/etc/hosts-count" 2>/dev/null || echo 2)}
        cmd_status
        ;;
    env)
        echo "export SLURM_CONF=$CONF"
        echo "export XFFL_NETNS_DIR=$DIR"
        ;;
    exec)
        shift
        (($# >= 2)) || die "usage: $0 exec HOST CMD..."
        h=$1; shift
        pid=$(holder_of "$h") || die "host $h is not up (no holder; run: $0 up)"
        exec nsenter --target "$pid" --net --mount --uts --wd="$PWD" -- "$@"
        ;;
    *) echo "usage: $0 {up|down|status|env|exec HOST CMD...}" >&2; exit 2 ;;
esac
