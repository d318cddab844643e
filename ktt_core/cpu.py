"""What this machine's CPU offers a run: native bf16 arithmetic, and how many cores it may use.

Kept free of torch so that the command line can size ``--threads`` before a model (and
torch) is needed; :mod:`ktt_core.devices` builds the precision and thread choices on it.
See docs/performance.md, "CPU defaults: bf16 and threads".
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

from ktt_core.errors import KttError

#: x86 ``/proc/cpuinfo`` flags of native bf16 arithmetic, best first, with their usual names.
#: AMX (Intel Xeon since Sapphire Rapids) multiplies bf16 tiles; AVX512-BF16 (Intel Cooper
#: Lake, AMD Zen 4 and later) has bf16 dot products. Either makes bf16 autocast faster than fp32.
BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))

#: Overrides the detection for ``precision: auto`` on CPU: 0 (fp32), 1 (bf16), unset (detect).
BF16_ENV = "KTT_CPU_BF16"


def native_bf16_feature(cpuinfo_text: str | None = None) -> str | None:
    """The CPU feature that gives native bf16 (``"AMX-BF16"``, ``"AVX512-BF16"``), or None.

    ``cpuinfo_text`` is the text of a ``/proc/cpuinfo`` (for tests); without it, this
    machine's, read once. Where no x86 flags can be read (macOS, Windows, ARM), torch's own
    CPU checks decide; they know only the x86 features, so ARM CPUs with bf16 instructions
    (Graviton 3, Apple M2) count as without: bf16 stays opt-in there (``precision: bf16``)
    until its speed is measured.
    """
    if cpuinfo_text is None:
        return _this_cpu_bf16_feature()
    flags = _x86_flags(cpuinfo_text)
    return next((name for flag, name in BF16_FLAGS if flag in flags), None)


def cpu_has_native_bf16(cpuinfo_text: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (see :func:`native_bf16_feature`).

    For this machine (no ``cpuinfo_text``), ``KTT_CPU_BF16=0`` or ``1`` overrides the answer.
    """
    if cpuinfo_text is None:
        forced = bf16_override()
        if forced is not None:
            return forced
    return native_bf16_feature(cpuinfo_text) is not None


def bf16_override() -> bool | None:
    """``KTT_CPU_BF16``: False for 0, True for 1, None when unset (detect)."""
    value = os.environ.get(BF16_ENV, "").strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise KttError(f"environment variable {BF16_ENV}={value!r}: expected 0 (fp32), 1 (bf16) or unset (detect)")
    return value == "1"


def _x86_flags(cpuinfo_text: str) -> set[str]:
    """Every flag on the ``flags`` lines of a ``/proc/cpuinfo`` text (none on ARM: it has ``Features``)."""
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags.update(value.split())
    return flags


@functools.lru_cache(maxsize=1)
def _this_cpu_bf16_feature() -> str | None:
    # Cached: autocast asks for every batch, and the CPU does not change under a process.
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    if _x86_flags(text):
        return native_bf16_feature(text)
    return _torch_bf16_feature()


def _torch_bf16_feature() -> str | None:
    """torch's CPU checks, where ``/proc/cpuinfo`` has no x86 flags (private functions, hence
    looked up with care: a torch without them means no detection, so fp32)."""
    import torch

    checks = (("_is_amx_tile_supported", "AMX-BF16"), ("_is_avx512_bf16_supported", "AVX512-BF16"))
    for function, name in checks:
        check = getattr(torch.cpu, function, None)
        try:
            if check is not None and check():
                return name
        except RuntimeError:
            continue
    return None


# -- cores ---------------------------------------------------------------------------------
def available_cpus(cgroup_root: str | Path = "/sys/fs/cgroup", self_cgroup: str | Path = "/proc/self/cgroup") -> int:
    """How many CPUs this process may really use: the CPUs it may run on (its affinity, set by
    ``taskset``, ``docker --cpuset-cpus`` or a batch scheduler) bounded by its cgroup's CPU
    quota (``docker --cpus``, Kubernetes CPU limits), rounded up; at least 1.

    ``os.cpu_count()`` counts the machine's CPUs instead, so torch's default of one thread per
    CPU overcommits a container limited to a few of them. ``cgroup_root`` and ``self_cgroup``
    locate the cgroup files (for tests).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, self_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: str | Path = "/sys/fs/cgroup",
                     self_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """The CPU time this process's cgroup may use, in CPUs (quota / period), or None when no
    quota is set or none can be read.

    A quota set on any cgroup from the process's own up to the root limits it, so the
    smallest one counts. Both cgroup v2 (``cpu.max``: ``"QUOTA PERIOD"`` or ``"max PERIOD"``)
    and v1 (``cpu.cfs_quota_us``, -1 for none, and ``cpu.cfs_period_us``) are read.
    """
    quotas = [q for q in (_quota_in(folder) for folder in _cgroup_folders(Path(cgroup_root), Path(self_cgroup)))
              if q is not None]
    return min(quotas) if quotas else None


def _cgroup_folders(root: Path, self_cgroup: Path) -> list[Path]:
    """The folders that may hold this process's CPU quota: its cgroup and every ancestor, under
    the v2 root and the v1 ``cpu`` hierarchy. Inside a container the process's path names the
    host's cgroup, which is not mounted there; the container's own limit is then at the root."""
    relative = {"/"}
    try:
        for line in self_cgroup.read_text(encoding="utf-8").splitlines():
            _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if controllers == "" or "cpu" in controllers.split(","):  # v2, or v1's cpu controller
                relative.add(path.strip() or "/")
    except OSError:
        pass
    folders: list[Path] = []
    for base in (root, root / "cpu", root / "cpu,cpuacct"):
        for path in relative:
            parts = [p for p in path.split("/") if p and p not in (".", "..")]
            for depth in range(len(parts), -1, -1):
                folder = base.joinpath(*parts[:depth])
                if folder not in folders:
                    folders.append(folder)
    return folders


def _quota_in(folder: Path) -> float | None:
    """The quota in CPUs set in one cgroup folder, or None."""
    try:
        quota, period = (folder / "cpu.max").read_text(encoding="utf-8").split()[:2]
        return None if quota == "max" else _ratio(quota, period)
    except (OSError, ValueError):
        pass
    try:
        quota = (folder / "cpu.cfs_quota_us").read_text(encoding="utf-8").strip()
        period = (folder / "cpu.cfs_period_us").read_text(encoding="utf-8").strip()
        return _ratio(quota, period)
    except (OSError, ValueError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    quota_us, period_us = int(quota), int(period)
    if quota_us <= 0 or period_us <= 0:  # v1 writes -1 for no quota
        return None
    return quota_us / period_us


#: How long :func:`idle_cpus` watches the CPUs when a log line asks how busy they are.
IDLE_SAMPLE_SECONDS = 0.2

#: Set by :func:`default_threads`: the count it chose and why, for :func:`describe_threads`.
last_choice: dict = {}


def idle_cpus(interval: float = IDLE_SAMPLE_SECONDS) -> float | None:
    """How many of this process's CPUs (its affinity) other work left idle over ``interval``
    seconds, from the kernel's per-CPU counters (psutil), this process's own use not counted
    as busy; None where they cannot be read."""
    try:
        import psutil

        own = psutil.Process()
        own_before = sum(own.cpu_times()[:2])
        busy = psutil.cpu_percent(interval=interval, percpu=True)
        own_seconds = sum(own.cpu_times()[:2]) - own_before
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(len(busy))
    except Exception:  # noqa: BLE001 - no counters (a sandbox, an odd platform): no opinion
        return None
    cpus = [c for c in cpus if c < len(busy)]
    if not cpus:
        return None
    idle = sum(1 - busy[c] / 100 for c in cpus) + own_seconds / interval
    return min(float(len(cpus)), idle)


def default_threads() -> int:
    """The thread count when ``--threads`` is not given: ``OMP_NUM_THREADS`` when set to a
    positive number (the user's or a launcher's choice: torchrun sets 1 per process when it
    starts several), else :func:`available_cpus`.

    It does not shrink when other work keeps CPUs busy, so that the same command on the same
    machine computes the same way (the thread count changes float rounding). Instead
    :func:`describe_threads` says so in the log line and suggests ``--threads``: torch's
    threads wait for each other at every operation, so a thread that shares its core with
    another busy process holds all of them back. With two other busy processes on a 2-core
    machine, 1 thread predicted 2.5x faster than 2 (benchmarks/README.md, "Shared cores").
    """
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) >= 1:
        last_choice.update(threads=int(value), reason="OMP_NUM_THREADS")
        return int(value)
    available = available_cpus()
    last_choice.update(threads=available, reason=f"{available} CPUs available")
    return available


def describe_threads(threads: int) -> str:
    """``"threads 2 (2 CPUs available)"``: the count in use and why; when it was the default,
    also how busy other work keeps the CPUs and which ``--threads`` would be faster. Only
    the log lines that say it (``ktt train``, the benchmarks) pay for watching the CPUs."""
    if last_choice.get("threads") != threads:
        return f"threads {threads} (--threads; {available_cpus()} CPUs available)"
    reason = last_choice["reason"]
    idle = idle_cpus() if threads > 1 and reason != "OMP_NUM_THREADS" else None
    if idle is not None:
        free = max(1, math.floor(idle + 0.5))
        if free < threads:
            reason += (f"; other work keeps {threads - idle:.1f} of them busy now: "
                       f"--threads {free} is faster on shared cores")
    return f"threads {threads} ({reason})"


def check_threads(threads: int | None) -> int:
    """``--threads N`` checked (KttError, one line, when below 1), or the default when None."""
    if threads is None:
        return default_threads()
    last_choice.clear()  # the log line says --threads, not an earlier default's reason
    if threads < 1:
        raise KttError(f"--threads {threads}: must be at least 1 (this process may use {available_cpus()} CPUs)")
    return threads
