# Shared by .ci/slurm-cluster.sh and .ci/netns-cluster.sh (sourced, not run): process
# helpers. Callers define log(), DIR (their state folder) and MUNGE_DIR.
# shellcheck shell=bash

alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ "$st" != Z ]]
}
pid_of() { # pidfile comm
    local f=$1 comm=$2 pid
    [[ -s "$f" ]] || return 1
    pid=$(tr -dc '0-9' <"$f")
    alive "$pid" || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
    echo "$pid"
}
stop_pid() { # pid name
    local pid=$1 name=$2 i
    alive "$pid" || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || return 0
        sleep 0.2
    done
    log "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}
show_logs() {
    local f
    for f in "$MUNGE_DIR/munged.log" "$DIR"/log/*.log; do
        [[ -f "$f" ]] || continue
        printf '\n===== tail %s =====\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}
stop_daemons() { # cancel the jobs (so slurmstepd's exit cleanly), then slurmd's, slurmctld, munged
    local pid f name
    if [[ -f "$CONF" ]] && pid_of "$CTLD_PID" slurmctld >/dev/null; then
        local jobs i
        jobs=$(SLURM_CONF="$CONF" timeout 5 squeue -h -o '%A' 2>/dev/null || true)
        if [[ -n "$jobs" ]]; then
            log "cancelling jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086
            SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 20; i++)); do
                [[ -z "$(SLURM_CONF="$CONF" timeout 5 squeue -h -o '%A' 2>/dev/null)" ]] && break
                sleep 0.5
            done
        fi
    fi
    for f in "$DIR"/run/slurmd-*.pid; do
        [[ -e "$f" ]] || continue
        name=${f##*/slurmd-}; name=${name%.pid}
        if pid=$(pid_of "$f" slurmd); then stop_pid "$pid" "slurmd $name"; fi
        rm -f "$f"
    done
    if pid=$(pid_of "$CTLD_PID" slurmctld); then stop_pid "$pid" slurmctld; fi
    rm -f "$CTLD_PID"
    if pid=$(pid_of "$MUNGE_PID" munged); then stop_pid "$pid" munged; fi
    rm -f "$MUNGE_PID"
}
