#!/usr/bin/env bash
# Single-node development / CI SLURM cluster for the hpo project.
#
#   bash slurm/dev-cluster/cluster.sh {install|start|stop|status|restart}
#
# install  apt-get install the SLURM/munge/MariaDB packages if missing
# start    write configs, start munged, mariadb, slurmdbd, slurmctld, slurmd
#          (reusing any that already run) and wait until the node is idle and
#          sacct works
# stop     stop the daemons (slurmd, slurmctld, slurmdbd, mariadb, munged)
# status   print daemons + sinfo; exit 0 only when the cluster is healthy
# restart  stop + start
#
# All commands are idempotent. Must run as root (re-execs with sudo if not).
# See README.md next to this file for the cluster layout tests can rely on.
set -euo pipefail

# ----------------------------------------------------------------- settings
CLUSTER_NAME="${HPO_SLURM_CLUSTER:-hpodev}"
PARTITION="${HPO_SLURM_PARTITION:-debug}"
NODE_CPUS="${HPO_SLURM_CPUS:-16}"          # declared, may exceed real cores
NODE_GPUS="${HPO_SLURM_GPUS:-4}"           # fake GPUs (char devices)
NODE_MEM_MB="${HPO_SLURM_MEM_MB:-65536}"   # declared RealMemory (not enforced)
CRED_EXPIRE="${HPO_SLURM_CRED_EXPIRE:-20}" # also the requeue -> eligible delay
START_TIMEOUT="${HPO_SLURM_START_TIMEOUT:-180}"

NODE_NAME="$(hostname -s)"
SLURM_ETC=/etc/slurm
SLURM_CONF="$SLURM_ETC/slurm.conf"
GRES_CONF="$SLURM_ETC/gres.conf"
DBD_CONF="$SLURM_ETC/slurmdbd.conf"
STATE_DIR=/var/lib/slurm-hpo               # fake device nodes live here
DEV_DIR="$STATE_DIR/dev"
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
RUN_DIR=/run/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS="${HPO_SLURM_DB_PASS:-hpodev-slurm}"  # localhost-only dev database
MARKER="# managed by hpo slurm/dev-cluster/cluster.sh"

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

# ------------------------------------------------------------------ helpers
log() { echo "[dev-cluster] $*" >&2; }
die() { echo "[dev-cluster] ERROR: $*" >&2; exit 1; }

need_root() {
  if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      exec sudo -E bash "$0" "$@"
    fi
    die "must run as root"
  fi
}

# true when $1 is a live (non-zombie) process named $2
pid_alive() { # pid name
  local pid=$1 name=$2 stat
  [[ -r /proc/$pid/comm && $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }           # field 3 (state) follows "(comm) "
  [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# pid of a running daemon: from its pid file when that process is alive and
# has the expected name, else the first live process with exactly that name.
daemon_pid() { # name pidfile
  local name=$1 pidfile=$2 pid
  if [[ -s $pidfile ]]; then
    pid=$(tr -dc '0-9' <"$pidfile" || true)
    if [[ -n $pid ]] && pid_alive "$pid" "$name"; then echo "$pid"; return 0; fi
  fi
  for pid in $(pgrep -x "$name" 2>/dev/null || true); do
    if pid_alive "$pid" "$name"; then echo "$pid"; return 0; fi
  done
  return 1
}

munged_pid()    { daemon_pid munged    /run/munge/munged.pid; }
mysqld_pid()    { daemon_pid mariadbd  /run/mysqld/mysqld.pid || daemon_pid mysqld /run/mysqld/mysqld.pid; }
slurmdbd_pid()  { daemon_pid slurmdbd  "$RUN_DIR/slurmdbd.pid"; }
slurmctld_pid() { daemon_pid slurmctld "$RUN_DIR/slurmctld.pid"; }
slurmd_pid()    { daemon_pid slurmd    "$RUN_DIR/slurmd.pid"; }

wait_for() { # timeout_s description cmd...
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 0.5
  done
}

stop_pid() { # name pid
  local name=$1 pid=$2 i comm
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 60; i++)); do
    pid_alive "$pid" "$comm" || return 0
    sleep 0.5
  done
  log "$name (pid $pid) did not exit after 30s, sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
}

packages_missing() {
  local p missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$p")
  done
  echo "${missing[@]:-}"
}

# install file content from stdin to $1 (mode $2, owner $3); returns 0 when
# the file changed.
install_file() { # path mode owner
  local path=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"; chmod "$mode" "$path"; chown "$owner" "$path"
    return 1
  fi
  if [[ -f $path ]] && ! grep -qF "$MARKER" "$path" && [[ ${HPO_SLURM_FORCE:-0} != 1 ]]; then
    rm -f "$tmp"
    die "$path exists and was not written by this script; refusing to overwrite (set HPO_SLURM_FORCE=1 to replace it; a .bak copy is kept)"
  fi
  [[ -f $path ]] && ! grep -qF "$MARKER" "$path" && cp -p "$path" "$path.bak.$(date +%s)"
  install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path"
  rm -f "$tmp"
  log "wrote $path"
  return 0
}

# ------------------------------------------------------------------ configs
write_slurm_conf() {
  local last=$((NODE_GPUS - 1)) gpu_files
  if ((NODE_GPUS == 1)); then gpu_files="$DEV_DIR/nvidia0"; else gpu_files="$DEV_DIR/nvidia[0-$last]"; fi
  install_file "$SLURM_CONF" 644 root:root <<EOF
$MARKER
# Single-node dev/CI cluster. Regenerated by 'cluster.sh start'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE_NAME(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it is eligible.
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
JobRequeue=1

SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# Timers
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0

# Scheduling
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=5,sched_min_interval=0,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu

# Accounting
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none

# Node / partition
NodeName=$NODE_NAME NodeAddr=127.0.0.1 CPUs=$NODE_CPUS Sockets=1 CoresPerSocket=$NODE_CPUS ThreadsPerCore=1 RealMemory=$NODE_MEM_MB Gres=gpu:$NODE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF
  local rc1=$?
  install_file "$GRES_CONF" 644 root:root <<EOF
$MARKER
# Fake GPUs: character devices (same major/minor as /dev/null).
AutoDetect=off
NodeName=$NODE_NAME Name=gpu File=$gpu_files
EOF
  local rc2=$?
  ((rc1 == 0 || rc2 == 0))
}

write_dbd_conf() {
  install_file "$DBD_CONF" 600 root:root <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF
}

prepare_dirs() {
  mkdir -p "$SLURM_ETC" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL" "$RUN_DIR" "$DEV_DIR" /var/log/slurm
  chmod 755 "$CTLD_SPOOL" "$SLURMD_SPOOL" "$RUN_DIR" "$LOG_DIR"
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge 2>/dev/null || true
  install -d -o mysql -g mysql -m 755 /run/mysqld
  install -d -o mysql -g adm -m 2750 /var/log/mysql
  local i
  for ((i = 0; i < NODE_GPUS; i++)); do
    if [[ ! -c $DEV_DIR/nvidia$i ]]; then
      rm -f "$DEV_DIR/nvidia$i"
      mknod -m 666 "$DEV_DIR/nvidia$i" c 1 3
    fi
  done
}

# ------------------------------------------------------------------ daemons
start_munge() {
  if munged_pid >/dev/null; then
    log "munged already running (pid $(munged_pid))"
  else
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing (reinstall munge or run mungekey)"
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force </dev/null >/dev/null 2>&1 ||
      die "munged failed to start (see /var/log/munge/munged.log)"
  fi
  wait_for 20 munge bash -c 'munge -n | unmunge' ||
    die "munge does not work (see /var/log/munge/munged.log)"
}

mysql_ok() { mysqladmin --protocol=socket -uroot ping >/dev/null 2>&1; }

start_mysql() {
  if mysql_ok; then
    log "mariadb already running"
  else
    if [[ ! -d /var/lib/mysql/mysql ]]; then
      log "initialising mariadb data directory"
      mysql_install_db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    if mysqld_pid >/dev/null; then
      log "mariadb process exists but does not answer yet; waiting"
    else
      log "starting mariadb (mysqld_safe)"
      rm -f /run/mysqld/mysqld.sock /run/mysqld/mysqld.pid
      setsid nohup mysqld_safe --skip-syslog --log-error=/var/log/mysql/error.log \
        --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
        </dev/null >/dev/null 2>&1 &
    fi
    wait_for 60 mariadb mysql_ok || die "mariadb did not come up within 60s (see /var/log/mysql/error.log)"
  fi
  mysql -uroot --protocol=socket <<EOF || die "could not create the $DB_NAME database/user"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

dbd_ok() { sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }

start_daemon() { # name restart_flag: (re)start a SLURM daemon, reusing a running one
  local name=$1 pid
  if pid=$("${name}_pid"); then
    if [[ $2 == 1 ]]; then stop_pid "$name" "$pid"; else log "$name already running (pid $pid)"; fi
  fi
  if ! "${name}_pid" >/dev/null; then
    log "starting $name"
    "$name" </dev/null >/dev/null 2>&1 || die "$name failed to start (see $LOG_DIR/$name.log)"
  fi
}

start_slurmdbd() { # restart_flag
  start_daemon slurmdbd "$1"
  wait_for 60 slurmdbd dbd_ok || die "slurmdbd not answering after 60s (see $LOG_DIR/slurmdbd.log)"
  if ! sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    log "registering cluster $CLUSTER_NAME in slurmdbd"
    local out
    out=$(sacctmgr -i add cluster "$CLUSTER_NAME" 2>&1) ||
      grep -qi 'already exists' <<<"$out" || die "sacctmgr add cluster failed: $out"
    CLUSTER_ADDED=1
  fi
}

ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurmctld() { # restart_flag
  start_daemon slurmctld "$1"
  wait_for 60 slurmctld ctld_ok || die "slurmctld not answering after 60s (see $LOG_DIR/slurmctld.log)"
}

start_slurmd() { # restart_flag
  start_daemon slurmd "$1"
}

node_state() { sinfo -h -n "$NODE_NAME" -o %T 2>/dev/null | head -n1; }
node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }
node_idle() { [[ $(node_state) == idle ]]; }
sacct_ok() {
  local err
  err=$(sacct -n -X -S now-1minutes -o jobid 2>&1 >/dev/null) && [[ -z $err ]]
}

wait_healthy() {
  local deadline=$((SECONDS + START_TIMEOUT)) resumed=0 state
  log "waiting (up to ${START_TIMEOUT}s) for node $NODE_NAME to be idle and sacct to work"
  while :; do
    state=$(node_state || true)
    # jobs already running (restart with work in flight) count as healthy too
    if [[ $state =~ ^(idle|mixed|allocated)$ ]] && sacct_ok; then
      return 0
    fi
    if [[ $resumed == 0 && $state =~ (down|drain|fail) ]] && slurmd_pid >/dev/null; then
      log "node is '$state'; resuming it"
      scontrol update nodename="$NODE_NAME" state=resume >/dev/null 2>&1 || true
      resumed=1
    fi
    if ((SECONDS >= deadline)); then
      status_report >&2 || true
      die "cluster not healthy after ${START_TIMEOUT}s (node state '${state:-unknown}'); logs in $LOG_DIR"
    fi
    sleep 0.5
  done
}

# ------------------------------------------------------------------ commands
cmd_install() {
  local missing
  missing=$(packages_missing)
  if [[ -z ${missing// /} ]]; then
    log "packages already installed"
    return 0
  fi
  log "installing: $missing"
  apt-get update
  # don't let package postinst scripts try to start services in a container
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}"
  missing=$(packages_missing)
  [[ -z ${missing// /} ]] || die "packages still missing after apt-get: $missing"
}

cmd_start() {
  local t0=$SECONDS missing
  missing=$(packages_missing)
  [[ -z ${missing// /} ]] || die "packages missing ($missing); run '$0 install' first"
  prepare_dirs
  local slurm_changed=0 dbd_changed=0
  write_slurm_conf && slurm_changed=1 || true
  write_dbd_conf && dbd_changed=1 || true
  CLUSTER_ADDED=0
  start_munge
  start_mysql
  start_slurmdbd "$dbd_changed"
  # slurmctld must be (re)started after the cluster is registered in slurmdbd
  local ctld_restart=$slurm_changed
  [[ $CLUSTER_ADDED == 1 ]] && ctld_restart=1
  start_slurmctld "$ctld_restart"
  start_slurmd "$slurm_changed"
  wait_healthy
  log "cluster $CLUSTER_NAME healthy after $((SECONDS - t0))s"
  sinfo >&2
}

cmd_stop() {
  local pid
  if pid=$(slurmd_pid); then stop_pid slurmd "$pid"; fi
  if pid=$(slurmctld_pid); then stop_pid slurmctld "$pid"; fi
  if pid=$(slurmdbd_pid); then stop_pid slurmdbd "$pid"; fi
  if mysql_ok; then
    log "stopping mariadb"
    mysqladmin --protocol=socket -uroot shutdown >/dev/null 2>&1 || true
  fi
  local i
  for ((i = 0; i < 60; i++)); do mysqld_pid >/dev/null || break; sleep 0.5; done
  if pid=$(mysqld_pid); then stop_pid mariadbd "$pid"; fi
  if pid=$(munged_pid); then stop_pid munged "$pid"; fi
  log "stopped"
}

status_report() {
  local ok=0 pid name
  for name in munged mysqld slurmdbd slurmctld slurmd; do
    if pid=$("${name}_pid"); then
      printf '%-10s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-10s NOT running\n' "$name"; ok=1
    fi
  done
  if ctld_ok; then
    sinfo -o '%P %a %l %D %T %N %c %m %G' || ok=1
    node_usable || { echo "node $NODE_NAME state: '$(node_state)' (not usable)"; ok=1; }
  else
    echo "slurmctld not answering (scontrol ping)"; ok=1
  fi
  if sacct_ok; then echo "sacct: ok"; else echo "sacct: NOT working"; ok=1; fi
  if ((ok == 0)); then echo "status: healthy"; else echo "status: UNHEALTHY"; fi
  return $ok
}

usage() { echo "usage: $0 {install|start|stop|status|restart}" >&2; exit 2; }

main() {
  [[ $# -eq 1 ]] || usage
  case $1 in
    install) need_root "$@"; cmd_install ;;
    start) need_root "$@"; cmd_start ;;
    stop) need_root "$@"; cmd_stop ;;
    restart) need_root "$@"; cmd_stop; cmd_start ;;
    status) status_report ;;
    *) usage ;;
  esac
}

main "$@"
