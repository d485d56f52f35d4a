#!/usr/bin/env bash
# Start a real, single-node SLURM cluster on this machine for Afinar's SLURM tests.
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge (apt-get, once), writes a one-node
# slurm.conf without systemd or cgroups, gives the node fake GPUs (character devices that behave like
# /dev/null, declared as GRES "gpu") so that `sbatch --gpus=1` schedules on a CPU-only machine and the
# job sees CUDA_VISIBLE_DEVICES, starts the daemons with PID files under the state directory, and waits
# until `sinfo` reports the node usable. Running it again is harmless: installed packages, a live
# cluster and an unchanged configuration are left as they are.
#
#   tests/slurm/start-local-slurm.sh            # then: tests/slurm/stop-local-slurm.sh
#
# Exit codes (tests/workflow/test_slurm.py relies on them):
#   0  the cluster is up (its node is idle or already running jobs)
#   3  a cluster cannot be provided on this machine (not root, not Debian/apt, packages not installable,
#      or a SLURM configuration this script did not write is present): callers SKIP, with the reason
#      printed on the last line of stderr
#   1  anything else (a daemon did not start, the node never became idle): callers FAIL
#
# Settings (environment):
#   AFINAR_SLURM_DIR        state, logs, PID files, fake GPU devices   (default /tmp/afinar-slurm)
#   AFINAR_SLURM_PARTITION  the one partition, the cluster default     (default afinar)
#   AFINAR_SLURM_GPUS       fake GPUs on the node, 0 for none           (default 2)
#   AFINAR_SLURM_WAIT       seconds to wait for the node to be idle     (default 60)
set -euo pipefail

DIR=${AFINAR_SLURM_DIR:-/tmp/afinar-slurm}
PARTITION=${AFINAR_SLURM_PARTITION:-afinar}
GPUS=${AFINAR_SLURM_GPUS:-2}
WAIT=${AFINAR_SLURM_WAIT:-60}
PACKAGES=(slurmctld slurmd slurm-client munge)
MARKER="# written by Afinar's tests/slurm/start-local-slurm.sh"
CONF_DIR=/etc/slurm

say() { printf '[afinar-slurm] %s\n' "$*" >&2; }
cannot() { say "SKIP: $*"; exit 3; }
die() { say "ERROR: $*"; exit 1; }

# Prints the PID recorded in $1 if that process is alive and is the program $2, else fails.
# Checking the program name guards against a recycled PID.
pid_of() {
    local pidfile=$1 prog=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$prog" ]] || return 1
    echo "$pid"
}

[[ $(id -u) == 0 ]] || cannot "must run as root to install packages and start SLURM daemons"
command -v apt-get >/dev/null && command -v dpkg-query >/dev/null || cannot "no apt-get/dpkg: not a Debian-like system"

# ------------------------------------------------------------------ packages
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting services on their own (no systemd here, and
    # we want the daemons started only by us, with our PID files).
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
        tail -n 5 "$apt_log" >&2
        ((made_policy)) && rm -f /usr/sbin/policy-rc.d
        cannot "apt-get could not install ${missing[*]} (see the lines above)"
    fi
    rm -f "$apt_log"
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
fi
for p in "${PACKAGES[@]}"; do installed "$p" || cannot "package $p is still not installed"; done
say "packages: $(dpkg-query -W -f='${Package}=${Version} ' "${PACKAGES[@]}")"

# ------------------------------------------------------------------ configuration
for f in slurm.conf gres.conf; do
    if [[ -e $CONF_DIR/$f ]] && ! grep -qF "$MARKER" "$CONF_DIR/$f"; then
        cannot "$CONF_DIR/$f was not written by this script (a real SLURM node?); refusing to replace it"
    fi
done

install -d -m 0755 "$DIR" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/dev" "$CONF_DIR"

if [[ ! -s /etc/munge/munge.key ]]; then
    install -d -m 0700 -o munge -g munge /etc/munge
    (umask 077 && head -c 1024 /dev/urandom >/etc/munge/munge.key)
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    say "created /etc/munge/munge.key"
fi
install -d -m 0755 -o munge -g munge /run/munge
install -d -m 0700 -o munge -g munge "$DIR/munge"    # munged runs as munge and refuses lax permissions

host=$(hostname -s)
# `slurmd -C` prints this node's hardware as slurm.conf wants it; keep CPUs/sockets/cores/threads and
# set our own memory so that SLURM never offers what the machine does not have.
hw=$(slurmd -C | head -n 1)
hw=${hw#NodeName=* }
hw=${hw%% RealMemory=*}
total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
mem_mb=$((total_mb > 4096 ? total_mb - 1024 : total_mb * 3 / 4))

gres_types="" node_gres="" gres_conf="$MARKER"
if ((GPUS > 0)); then
    for ((i = 0; i < GPUS; i++)); do
        dev=$DIR/dev/nvidia$i
        # same major/minor as /dev/null: a harmless character device that slurmd accepts as a GPU file
        [[ -c $dev ]] || { rm -f "$dev"; mknod -m 0666 "$dev" c 1 3 2>/dev/null || true; }
        [[ -c $dev ]] || cannot "mknod cannot create fake GPU devices here (set AFINAR_SLURM_GPUS=0)"
    done
    gres_types="GresTypes=gpu"
    node_gres=" Gres=gpu:$GPUS"
    gres_conf+=$'\n'"AutoDetect=off"$'\n'"NodeName=$host Name=gpu File=$DIR/dev/nvidia[0-$((GPUS - 1))]"
fi

slurm_conf="$MARKER
ClusterName=afinar-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# no systemd and no cgroups on this machine
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# no slurmdbd: sacct cannot see jobs, so clients must ask squeue (kept visible for 5 min after the end)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=300
$gres_types
NodeName=$host NodeAddr=127.0.0.1 $hw RealMemory=$mem_mb$node_gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP"

changed=0
write_conf() { # $1 = file, $2 = content; sets changed=1 when the file changes
    if [[ -f $1 && "$(<"$1")" == "$2" ]]; then return 0; fi
    printf '%s\n' "$2" >"$1.tmp" && chmod 0644 "$1.tmp" && mv -f "$1.tmp" "$1"
    changed=1
}
write_conf "$CONF_DIR/slurm.conf" "$slurm_conf"
write_conf "$CONF_DIR/gres.conf" "$gres_conf"

# ------------------------------------------------------------------ daemons
stop_pid() { # $1 = pidfile, $2 = program
    local pid
    pid=$(pid_of "$1" "$2") || { rm -f "$1"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.2; done
    [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null
    rm -f "$1"
}
if ((changed)); then
    say "configuration written to $CONF_DIR"
    # daemons of ours that run with an older configuration must restart to read it
    stop_pid "$DIR/run/slurmd.pid" slurmd
    stop_pid "$DIR/run/slurmctld.pid" slurmctld
fi

# A daemon of the same name that we did not start (e.g. a system service) would fight ours for the ports.
for prog in slurmctld slurmd; do
    if ! pid_of "$DIR/run/$prog.pid" "$prog" >/dev/null; then
        for p in /proc/[0-9]*; do
            if [[ "$(cat "$p/comm" 2>/dev/null)" == "$prog" ]]; then
                cannot "a $prog not started by this script runs (pid ${p#/proc/}); stop it first"
            fi
        done
    fi
done

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if pid_of "$DIR/munge/munged.pid" munged >/dev/null; then
    :
elif munge_works; then
    say "using the munged that already answers on /run/munge (not started by this script)"
else
    runuser -u munge -- /usr/sbin/munged --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        </dev/null >/dev/null 2>&1 || die "munged did not start; see $DIR/munge/munged.log"
    for _ in $(seq 50); do munge_works && break; sleep 0.1; done
    munge_works || die "munge credentials do not work; see $DIR/munge/munged.log"
    say "munged started (pid $(<"$DIR/munge/munged.pid"))"
fi

start_daemon() { # $1 = program; the daemon forks and writes its PID file from slurm.conf
    local prog=$1 pidfile="$DIR/run/$1.pid"
    if pid_of "$pidfile" "$prog" >/dev/null; then return 0; fi
    rm -f "$pidfile"
    "/usr/sbin/$prog" </dev/null >>"$DIR/log/$prog.out" 2>&1 || die "$prog did not start; see $DIR/log/$prog.log"
    for _ in $(seq 50); do pid_of "$pidfile" "$prog" >/dev/null && break; sleep 0.1; done
    pid_of "$pidfile" "$prog" >/dev/null || die "$prog exited; see $DIR/log/$prog.log"
    say "$prog started (pid $(<"$pidfile"))"
}
start_daemon slurmctld
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
start_daemon slurmd

# ------------------------------------------------------------------ wait until the node takes jobs
state="" resumed=0
for ((i = 0; i < WAIT * 5; i++)); do
    state=$(sinfo -h -N -n "$host" -o '%T' 2>/dev/null | head -n 1 || true)
    case $state in
        idle | mixed | allocated | completing) break ;;
        *drain* | *down* | *fail*)
            # a node that was down in an earlier run stays down in the saved state until resumed
            if ((!resumed)); then scontrol update nodename="$host" state=resume 2>/dev/null || true; resumed=1; fi ;;
    esac
    sleep 0.2
done
case $state in
    idle | mixed | allocated | completing) ;;
    *)
        scontrol show node "$host" >&2 || true
        tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
        die "node $host is '$state' after ${WAIT}s, not idle"
        ;;
esac
sinfo -N -o '%N %P %T %c %m %G' >&2
say "ready: node $host, partition $PARTITION (default), $GPUS fake GPU(s), state dir $DIR"
