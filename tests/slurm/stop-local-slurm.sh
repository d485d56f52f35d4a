#!/usr/bin/env bash
# Stop the single-node SLURM cluster that tests/slurm/start-local-slurm.sh started.
#
# Only processes named in the PID files under the state directory are stopped, and only when the PID
# still belongs to the expected program (never by process name). Jobs left in the cluster are cancelled
# first so that no job step outlives its daemons. Packages and state stay, so the next start takes
# seconds; slurm.conf gets MessageTimeout=1 until then (see the end). Safe to run when nothing is running.
#
#   AFINAR_SLURM_DIR   the same state directory as for the start script   (default /tmp/afinar-slurm)
set -uo pipefail

DIR=${AFINAR_SLURM_DIR:-/tmp/afinar-slurm}
say() { printf '[afinar-slurm] %s\n' "$*" >&2; }

pid_of() {
    local pidfile=$1 prog=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$prog" ]] || return 1
    echo "$pid"
}

stop() { # $1 = program, $2 = its PID file
    local prog=$1 pidfile=$2 pid
    if ! pid=$(pid_of "$pidfile" "$prog"); then
        [[ -e $pidfile ]] && rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 75); do [[ -d /proc/$pid ]] || break; sleep 0.2; done
    if [[ -d /proc/$pid ]]; then
        say "$prog (pid $pid) still running 15 s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
    say "$prog (pid $pid) stopped"
}

if pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    jobs=$(squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o '%A' 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        say "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 50); do
            [[ -z "$(squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o '%A' 2>/dev/null)" ]] && break
            sleep 0.2
        done
    fi
fi

stop slurmd "$DIR/run/slurmd.pid"
stop slurmctld "$DIR/run/slurmctld.pid"
stop munged "$DIR/munge/munged.pid"

# With the client installed and no controller, every SLURM command retries for ~9 s, and Snakemake's SLURM
# plugin runs `scontrol show config` when it is imported, i.e. on EVERY snakemake call, SLURM or not
# (measured: `snakemake --version` 12.4 s instead of 3.2 s). Tell the clients to give up at once while
# the cluster is stopped; start-local-slurm.sh writes its own configuration back.
CONF=/etc/slurm/slurm.conf
MARKER="# written by Afinar's tests/slurm/start-local-slurm.sh"
STOPPED="# cluster stopped by tests/slurm/stop-local-slurm.sh: clients fail at once instead of retrying"
if [[ -f $CONF ]] && grep -qF "$MARKER" "$CONF" && ! grep -qF "$STOPPED" "$CONF"; then
    { cat "$CONF"; printf '%s\nMessageTimeout=1\n' "$STOPPED"; } >"$CONF.tmp" && mv -f "$CONF.tmp" "$CONF"
    say "slurm.conf: MessageTimeout=1 while stopped (no 9 s stall per SLURM client call)"
fi
exit 0
