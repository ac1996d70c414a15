"""One workdir, one writer: the run lock ``<workdir>/.curaclip.lock`` (docs/architecture.md, "One workdir, one
writer").

A run holds the lock for its whole life; a second run on the same workdir finds it held and stops with a message
naming the holder (or waits, ``wait=True``). The lock is a small JSON record (host, pid, run id, started, renewed,
lease seconds, and what tells a reused pid apart) that its holder renews every ``lease / 3`` seconds from a daemon
thread. Readers (``curaclip stats``) never take it.

How a lock whose holder died is told apart from a live one, in order:

1. **A local workdir**: the holder also keeps an ``flock`` on the record's file for the run's life. The kernel
   drops it when the process ends however it ends, so a live holder on this host is seen at once (the flock is
   busy) and a killed one leaves only a record, which the next run takes over at once. flock rather than
   ``O_CREAT|O_EXCL``: with O_EXCL a dead holder's file stays, and two runs that both see it stale and replace it
   can both believe they won; under the flock, checking the old record and writing the new one is one critical
   section. ``unlock`` unlinks the file; every taker checks, once flocked, that its file is still the one at the
   path, so a file unlinked meanwhile is never mistaken for the lock.
2. **The same host, any workdir**: a record whose pid is gone (``os.kill(pid, 0)`` raises ProcessLookupError), or
   is now another process (its start time in ``/proc/<pid>/stat`` differs: the pid was reused), or was written
   before this machine's last boot, is taken over at once. "Same host" is the host name *and* the kernel's boot id
   and pid namespace, so two containers sharing a host name never judge each other's pids.
3. **Anything else** (another host's record on a shared filesystem, any record on object storage whose process is
   alive or cannot be checked): a lease. A record not renewed for its ``lease_s`` seconds is expired and is taken
   over with a message saying whose lease it broke. Times are the holders' wall clocks: hosts must agree within a
   small part of a lease (NTP). On object storage a live holder on this host that stopped renewing (stopped,
   stuck on the store) loses its lock too: the store's lease is the rule there, and the holder finds out at its
   next renewal.

Object storage has no flock and no rename. On S3 (and stores that speak its conditional writes: AWS since 2024,
MinIO, moto) the record is created with ``If-None-Match: *`` and replaced or renewed with ``If-Match: <etag of the
record read>``, so of two runs that race for a free or expired lock exactly one write succeeds. On any other
fsspec filesystem the write is plain and is read back after :data:`SETTLE_S`; a racer whose read and write of the
record are more than that apart can still overwrite the winner (the residual window, documented in
docs/architecture.md).

A holder that finds its record gone or replaced at a renewal (``curaclip unlock``, or its lease expired and another
run took over) says so once and stops renewing; its run goes on without the lock.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import fsspec

from tasks.store import workdir as W

LOCK_NAME = ".curaclip.lock"
"""The record's name, directly in the workdir (for an object-store workdir: in the store, not the mirror)."""
LEASE_ENV = "CURACLIP_LOCK_LEASE_S"
DEFAULT_LEASE_S = 120.0
"""How long a record may go unrenewed before another host may take it over: long enough to ride out a slow store
or a loaded machine (renewals come every 40 s), short enough that a crashed cluster driver frees its workdir within
minutes. Overridden by ``$CURACLIP_LOCK_LEASE_S``."""
POLL_S = 1.0
"""How often a waiting run looks at the lock again."""
SETTLE_S = 0.5
"""On a filesystem without conditional writes: how long a written record is left before it is read back."""

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"curaclip: {message}", file=sys.stderr, flush=True)


def new_run_id() -> str:
    """A run's id, ``YYYYmmdd-HHMMSS-<6 hex>`` (UTC). Here, not in flows/, because the lock is taken first and
    names the run: the CLI takes it before importing Prefect, so that a held workdir is reported at once."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


# --- who is this process ----------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks after boot (``/proc/<pid>/stat``, field 22), or None off Linux or
    for a pid that is gone. The name field may hold spaces and parentheses, so fields are counted from its end."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


HOST = socket.gethostname()
MACHINE = f"{_read('/proc/sys/kernel/random/boot_id')}/{_pid_namespace()}"
"""This kernel's boot and pid namespace: pids are comparable only between records with the same value."""


# --- the record -----------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Record:
    """What ``.curaclip.lock`` holds: who has the workdir, since when, and until when without a renewal."""

    host: str
    pid: int
    run_id: str
    started: str
    """ISO time (UTC) the lock was taken."""
    renewed: str
    """ISO time (UTC) of the holder's last renewal."""
    lease_s: float
    """The holder's promise: it renews at least every ``lease_s`` seconds (every third of it, in fact)."""
    token: str
    """A random string of this holding: how a holder recognises its own record."""
    machine: str = ""
    """Boot id and pid namespace of the holder's kernel (see :data:`MACHINE`)."""
    pid_start: str | None = None
    """The holder's start time (:func:`process_start`): a reused pid has another."""

    @classmethod
    def mine(cls, run_id: str, lease_s: float) -> Record:
        now = _now()
        return cls(HOST, os.getpid(), run_id, now, now, lease_s, secrets.token_hex(8), MACHINE,
                   process_start(os.getpid()))

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode() + b"\n"

    def renewed_now(self) -> Record:
        return replace(self, renewed=_now())

    def describe(self) -> str:
        since = datetime.fromisoformat(self.started).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"run {self.run_id} (pid {self.pid} on {self.host}, since {since})"

    def seconds_since_renewal(self) -> float:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(self.renewed)).total_seconds()

    def expired(self) -> bool:
        return self.seconds_since_renewal() > self.lease_s

    def here(self) -> bool:
        """Whether the holder's pid can be checked from this process (same host, boot and pid namespace)."""
        return self.host == HOST and self.machine == MACHINE

    def alive(self) -> bool:
        """For a record :meth:`here`: whether its process still runs (and is the same process)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        return self.pid_start is None or process_start(self.pid) in (None, self.pid_start)


def parse(data: bytes | str | None) -> Record | None:
    """The record in ``data``; None for none, or for one half-written or not ours (it is then taken over)."""
    try:
        return Record(**json.loads(data)) if data else None
    except (ValueError, TypeError):
        return None


def describe(holder: Record | None) -> str:
    return holder.describe() if holder is not None else "another run (its lock record is still being written)"


def takeover_reason(holder: Record, flocked: bool) -> str | None:
    """Why ``holder``'s lock may be taken over, or None while it holds. ``flocked``: we hold the record file's
    flock, which a live holder on this host would still have."""
    if holder.here():
        if not holder.alive():
            return "its process is gone"
        if flocked:
            return None  # alive here without the flock (a filesystem where flock is not enforced): it holds
    if holder.expired():
        return (f"its lease expired (last renewed {holder.seconds_since_renewal():.0f} s ago, lease "
                f"{holder.lease_s:g} s)")
    return None


class WorkdirBusyError(RuntimeError):
    """The workdir is held by another run."""

    def __init__(self, workdir: str, holder: Record | None):
        self.workdir, self.holder = workdir, holder
        super().__init__(f"workdir {workdir} is in use by {describe(holder)}; wait for it, pass --wait, or "
                         f"`curaclip unlock --workdir {workdir}` if that run is gone")


@dataclass
class Attempt:
    """One look at the lock: taken (``file`` set; ``reason``: whose lock it took over and why), held by
    ``holder``, or neither (it changed under us: look again)."""

    file: LockFile | None = None
    holder: Record | None = None
    previous: Record | None = None
    reason: str | None = None
    again: bool = False


# --- where the record lives -----------------------------------------------------------------------------

class LockFile(abc.ABC):
    """The record on some filesystem: taken, renewed, released, read and broken."""

    location: str

    @abc.abstractmethod
    def attempt(self, record: Record) -> Attempt:
        """Take the lock for ``record``, or say who holds it."""

    @abc.abstractmethod
    def renew(self, record: Record) -> bool:
        """Write ``record`` (renewed) if the lock is still ours; False when it is not."""

    @abc.abstractmethod
    def release(self, record: Record) -> None:
        """Give the lock up, leaving a record someone else wrote in place."""

    @abc.abstractmethod
    def read(self) -> Record | None:
        """The current record (None: no lock)."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Delete the record, whoever holds it (`curaclip unlock`)."""


class LocalLockFile(LockFile):
    """A local (or shared) filesystem: the record file, flocked by its holder while the run lives."""

    def __init__(self, path: Path):
        self.path = path
        self.location = str(path)
        self.fd: int | None = None

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def attempt(self, record: Record) -> Attempt:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return Attempt(holder=self.read())
        if not self._same_file(fd):  # unlinked (released, unlocked) between our open and our flock
            os.close(fd)
            return Attempt(again=True)
        previous = parse(os.pread(fd, 1 << 16, 0))
        reason = takeover_reason(previous, flocked=True) if previous is not None else None
        if previous is not None and reason is None:
            os.close(fd)
            return Attempt(holder=previous)
        self.fd = fd
        self._write(record)
        os.fsync(fd)
        return Attempt(file=self, previous=previous, reason=reason)

    def _write(self, record: Record) -> None:
        data = record.to_bytes()
        os.pwrite(self.fd, data, 0)  # in place: a reader sees the old record or the new one, never an empty file
        os.ftruncate(self.fd, len(data))

    def renew(self, record: Record) -> bool:
        current = self.read()
        if self.fd is None or not self._same_file(self.fd) or current is None or current.token != record.token:
            return False
        self._write(record)
        return True

    def release(self, record: Record) -> None:
        if self.fd is None:
            return
        if self._same_file(self.fd):
            self.path.unlink()  # before the flock goes: a taker that flocks this file sees it unlinked
        os.close(self.fd)
        self.fd = None

    def read(self) -> Record | None:
        for _ in range(20):  # a record being written (or rewritten in place) parses a moment later
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                return None
            if (record := parse(data)) is not None:
                return record
            time.sleep(0.05)
        return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class ObjectLockFile(LockFile):
    """An object-store workdir: the record object, written only if absent (or unchanged since read)."""

    def __init__(self, url: str):
        self.location = f"{url.rstrip('/')}/{LOCK_NAME}"
        self.fs, self.path = fsspec.core.url_to_fs(self.location)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.conditional = bool({"s3", "s3a"} & set(protocols))
        """S3's conditional writes; elsewhere a write is checked by reading it back."""
        self.etag: str | None = None
        """The ETag of our record as last written (conditional stores)."""

    def _versioned(self) -> tuple[str | None, Record | None]:
        """(version, record) with the version read first: a record newer than its version only makes our
        conditional write fail, never succeed on a record we did not read."""
        self.fs.invalidate_cache(self.path)
        try:
            version = self.fs.info(self.path).get("ETag") if self.conditional else ""
            return version, parse(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None, None

    def _put(self, record: Record, version: str | None) -> None:
        """Create the record (``version`` None) or replace the one at ``version``; raises OSError when the object
        is not as expected (FileExistsError for one that exists)."""
        data = record.to_bytes()
        if self.conditional:
            condition = {"mode": "create"} if version is None else {"IfMatch": version}
            self.etag = self.fs.pipe_file(self.path, data, **condition)["ETag"]
            return
        if version is None and self.fs.exists(self.path):
            raise FileExistsError(self.location)
        self.fs.pipe_file(self.path, data)
        time.sleep(SETTLE_S)
        if (back := self._versioned()[1]) is None or back.token != record.token:
            raise FileExistsError(self.location)  # another writer's record is there now: it won

    def attempt(self, record: Record) -> Attempt:
        try:
            self._put(record, None)
            return Attempt(file=self)
        except FileExistsError:
            pass
        version, previous = self._versioned()
        if version is None:
            return Attempt(again=True)  # released meanwhile
        reason = takeover_reason(previous, flocked=False) if previous is not None else "its record is unreadable"
        if reason is None:
            return Attempt(holder=previous)
        try:
            self._put(record, version)
        except OSError:
            return Attempt(again=True)  # it changed since we read it: renewed, released, or another run won
        return Attempt(file=self, previous=previous, reason=reason)

    def renew(self, record: Record) -> bool:
        if not self.conditional and ((current := self.read()) is None or current.token != record.token):
            return False
        try:
            self._put(record, self.etag if self.conditional else "")
            return True
        except OSError:
            version, current = self._versioned()
            if current is None or current.token != record.token:
                return False
            self.etag = version  # our own write went through before the error: carry on from it
            return True

    def release(self, record: Record) -> None:
        current = self._versioned()[1]
        if current is not None and current.token == record.token:
            self.fs.rm_file(self.path)

    def read(self) -> Record | None:
        return self._versioned()[1]

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)


def lock_file(workdir: str) -> LockFile:
    """The lock of ``workdir`` as given (a URL's lock is in the store, whatever mirror a process keeps)."""
    if W.is_remote(workdir):
        return ObjectLockFile(workdir)
    return LocalLockFile(Path(W.local_path(workdir)) / LOCK_NAME)


# --- holding it -----------------------------------------------------------------------------------------

class WorkdirLock:
    """A held lock: renewed from a daemon thread until released."""

    def __init__(self, workdir: str, file: LockFile, record: Record, say: Say):
        self.workdir, self.file, self.record, self.say = workdir, file, record, say
        self.lost = False
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"curaclip-lock-{record.run_id}",
                                         daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.record.lease_s / 3):
            renewed = self.record.renewed_now()
            try:
                kept = self.file.renew(renewed)
            except Exception:  # a store's hiccup: the next renewal, a third of a lease later, tries again
                continue
            if not kept:
                self.lost = True
                holder = self.file.read()
                now = f"; it is now held by {holder.describe()}" if holder is not None else ""
                self.say(f"the lock of {self.record.describe()} on workdir {self.workdir} was broken{now}; "
                         "this run goes on without it")
                return
            self.record = renewed

    def release(self) -> None:
        self._stop.set()
        self._renewer.join()
        with _GUARD:
            if _HELD.get(self.file.location) is self:
                del _HELD[self.file.location]
        self.file.release(self.record)  # each kind checks first that the record is still ours


_HELD: dict[str, WorkdirLock] = {}
"""The locks this process holds, by location: the pipeline flow, called by the CLI that took its lock, holds it
again without a second flock (which would wait on the first)."""
_GUARD = threading.Lock()


def lease_seconds(lease_s: float | None = None) -> float:
    return float(lease_s if lease_s is not None else os.environ.get(LEASE_ENV) or DEFAULT_LEASE_S)


def acquire(workdir: str, run_id: str, wait: bool = False, lease_s: float | None = None, say: Say = _stderr,
            poll_s: float = POLL_S) -> WorkdirLock:
    """Take the lock of ``workdir`` for ``run_id``, or raise :class:`WorkdirBusyError` naming its holder
    (``wait``: look again every ``poll_s`` seconds until it is free, saying once per holder whom it waits for)."""
    file, lease = lock_file(workdir), lease_seconds(lease_s)
    announced: object = None  # the holder last announced (its token; "" for an unreadable one)
    while True:
        record = Record.mine(run_id, lease)
        with _GUARD:
            mine = _HELD.get(file.location)  # another run of this process: a busy lock like any other
            attempt = Attempt(holder=mine.record) if mine is not None else file.attempt(record)
            if attempt.file is not None:
                lock = _HELD[file.location] = WorkdirLock(workdir, file, record, say)
        if attempt.file is not None:
            if attempt.reason is not None:
                whose = f" from {attempt.previous.describe()}" if attempt.previous is not None else ""
                say(f"took over workdir {workdir}{whose}: {attempt.reason}")
            return lock
        if attempt.again:
            continue
        if not wait:
            raise WorkdirBusyError(workdir, attempt.holder)
        if (token := attempt.holder.token if attempt.holder is not None else "") != announced:
            say(f"workdir {workdir} is in use by {describe(attempt.holder)}; waiting for it (--wait)")
            announced = token
        time.sleep(poll_s)


@contextlib.contextmanager
def hold(workdir: str, run_id: str, wait: bool = False, lease_s: float | None = None,
         say: Say = _stderr) -> Iterator[WorkdirLock]:
    """Hold the lock of ``workdir`` for the block. Re-entrant for the same run: a block inside another of the same
    ``run_id`` in this process uses the outer one's lock (another run id in this process waits or fails as
    another process would)."""
    with _GUARD:
        outer = _HELD.get(lock_file(workdir).location)
    if outer is not None and outer.record.run_id == run_id:
        yield outer
        return
    lock = acquire(workdir, run_id, wait=wait, lease_s=lease_s, say=say)
    try:
        yield lock
    finally:
        lock.release()


def holder(workdir: str) -> Record | None:
    """Who holds ``workdir`` now, from its record (None: no lock)."""
    return lock_file(workdir).read()


def break_lock(workdir: str) -> Record | None:
    """Remove ``workdir``'s lock record whoever holds it (``curaclip unlock``); returns the record it broke.
    A live holder finds out at its next renewal and goes on without the lock."""
    file = lock_file(workdir)
    record = file.read()
    file.remove()
    return record
