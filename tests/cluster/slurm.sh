#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests: Debian's slurm-wlm and munge, nothing installed here.
#   tests/cluster/slurm.sh start DIR   writes DIR/slurm.conf, starts munged, slurmctld and slurmd, waits for `sinfo`
#                                      to show the node idle, and prints `export SLURM_CONF=DIR/slurm.conf`
#   tests/cluster/slurm.sh stop DIR    stops the three daemons by the process ids in DIR/*.pid
# Everything (key, sockets, state, logs, pid files) lives in DIR: /etc and the system's munged are left alone.
# No accounting (slurmdbd needs MySQL/MariaDB): sacct answers "accounting storage is disabled", and
# nnexp's launcher asks squeue instead (see README, "On a SLURM cluster").
set -euo pipefail

action=${1:?usage: slurm.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm.sh start|stop DIR}")
sbin=${SLURM_SBIN:-/usr/sbin}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stop() {
    for name in slurmd slurmctld munged; do
        if [ -s "$dir/$name.pid" ]; then
            pid=$(cat "$dir/$name.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/$name.pid"
        fi
    done
}

start() {
    for binary in "$sbin/munged" "$sbin/slurmctld" "$sbin/slurmd" sinfo sbatch; do
        command -v "$binary" >/dev/null || { echo "slurm.sh: $binary not found (apt-get install slurm-wlm munge)" >&2; exit 3; }
    done
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    chmod 700 "$dir" "$dir/munge"
    head -c 1024 /dev/urandom > "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    "$sbin/munged" --force --key-file "$dir/munge/munge.key" --socket "$dir/munge/munge.socket" \
        --pid-file "$dir/munged.pid" --log-file "$dir/munged.log" --seed-file "$dir/munge/munge.seed"
    host=$(hostname -s)
    # The node line as slurmd measures it (CPUs, sockets, cores, RealMemory), so that --mem requests fit.
    node=$("$sbin/slurmd" -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
    cat > "$dir/slurm.conf" <<CONF
ClusterName=nnexp-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=10
KillWait=10
SchedulerParameters=sched_interval=5
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
# Up to 8 jobs per core, for tests that need many jobs at once on a small machine.
PartitionName=shared Nodes=$host MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CONF
    export SLURM_CONF=$dir/slurm.conf
    "$sbin/slurmctld" -f "$SLURM_CONF"
    "$sbin/slurmd" -f "$SLURM_CONF"
    for _ in $(seq 300); do
        if [ "$(sinfo -h -n "$host" -o %t 2>/dev/null)" = idle ]; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.1
    done
    echo "slurm.sh: the node did not become idle within 30 s; sinfo says: $(sinfo -h -o '%t %E' 2>&1)" >&2
    tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    stop
    exit 1
}

case $action in
    start) start ;;
    stop) stop ;;
    *) echo "usage: slurm.sh start|stop DIR" >&2; exit 2 ;;
esac
