"""Reservations enforced by the kernel: one cgroup per notebook server and per job task.

A cgroup's memory limit and CPU quota are the reservation it runs under. Both layouts are
supported: the unified hierarchy (cgroup v2, what systemd hosts mount at /sys/fs/cgroup) and the
legacy per-controller hierarchies (cgroup v1: /sys/fs/cgroup/memory, /sys/fs/cgroup/cpu, ...).
The platform keeps its cgroups below one parent (`mlp` by default). When nothing can be written
there, `CgroupDriver.detect` returns a driver whose `available` is False and whose `reason` says
why: callers then run without limits and must say so (at start and in the quota view).

With systemd managing a cgroup v2 host, run the platform in a unit with ``Delegate=yes`` (or
point `root` at a delegated subtree) so that systemd leaves the platform's subtree alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CPU_PERIOD_US = 100_000
_V1_CONTROLLERS = ("memory", "cpu", "cpuacct")


@dataclass(frozen=True)
class Limits:
    cpu: float | None = None  # cores; None = no CPU quota
    memory: int | None = None  # bytes; None = no memory limit


class CgroupError(RuntimeError):
    pass


class Cgroup:
    """One cgroup (v2: one directory; v1: one directory per controller hierarchy)."""

    def __init__(self, name: str, version: int, dirs: dict[str, Path]):
        self.name = name
        self.version = version
        self.dirs = dirs  # controller ("unified" for v2) -> directory

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, v{self.version})"

    @property
    def procs_files(self) -> list[Path]:
        seen: set[Path] = set()
        out = []
        for d in self.dirs.values():
            real = d.resolve()
            if real not in seen:
                seen.add(real)
                out.append(d / "cgroup.procs")
        return out

    def join(self, pid: int = 0) -> None:
        """Move `pid` (0: the calling process) into this cgroup. Safe in a preexec_fn."""
        data = str(pid or os.getpid()).encode()
        for path in self.procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in path.read_text().split())
        return sorted(found)

    def _read(self, controller: str, file: str) -> str | None:
        d = self.dirs.get("unified" if self.version == 2 else controller)
        if d is None:
            return None
        try:
            return (d / file).read_text()
        except OSError:
            return None

    def oom_kills(self) -> int:
        """How many processes the kernel killed because this cgroup hit its memory limit."""
        text = self._read("memory", "memory.events" if self.version == 2 else "memory.oom_control")
        for line in (text or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def memory_failures(self) -> int:
        if self.version == 2:
            text = self._read("memory", "memory.events") or ""
            return sum(int(v) for k, _, v in (ln.partition(" ") for ln in text.splitlines())
                       if k in ("max", "oom"))
        return int((self._read("memory", "memory.failcnt") or "0").strip() or 0)

    def cpu_seconds(self) -> float:
        """CPU time used by everything in the cgroup so far."""
        if self.version == 2:
            for line in (self._read("cpu", "cpu.stat") or "").splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
            return 0.0
        return int((self._read("cpuacct", "cpuacct.usage") or "0").strip() or 0) / 1e9

    def throttled_periods(self) -> int:
        """How many CPU periods the quota held the cgroup back."""
        for line in (self._read("cpu", "cpu.stat") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "nr_throttled":
                return int(value)
        return 0

    def kill(self) -> None:
        """SIGKILL everything inside. On cgroup v2 with ``cgroup.kill`` (Linux 5.14+) the kernel
        kills the whole cgroup at once, processes forked meanwhile included; elsewhere each
        listed process is signalled (`kill_each`, which `remove` repeats until the cgroup is
        empty)."""
        if self.version == 2:
            with contextlib.suppress(FileNotFoundError):
                (self.dirs["unified"] / "cgroup.kill").write_text("1")
                return
        self.kill_each()

    def kill_each(self) -> None:
        """SIGKILL each process the cgroup lists now (the fallback of `kill`)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left inside and remove the directories (idempotent)."""
        deadline = time.monotonic() + timeout
        for d in sorted(set(self.dirs.values()), key=lambda p: len(p.parts), reverse=True):
            while d.exists():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise CgroupError(f"cannot remove cgroup {d}: {e}") from None
                    self.kill()
                    time.sleep(0.02)


class CgroupDriver:
    """Creates the platform's cgroups on a v1 or v2 host, or says why it cannot."""

    def __init__(self, version: int | None, root: Path, parent: str, reason: str = ""):
        self.version = version
        self.root = root
        self.parent = parent
        self.reason = reason

    @property
    def available(self) -> bool:
        return self.version is not None

    def describe(self) -> str:
        if not self.available:
            return f"not enforced: {self.reason}"
        return f"enforced by cgroup v{self.version} under {self._parent_dirs()}"

    @classmethod
    def detect(cls, root: str | os.PathLike[str] = "/sys/fs/cgroup", parent: str = "mlp",
               enabled: bool = True) -> CgroupDriver:
        rootp = Path(root)
        if not enabled:
            return cls(None, rootp, parent, "disabled in the configuration (c.MLPIsolation)")
        if os.geteuid() != 0:
            return cls(None, rootp, parent, "the platform does not run as root")
        if (rootp / "cgroup.controllers").exists():
            missing = cls._missing_v2_controllers(rootp)
            if missing:
                return cls(None, rootp, parent, missing)
            driver = cls(2, rootp, parent)
        elif (rootp / "memory" / "memory.limit_in_bytes").exists() and (
            rootp / "cpu" / "cpu.cfs_quota_us"
        ).exists():
            driver = cls(1, rootp, parent)
        else:
            return cls(None, rootp, parent, f"no writable cgroup v1 or v2 hierarchy at {rootp}")
        try:
            driver._setup_parent()
        except OSError as e:
            return cls(None, rootp, parent, f"cannot create cgroups under {rootp}: {e}")
        return driver

    @staticmethod
    def _missing_v2_controllers(root: Path) -> str:
        """Why the cgroup v2 hierarchy at `root` cannot enforce limits, or "" if it can.

        Checked before anything is created there: a controller that a cgroup v1 hierarchy
        holds (a hybrid host) never shows up in cgroup v2, so nothing could be limited.
        """
        try:
            available = set((root / "cgroup.controllers").read_text().split())
        except OSError as e:
            return f"cannot read the cgroup v2 controllers at {root}: {e}"
        missing = sorted({"memory", "cpu"} - available)
        if not missing:
            return ""
        return (
            f"the cgroup v2 hierarchy at {root} lacks the {' and '.join(missing)} "
            f"controller{'s' if len(missing) > 1 else ''} (it offers "
            f"{', '.join(sorted(available)) or 'none'}); on a host that mounts both cgroup "
            "versions they belong to the cgroup v1 hierarchies: set c.MLPIsolation.cgroup_root "
            "to where those are mounted (e.g. /sys/fs/cgroup), or boot with cgroup v2 only "
            "(systemd.unified_cgroup_hierarchy=1)"
        )

    def _parent_dirs(self) -> dict[str, Path]:
        if self.version == 2:
            return {"unified": self.root / self.parent}
        return {c: self.root / c / self.parent for c in _V1_CONTROLLERS
                if (self.root / c).is_dir()}

    def _setup_parent(self) -> None:
        for d in self._parent_dirs().values():
            d.mkdir(exist_ok=True)
        if self.version == 2:
            wanted = {"memory", "cpu"}
            available = set((self.root / "cgroup.controllers").read_text().split())
            missing = wanted - available
            if missing:
                raise OSError(errno.ENOTSUP, f"controllers {sorted(missing)} are not available")
            for d in (self.root, self.root / self.parent):
                enabled = set((d / "cgroup.subtree_control").read_text().split())
                if not wanted <= enabled:
                    (d / "cgroup.subtree_control").write_text(
                        " ".join(f"+{c}" for c in sorted(wanted - enabled))
                    )
        else:
            use_h = self.root / "memory" / self.parent / "memory.use_hierarchy"
            with contextlib.suppress(OSError):
                if use_h.read_text().strip() != "1":
                    use_h.write_text("1")

    def cgroup(self, name: str) -> Cgroup:
        """The (possibly existing) cgroup `name`, without creating it (to inspect or remove)."""
        if not self.available:
            raise CgroupError(f"cgroups are {self.describe()}")
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"cgroup name {name!r}: expected a plain name")
        return Cgroup(name, self.version or 0,
                      {c: d / name for c, d in self._parent_dirs().items()})

    def create(self, name: str, limits: Limits) -> Cgroup:
        """Create (or reset) cgroup `name` with `limits`."""
        cg = self.cgroup(name)
        try:
            for d in cg.dirs.values():
                d.mkdir(exist_ok=True)
            if self.version == 2:
                d = cg.dirs["unified"]
                if limits.memory is not None:
                    (d / "memory.max").write_text(str(int(limits.memory)))
                    with contextlib.suppress(OSError):  # no swap accounting on some hosts
                        (d / "memory.swap.max").write_text("0")
                    with contextlib.suppress(OSError):  # kill the whole task, not one process
                        (d / "memory.oom.group").write_text("1")
                if limits.cpu is not None:
                    quota = max(1000, int(limits.cpu * CPU_PERIOD_US))
                    (d / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            else:
                if limits.memory is not None:
                    mem = cg.dirs["memory"]
                    (mem / "memory.limit_in_bytes").write_text(str(int(limits.memory)))
                    sw = mem / "memory.memsw.limit_in_bytes"
                    if sw.exists():  # swap counted too, so the limit cannot be escaped by swap
                        sw.write_text(str(int(limits.memory)))
                if limits.cpu is not None:
                    cpu = cg.dirs["cpu"]
                    (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                    (cpu / "cpu.cfs_quota_us").write_text(
                        str(max(1000, int(limits.cpu * CPU_PERIOD_US)))
                    )
        except OSError as e:
            with contextlib.suppress(CgroupError, OSError):
                cg.remove()
            raise CgroupError(f"cannot set up cgroup {name}: {e}") from None
        return cg

    def remove_all(self) -> None:
        """Remove every cgroup under the parent (killing what runs there), then the parent:
        for a platform being uninstalled, or a test hub being torn down."""
        if not self.available:
            return
        names = {child.name for d in self._parent_dirs().values() if d.exists()
                 for child in d.iterdir() if child.is_dir()}
        for name in names:
            with contextlib.suppress(CgroupError):
                self.cgroup(name).remove()
        for d in self._parent_dirs().values():
            with contextlib.suppress(OSError):
                d.rmdir()
