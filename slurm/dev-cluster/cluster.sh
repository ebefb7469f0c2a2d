#!/usr/bin/env bash
# Development / CI SLURM cluster for the hpo project: one node, or N nodes on
# this host sharing a GlusterFS volume.
#
#   bash slurm/dev-cluster/cluster.sh {install|start|stop|status|restart} [--nodes N] [--cpu-bind]
#
# install  apt-get install the SLURM/munge/MariaDB/GlusterFS packages if missing
# start    write configs, start munged, mariadb, slurmdbd, slurmctld, slurmd
#          (reusing any that already run) and wait until the node is idle and
#          sacct works. --nodes N (N>1): N slurmd nodes n1..nN, each in its own
#          UTS+PID+mount namespace with its own GlusterFS client mounts at
#          /shared (default options) and /shared-strict (strict coherence).
#          --cpu-bind: bind every task to its own cores (TaskPlugin=task/affinity,
#          TaskPluginParam=Cores), each node declaring this host's real CPUs
#          (slurmd -C) instead of 16; without it tasks are not bound (task/none).
# stop     stop the daemons (slurmd(s), slurmctld, slurmdbd, mariadb, munged),
#          unmount and stop the GlusterFS volumes this script started
# status   print daemons + sinfo + shared folders; exit 0 only when healthy
# restart  stop + start (keeps the node count and --cpu-bind unless --nodes,
#          --cpu-bind or --no-cpu-bind is given)
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
GLUSTER_PACKAGES=(glusterfs-server glusterfs-client)  # only --nodes N > 1 needs them

# Multi-node (--nodes N, N>1). Each node's state: the pid of the `unshare` that
# holds its namespaces, in $RUN_DIR/hpo-node-<name>.pid (slurmd's own pid file
# holds its pid inside the node's PID namespace, useless from here).
NODES_FILE="$STATE_DIR/nodes"              # node count of the last start
SHARED_DIR="${HPO_SHARED_DIR:-/shared}"               # default GlusterFS options
STRICT_DIR="${HPO_SHARED_STRICT_DIR:-/shared-strict}" # strict coherence
GLUSTER_DIR="$STATE_DIR/gluster"           # bricks and per-client mount points
VOLUME="${HPO_GLUSTER_VOLUME:-hpodev}"     # and $VOLUME-strict
GLUSTERD_MARK="$STATE_DIR/glusterd.started"  # pid of a glusterd this script started
STRICT_MOUNT_OPTS=attribute-timeout=0,entry-timeout=0
NODES=1                                    # set by main from --nodes or $NODES_FILE
# CPU binding (--cpu-bind): task/affinity binds tasks to real CPU ids, so each node then
# declares this host's real layout; the 16 declared CPUs of the default are ids that do
# not exist here (slurmd wraps them modulo the real count, and its auto binding then
# gives every task of a step the step's whole mask, or fails "Unable to layout tasks").
CPU_BIND_FILE="$STATE_DIR/cpu-bind"        # 1 when the last start bound tasks to cores
CPU_BIND=0                                 # set by main from --cpu-bind or $CPU_BIND_FILE
NODE_LAYOUT=                               # a node's CPUs in slurm.conf, set by write_slurm_conf

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

packages_missing() { # [package...]: default all of them
  local p missing=()
  (($#)) || set -- "${PACKAGES[@]}" "${GLUSTER_PACKAGES[@]}"
  for p in "$@"; do
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
# The slurmd lines and node list: one node named after this host, or n[1-N]
# with a port each (they all listen on 127.0.0.1) and per-node slurmd files.
node_conf() {
  if ((NODES == 1)); then
    cat <<EOF
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmdPort=6818
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$NODE_NAME NodeAddr=127.0.0.1 $NODE_LAYOUT RealMemory=$NODE_MEM_MB Gres=gpu:$NODE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF
  else
    cat <<EOF
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmdSpoolDir=$SLURMD_SPOOL/%n
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
NodeName=$(node_list) NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001-$((17000 + NODES)) $NODE_LAYOUT RealMemory=$NODE_MEM_MB Gres=gpu:$NODE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$(node_list) Default=YES MaxTime=INFINITE State=UP
EOF
  fi
}

node_names() { if ((NODES == 1)); then echo "$NODE_NAME"; else seq -f 'n%g' 1 "$NODES"; fi; }
node_list() { if ((NODES == 1)); then echo "$NODE_NAME"; else echo "n[1-$NODES]"; fi; }

# A node's CPUs: 16 declared (more than this host has: SlurmdParameters=config_overrides),
# or with --cpu-bind this host's real layout as slurmd detects it, which binding needs.
node_layout() {
  if ((CPU_BIND == 0)); then
    echo "CPUs=$NODE_CPUS Sockets=1 CoresPerSocket=$NODE_CPUS ThreadsPerCore=1"
    return 0
  fi
  local hw fields='(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+'
  hw=$(slurmd -C 2>/dev/null | head -n1 | grep -oE "$fields" | paste -sd' ') || true
  [[ $hw == *CPUs=* && $hw == *CoresPerSocket=* ]] || return 1
  echo "$hw"
}

task_conf() {
  if ((CPU_BIND)); then
    # Cores: every task bound to the cores of its --cpus-per-task (one without it), as a
    # cluster that binds tasks does: a launcher that forgets srun --cpus-per-task shows.
    printf 'TaskPlugin=task/affinity\nTaskPluginParam=Cores\n'
  else
    echo "TaskPlugin=task/none"
  fi
}

write_slurm_conf() {
  local last=$((NODE_GPUS - 1)) gpu_files
  NODE_LAYOUT=$(node_layout) || die "--cpu-bind: 'slurmd -C' did not report this host's CPUs"
  if ((NODE_GPUS == 1)); then gpu_files="$DEV_DIR/nvidia0"; else gpu_files="$DEV_DIR/nvidia[0-$last]"; fi
  install_file "$SLURM_CONF" 644 root:root <<EOF
$MARKER
# Dev/CI cluster ($NODES node(s)$( ((CPU_BIND)) && echo ", tasks bound to cores")). Regenerated by 'cluster.sh start'.
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
$(task_conf)
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
JobRequeue=1

SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmctldPort=6817
StateSaveLocation=$CTLD_SPOOL
SlurmctldLogFile=$LOG_DIR/slurmctld.log
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

# Node(s) / partition
$(node_conf)
EOF
  local rc1=$?
  install_file "$GRES_CONF" 644 root:root <<EOF
$MARKER
# Fake GPUs: character devices (same major/minor as /dev/null).
AutoDetect=off
NodeName=$(node_list) Name=gpu File=$gpu_files
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

# ------------------------------------------------------- GlusterFS (N > 1)
gl() { gluster --mode=script "$@"; }
glusterd_ok() { gl volume list >/dev/null 2>&1; }
volume_exists() { gl volume info "$1" >/dev/null 2>&1; }
volume_started() { gl volume info "$1" 2>/dev/null | grep -q '^Status: Started'; }
is_mounted() { findmnt -rn -M "$1" >/dev/null 2>&1; }
our_volumes() { echo "$VOLUME" "$VOLUME-strict"; }

# Other helpers/users may run their own volumes on this glusterd: reuse a
# running one, and remember only a glusterd we started ourselves.
start_glusterd() {
  if glusterd_ok; then log "glusterd already running"; return 0; fi
  log "starting glusterd"
  glusterd -p /run/glusterd.pid </dev/null >/dev/null 2>&1 || die "glusterd failed to start (see /var/log/glusterfs/glusterd.log)"
  wait_for 30 glusterd glusterd_ok || die "glusterd not answering after 30s (see /var/log/glusterfs/glusterd.log)"
  daemon_pid glusterd /run/glusterd.pid >"$GLUSTERD_MARK" || true
}

ensure_volume() { # volume brick_dir [option value]...
  local vol=$1 brick=$2 out; shift 2
  if ! volume_exists "$vol"; then
    log "creating GlusterFS volume $vol (brick $(hostname):$brick)"
    mkdir -p "$brick"
    # the brick host must be this host's name (glusterd refuses localhost);
    # 'force' because the brick sits on the root filesystem
    out=$(gl volume create "$vol" "$(hostname):$brick" force 2>&1) || die "volume create $vol: $out"
    while (($#)); do
      out=$(gl volume set "$vol" "$1" "$2" 2>&1) || die "volume set $vol $1 $2: $out"
      shift 2
    done
  fi
  if ! volume_started "$vol"; then
    out=$(gl volume start "$vol" 2>&1) || die "volume start $vol: $out"
  fi
}

mount_client() { # volume mountpoint [mount options]: one FUSE client process
  local vol=$1 dir=$2 opts=${3:-} out
  if is_mounted "$dir" && ! stat "$dir" >/dev/null 2>&1; then
    # its client process was killed (a session that ended, a crash): the mount answers
    # "Transport endpoint is not connected" and must go before a new client can mount
    log "dropping the dead mount at $dir"
    umount -l "$dir" 2>/dev/null || true
  fi
  mkdir -p "$dir"
  is_mounted "$dir" && return 0
  out=$(mount -t glusterfs ${opts:+-o "$opts"} "$(hostname):/$vol" "$dir" 2>&1) ||
    die "mount $vol at $dir: $out"
}

# Mount points of every client: the submit host's at the shared paths, each
# node's under $GLUSTER_DIR/mnt/<node>/ (bound at the shared paths inside it).
client_mounts() { # prints "volume mountpoint options" lines
  local node
  echo "$VOLUME $SHARED_DIR -"
  echo "$VOLUME-strict $STRICT_DIR $STRICT_MOUNT_OPTS"
  for node in $(node_names); do
    echo "$VOLUME $GLUSTER_DIR/mnt/$node/default -"
    echo "$VOLUME-strict $GLUSTER_DIR/mnt/$node/strict $STRICT_MOUNT_OPTS"
  done
}

start_gluster() {
  local vol dir opts
  start_glusterd
  ensure_volume "$VOLUME" "$GLUSTER_DIR/brick/default"
  # strict coherence: no metadata/small-file caches on the server side, no
  # attribute/entry caching in the FUSE client (mount options below)
  ensure_volume "$VOLUME-strict" "$GLUSTER_DIR/brick/strict" \
    performance.stat-prefetch off performance.quick-read off
  while read -r vol dir opts; do
    [[ $opts == - ]] && opts=
    mount_client "$vol" "$dir" "$opts"
  done < <(client_mounts)
  chmod 1777 "$SHARED_DIR" "$STRICT_DIR"
}

stop_gluster() {
  local vol dir opts pid other
  while read -r vol dir opts; do
    if is_mounted "$dir"; then
      log "unmounting $dir"
      umount "$dir" 2>/dev/null || umount -l "$dir" || true
    fi
  done < <(client_mounts)
  glusterd_ok || return 0
  for vol in $(our_volumes); do
    if volume_started "$vol"; then log "stopping volume $vol"; gl volume stop "$vol" >/dev/null || true; fi
  done
  if [[ -s $GLUSTERD_MARK ]] && pid=$(tr -dc '0-9' <"$GLUSTERD_MARK") && pid_alive "$pid" glusterd; then
    for other in $(gl volume list 2>/dev/null); do
      [[ " $(our_volumes) " == *" $other "* ]] && continue
      if volume_started "$other"; then log "glusterd serves volume $other too: leaving it running"; return 0; fi
    done
    stop_pid glusterd "$pid"
  fi
  rm -f "$GLUSTERD_MARK"
}

# ------------------------------------------------------- nodes (N > 1)
# pid 1 of a node: its own hostname, its own client mounts bound at the shared
# paths, then slurmd in the foreground. Bash as pid 1 reaps orphaned job
# processes; when it exits the kernel kills everything left in the node.
NODE_INIT='
hostname "$1"
mount --bind "$2" "$3" && mount --bind "$4" "$5" || exit 1
slurmd -D -N "$1" &
slurmd=$!
trap "kill -TERM $slurmd" TERM INT
while kill -0 "$slurmd" 2>/dev/null; do wait "$slurmd"; done
'

node_pidfile() { echo "$RUN_DIR/hpo-node-$1.pid"; }

node_init_pid() { # node: host pid of the node's pid 1 (child of its unshare)
  local upid init
  [[ -s $(node_pidfile "$1") ]] || return 1
  upid=$(tr -dc '0-9' <"$(node_pidfile "$1")")
  [[ -n $upid ]] && pid_alive "$upid" unshare || return 1
  init=$(pgrep -P "$upid" | head -n1)
  [[ -n $init ]] && echo "$init"
}

node_slurmd_pid() { # node: host pid of the node's slurmd
  local init pid
  init=$(node_init_pid "$1") || return 1
  pid=$(pgrep -x -P "$init" slurmd | head -n1)
  [[ -n $pid ]] && echo "$pid"
}

start_node() { # node
  local node=$1
  mkdir -p "$SLURMD_SPOOL/$node"
  log "starting node $node (slurmd in its own UTS/PID/mount namespace)"
  setsid unshare --uts --pid --fork --mount-proc --propagation private \
    bash -c "$NODE_INIT" "node-$node" "$node" \
    "$GLUSTER_DIR/mnt/$node/default" "$SHARED_DIR" "$GLUSTER_DIR/mnt/$node/strict" "$STRICT_DIR" \
    </dev/null >>"$LOG_DIR/node-$node.log" 2>&1 &
  echo $! >"$(node_pidfile "$node")"
}

stop_node() { # node
  local node=$1 init upid i
  init=$(node_init_pid "$node") || { rm -f "$(node_pidfile "$node")"; return 0; }
  upid=$(tr -dc '0-9' <"$(node_pidfile "$node")")
  log "stopping node $node (pid 1 = $init)"
  kill -TERM "$init" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do pid_alive "$upid" unshare || break; sleep 0.5; done
  if pid_alive "$upid" unshare; then
    log "node $node did not stop after 30s, sending KILL"
    kill -KILL "$init" 2>/dev/null || true
  fi
  rm -f "$(node_pidfile "$node")"
}

start_nodes() { # restart_flag
  local node
  for node in $(node_names); do
    if node_slurmd_pid "$node" >/dev/null; then
      if [[ $1 == 1 ]]; then stop_node "$node"; else log "node $node already running"; continue; fi
    fi
    # a node whose slurmd died (or was killed) is started afresh
    node_init_pid "$node" >/dev/null && stop_node "$node"
    start_node "$node"
  done
}

stop_slurmds() {
  local node pid
  if ((NODES == 1)); then
    if pid=$(slurmd_pid); then stop_pid slurmd "$pid"; fi
  else
    for node in $(node_names); do stop_node "$node"; done
  fi
}

# ------------------------------------------------------- health
node_states() { sinfo -h -N -n "$(node_list)" -o '%N %T' 2>/dev/null; }
# every node is in a state that runs jobs (jobs in flight count as healthy)
nodes_usable() {
  local states
  states=$(node_states) || return 1
  [[ $(wc -l <<<"$states") -eq $NODES ]] || return 1
  ! grep -qvE ' (idle|mixed|allocated|completing)$' <<<"$states"
}
sacct_ok() {
  local err
  err=$(sacct -n -X -S now-1minutes -o jobid 2>&1 >/dev/null) && [[ -z $err ]]
}

wait_healthy() {
  local deadline=$((SECONDS + START_TIMEOUT)) resumed=0 down
  log "waiting (up to ${START_TIMEOUT}s) for node(s) $(node_list) to be usable and sacct to work"
  while :; do
    if nodes_usable && sacct_ok; then
      return 0
    fi
    down=$(node_states | awk '$2 ~ /down|drain|fail/ {print $1}' | paste -sd, -)
    if [[ $resumed == 0 && -n $down ]]; then
      log "node(s) $down down; resuming"
      scontrol update nodename="$down" state=resume >/dev/null 2>&1 || true
      resumed=1
    fi
    if ((SECONDS >= deadline)); then
      status_report >&2 || true
      die "cluster not healthy after ${START_TIMEOUT}s (nodes: $(node_states | paste -sd, -)); logs in $LOG_DIR"
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
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}" "${GLUSTER_PACKAGES[@]}"
  missing=$(packages_missing)
  [[ -z ${missing// /} ]] || die "packages still missing after apt-get: $missing"
}

cmd_start() {
  local t0=$SECONDS missing previous
  if ((NODES == 1)); then missing=$(packages_missing "${PACKAGES[@]}"); else missing=$(packages_missing); fi
  [[ -z ${missing// /} ]] || die "packages missing ($missing); run '$0 install' first"
  prepare_dirs
  previous=$(cat "$NODES_FILE" 2>/dev/null || echo 1)
  if [[ $previous != "$NODES" ]]; then
    # the node layout changes: the old layout's slurmd(s) and client mounts go first
    local wanted=$NODES; NODES=$previous; stop_slurmds; ((NODES == 1)) || stop_gluster; NODES=$wanted
  fi
  echo "$NODES" >"$NODES_FILE"
  echo "$CPU_BIND" >"$CPU_BIND_FILE"
  ((NODES == 1)) || start_gluster
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
  if ((NODES == 1)); then start_slurmd "$slurm_changed"; else start_nodes "$slurm_changed"; fi
  wait_healthy
  log "cluster $CLUSTER_NAME ($NODES node(s)) healthy after $((SECONDS - t0))s"
  sinfo >&2
}

cmd_stop() {
  local pid
  stop_slurmds
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
  ((NODES == 1)) || stop_gluster
  log "stopped"
}

status_report() {
  local ok=0 pid name node state
  for name in munged mysqld slurmdbd slurmctld; do
    if pid=$("${name}_pid"); then
      printf '%-10s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-10s NOT running\n' "$name"; ok=1
    fi
  done
  if ((NODES == 1)); then
    if pid=$(slurmd_pid); then printf '%-10s running (pid %s)\n' slurmd "$pid"
    else printf '%-10s NOT running\n' slurmd; ok=1; fi
  else
    for node in $(node_names); do
      if pid=$(node_slurmd_pid "$node"); then
        printf '%-10s running (node %s, slurmd pid %s, namespace pid 1 = %s)\n' slurmd "$node" "$pid" "$(node_init_pid "$node")"
      else
        printf '%-10s NOT running (node %s)\n' slurmd "$node"; ok=1
      fi
    done
  fi
  if ctld_ok; then
    sinfo -o '%P %a %l %D %T %N %c %m %G' || ok=1
    nodes_usable || { echo "node state(s): $(node_states | paste -sd, -) (not all usable)"; ok=1; }
  else
    echo "slurmctld not answering (scontrol ping)"; ok=1
  fi
  if sacct_ok; then echo "sacct: ok"; else echo "sacct: NOT working"; ok=1; fi
  if ((CPU_BIND)); then
    echo "cpu binding: on (task/affinity, TaskPluginParam=Cores; each node declares this host's CPUs)"
  else
    echo "cpu binding: off (task/none; each node declares $NODE_CPUS CPUs)"
  fi
  if ((NODES > 1)); then
    local vol dir opts
    while read -r vol dir opts; do
      if is_mounted "$dir"; then state=mounted; else state="NOT mounted"; ok=1; fi
      [[ $dir == "$SHARED_DIR" ]] && echo "shared: $SHARED_DIR (volume $VOLUME, default GlusterFS options, ~1 s cross-client visibility) $state"
      [[ $dir == "$STRICT_DIR" ]] && echo "shared: $STRICT_DIR (volume $VOLUME-strict, strict: stat-prefetch/quick-read off, $STRICT_MOUNT_OPTS) $state"
      [[ $dir == "$SHARED_DIR" || $dir == "$STRICT_DIR" ]] || [[ $state == mounted ]] || echo "client mount $dir: $state"
    done < <(client_mounts)
  fi
  if ((ok == 0)); then echo "status: healthy"; else echo "status: UNHEALTHY"; fi
  return $ok
}

usage() {
  echo "usage: $0 {install|start|stop|status|restart} [--nodes N] [--cpu-bind|--no-cpu-bind]" >&2
  echo "       (N = 1..64; start's default: 1 node, tasks not bound; restart keeps the last start's)" >&2
  exit 2
}
bind_flag() { if ((CPU_BIND)); then echo --cpu-bind; else echo --no-cpu-bind; fi; }

main() {
  (($# >= 1)) || usage
  local cmd=$1; shift
  NODES=$(cat "$NODES_FILE" 2>/dev/null || echo 1)
  CPU_BIND=$(cat "$CPU_BIND_FILE" 2>/dev/null || echo 0)
  [[ $CPU_BIND == 1 ]] || CPU_BIND=0
  # 'start' without --nodes or --cpu-bind behaves as it always did: one node, no binding
  [[ $cmd == start ]] && NODES=1 && CPU_BIND=0
  while (($#)); do
    case $1 in
      --nodes) (($# >= 2)) || usage; NODES=$2; shift 2 ;;
      --nodes=*) NODES=${1#--nodes=}; shift ;;
      --cpu-bind) CPU_BIND=1; shift ;;
      --no-cpu-bind) CPU_BIND=0; shift ;;
      *) usage ;;
    esac
  done
  if ! [[ $NODES =~ ^[0-9]+$ ]] || ((NODES < 1 || NODES > 64)); then
    echo "[dev-cluster] ERROR: --nodes: '$NODES' is not valid; give a whole number 1..64" >&2; exit 2
  fi
  case $cmd in
    install) need_root "$cmd" "$@"; cmd_install ;;
    start) need_root "$cmd" --nodes "$NODES" "$(bind_flag)"; cmd_start ;;
    stop) need_root "$cmd"; cmd_stop ;;
    restart)
      need_root "$cmd" --nodes "$NODES" "$(bind_flag)"
      local wanted=$NODES
      NODES=$(cat "$NODES_FILE" 2>/dev/null || echo 1); cmd_stop
      NODES=$wanted; cmd_start ;;
    status) status_report ;;
    *) usage ;;
  esac
}

main "$@"
