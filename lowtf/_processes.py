"""Who a process is, and whether a recorded one still runs: read from ``/proc``.

What :class:`lowtf.train.rundir.RunLock` and a sweep's claims record as their
owner, and how a rerun tells a dead owner from a live one after a restart
(a reused pid, another boot, another pid namespace). Plain ``os`` calls on
purpose: ``/proc`` is never on a TensorFlow file system, and this module
touches no model directory (which goes through ``tf.io.gfile``).
"""

from __future__ import annotations

import errno
import os
import socket

# owner_state's answers.
SELF, RUNNING, GONE = "self", "running", "gone"
# A found process whose state is one of these has ended (zombie, dead).
_ENDED_STATES = ("Z", "X", "x")
# this_process(), read once per process.
_ME: dict | None = None


def this_process() -> dict:
    """This process as the owner of a lock or a claim.

    Returns ``{"host", "pid", "start", "boot", "pidns"}``: the host name, the
    pid, the process's start time (clock ticks after boot, field 22 of
    ``/proc/self/stat``), the kernel's boot id and the inode of the pid
    namespace. A pid names a process only while it runs: after a restart (of a
    container, the machine or a pid namespace) another process, or this one,
    may carry a dead owner's pid; the start time and the boot id tell them
    apart, and the namespace says whether the pid means the same here.
    Fields that cannot be read (no ``/proc``) are None.
    """
    global _ME
    me = _ME
    if me is None or me["pid"] != os.getpid():  # once per process (again after a fork)
        found = _proc_stat("self")
        me = _ME = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": found[1] if found else None,
            "boot": _read("/proc/sys/kernel/random/boot_id"),
            "pidns": _namespace("self"),
        }
    return dict(me)


def owner_state(owner) -> str:
    """Whether ``owner`` (a :func:`this_process` record) is this process, runs, or is gone.

    Returns :data:`SELF`, :data:`RUNNING` or :data:`GONE`. A process of
    another host cannot be checked from here and counts as running. On this
    host, an owner of another boot is gone; else it runs if a process with its
    pid namespace, pid and start time is found. A namespace that ``/proc``
    does not show here (a restarted container's, an ended ``unshare``'s)
    counts as gone: processes sharing one model directory or study from
    containers of one machine need host names of their own (Docker's
    default). A record of an older lowtf (host and pid only) is checked by
    its pid alone; a record that is not a dict with an integer pid is gone.
    """
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return GONE
    me = this_process()
    if owner.get("host") != me["host"]:
        return RUNNING
    if all(owner.get(k) == me[k] for k in me):
        return SELF
    if owner.get("boot") and me["boot"] and owner["boot"] != me["boot"]:
        return GONE
    if owner.get("start") is None or me["start"] is None:
        if owner["pid"] == me["pid"]:
            # This process never writes a record without a start time where
            # it can read one: such a record with its pid is a dead process's.
            return GONE if me["start"] is not None else SELF
        return RUNNING if _pid_exists(owner["pid"]) else GONE
    if owner.get("pidns") == me["pidns"] and _proc_is_ours():
        found = _proc_stat(owner["pid"])
        alive = found is not None and found[0] not in _ENDED_STATES
        return RUNNING if alive and found[1] == owner["start"] else GONE
    return RUNNING if _find(owner) else GONE


def _read(path: str) -> str | None:
    try:
        with open(path) as f:  # /proc: never a TensorFlow file system
            return f.read().strip()
    except OSError:
        return None


def _proc_stat(pid) -> tuple[str, int] | None:
    """``(state, start time)`` of ``/proc/<pid>/stat``, or None if there is none."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _namespace(pid) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _ns_pids(pid) -> list[int]:
    """The pid of ``pid`` in each of its namespaces, ``/proc``'s first, its own last."""
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("NSpid:"):
            return [int(p) for p in line.split()[1:]]
    return []


def _proc_is_ours() -> bool:
    """Whether ``/proc`` numbers processes as this pid namespace does.

    Not after ``unshare --pid --fork`` without ``--mount-proc``: ``/proc``
    is then the parent namespace's, and ``/proc/1`` is not our pid 1.
    """
    return len(_ns_pids("self")) == 1


def _find(owner: dict) -> bool:
    """Whether ``/proc`` shows a live process of ``owner``'s namespace, pid and start."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # nothing can be checked: not taken for dead
    for entry in entries:
        if not entry.isdigit():
            continue
        found = _proc_stat(entry)
        if found is None or found[1] != owner["start"] or found[0] in _ENDED_STATES:
            continue
        pids = _ns_pids(entry)
        if pids and pids[-1] != owner["pid"]:
            continue
        namespace = _namespace(entry)
        # Unreadable (another user's process): the start and pid match.
        if namespace is None or namespace == owner.get("pidns"):
            return True
    return False


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno != errno.ESRCH
    return True
