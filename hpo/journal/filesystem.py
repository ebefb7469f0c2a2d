"""The filesystem a journal lives on: which mount, whether other nodes can share it, and
how soon this node sees another node's writes there.

Measured on GlusterFS 10.3 (FUSE client, default options, two client mounts of one
volume): another client's append shows up ~1 s late in ``stat``, ``fstat``, buffered
reads, even after reopening the file; a client's *own* append is always fresh. Hence
the read barrier of :class:`hpo.journal.backend.GuardedFileBackend` on such mounts
(:func:`needs_read_barrier`). NFS (close-to-open: ``open`` revalidates), Lustre, GPFS,
BeeGFS and local disks are coherent for the way Optuna reads and need no barrier. What
each part of hpo assumes is written down in docs/shared-filesystems.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph", "fuse.cephfs", "glusterfs",
    "fuse.glusterfs", "panfs", "wekafs", "pvfs2", "orangefs", "cvfs", "afs", "cifs", "smb3",
    "fuse.juicefs", "quobyte", "fuse.quobyte",
})
LOCAL_FILESYSTEMS = frozenset({
    "tmpfs", "ramfs", "devtmpfs", "overlay", "aufs", "fuse-overlayfs", "fuse.fuse-overlayfs",
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "vfat", "exfat",
    "ntfs", "ntfs3", "squashfs", "9p",
})
# Filesystems whose record locks one kernel arbitrates: every process that can open a file
# there runs on this node, so ``F_OFD_SETLK`` needs no proof (``hpo doctor --prove-lock``).
ONE_KERNEL_FILESYSTEMS = frozenset({
    "tmpfs", "ramfs", "overlay", "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs",
})
LOCAL_PATHS = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/scratch-local", "/local", "/localscratch",
               "/lscratch", "/scratch/local", "/tmp_local")
SHARED_HINT = "workers on several nodes need a shared filesystem (nfs, lustre, gpfs, beegfs, cephfs …)"


@dataclass(frozen=True)
class Mount:
    """The mount a directory lives on, from ``/proc/mounts``."""

    directory: str
    mount_point: str
    fstype: str
    device: str

    @property
    def node_local(self) -> bool | None:
        """True for a filesystem only this node sees, False for a shared one, None if unknown."""
        if self.fstype in SHARED_FILESYSTEMS or self.fstype.startswith("nfs"):
            return False
        if self.fstype in LOCAL_FILESYSTEMS:
            return True
        if any(self.directory == p or self.directory.startswith(p + "/") for p in LOCAL_PATHS):
            return True
        return None

    @property
    def one_kernel(self) -> bool:
        """Whether this node's kernel alone arbitrates record locks here (a local disk or
        memory filesystem, by its type: a path under /tmp on NFS does not count)."""
        return self.fstype in ONE_KERNEL_FILESYSTEMS


def _unescape_mount(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def filesystem_of(directory: str | os.PathLike[str], mounts: str = "/proc/mounts") -> Mount | None:
    """The mount holding ``directory``: the longest matching mount point (the last
    one listed wins among equals, as stacked mounts do). None if unreadable."""
    target = os.path.realpath(directory)
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            table = [line.split() for line in f]
    except OSError:
        return None
    best: Mount | None = None
    for fields in table:
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = Mount(target, point, fields[2], _unescape_mount(fields[0]))
    return best


def filesystem_warning(mount: Mount | None) -> str | None:
    """A warning when the journal's directory cannot be shared between nodes."""
    if mount is None or mount.node_local is not True:
        return None
    return (f"{mount.directory} is on {mount.fstype} (mounted at {mount.mount_point}), a node-local "
            f"filesystem: fine for workers on this node only; {SHARED_HINT}")


def visibility_warning(directory: str | os.PathLike[str], stale_seconds: float | None,
                       mounts: str = "/proc/mounts", proc: str = "/proc") -> str | None:
    """A warning when other nodes' writes to ``directory`` reach this node late (see
    :func:`visibility`); None on a coherent filesystem."""
    mount = filesystem_of(directory, mounts)
    if mount is None:
        return None
    client = fuse_client_args(mount.mount_point, proc) if mount.fstype.startswith("fuse.") else None
    return visibility(mount.fstype, mount.mount_point, client).warning(mount.mount_point, mount.fstype,
                                                                       stale_seconds)


LAG_FREE_FUSE_OPTION = "--attribute-timeout=0"


@dataclass(frozen=True)
class Visibility:
    """How soon this client sees another client's writes under a mount."""

    read_barrier: bool  # read until our own last append is seen (see the module docstring)
    lag_seconds: float | None  # for buffered reads; None: unknown
    mode: str  # one line for logs and ``hpo doctor``

    def warning(self, mount_point: str, fstype: str, stale_seconds: float | None) -> str | None:
        """A worker's start-up warning when other nodes' writes may appear late here."""
        if self.lag_seconds is not None and self.lag_seconds == 0:
            return None
        lag = "an unknown time" if self.lag_seconds is None else f"~{self.lag_seconds:g} s"
        now = "" if stale_seconds is None else f"(now {stale_seconds:g} s) "
        return (f"{mount_point} ({fstype}) is {self.mode}: files written on other nodes appear here {lag} late. "
                f"hpo reads the journal behind a barrier, so MAX_TRIALS, queued trials and heartbeats stay exact; "
                f"lock contents, the .jobs file and run directories of other nodes lag. Keep HPO_STALE_SECONDS "
                f"{now}far above the lag; see docs/shared-filesystems.md")


def visibility(fstype: str, mount_point: str, fuse_client_args: Sequence[str] | None) -> Visibility:
    """What a mount of ``fstype`` at ``mount_point`` promises (pure).

    ``fuse_client_args``: the command line of the FUSE client process serving that
    mount, or None when it is not visible here (another PID namespace): GlusterFS
    keeps its attribute timeout (default 1 s) there, not in /proc/self/mountinfo.
    """
    if fstype == "fuse.glusterfs":
        if fuse_client_args is not None and LAG_FREE_FUSE_OPTION in fuse_client_args:
            return Visibility(True, 0.0, "GlusterFS mounted with attribute-timeout=0 (strict)")
        if fuse_client_args is not None:
            return Visibility(True, 1.0, "GlusterFS mounted without attribute-timeout=0 (weakly coherent)")
        return Visibility(True, None, "GlusterFS whose client this process cannot see (weakly coherent "
                                      "unless mounted with attribute-timeout=0)")
    if fstype.startswith("fuse.") and fstype not in ("fuse.fuse-overlayfs",):
        return Visibility(True, None, f"a FUSE filesystem ({fstype}) of unknown coherence")
    return Visibility(False, 0.0, "coherent for hpo")


def fuse_client_args(mount_point: str, proc: str = "/proc") -> list[str] | None:
    """The command line of the process whose last argument is ``mount_point`` (a FUSE
    client such as ``glusterfs``), or None when no visible process serves it."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if len(args) > 1 and args[-1] == mount_point and ("fuse" in args or args[0].endswith("glusterfs")):
            return args
    return None


def needs_read_barrier(path: str) -> bool:
    """Whether reads of the journal at ``path`` may miss other nodes' appends for a while
    (a FUSE filesystem: see :func:`visibility`)."""
    mount = filesystem_of(os.path.dirname(os.path.abspath(path)))
    return mount is not None and visibility(mount.fstype, mount.mount_point, None).read_barrier
