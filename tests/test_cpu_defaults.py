"""CPU defaults: bf16 where the CPU computes it natively, threads from the CPUs a process may use.

Detection and thread counting run on given cpuinfo texts and fake cgroup folders; training
runs on the tiny encoder, in fp32 and (``KTT_CPU_BF16=1``) in bf16, and says which it used.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from helpers import assert_clean_error

from ktt_core import cpu, devices
from ktt_core.contract import full_precision
from ktt_core.errors import KttError

CPU = torch.device("cpu")
X86 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
       "flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512vl{extra}\n"
       "vmx flags\t: vnmi preemption_timer\n\n")
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha1 sha2 crc32 sve bf16 i8mm\nCPU implementer\t: 0x41\n"


# -- bf16 detection ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra, feature", [
    ("", None),
    (" avx512_vnni", None),
    (" avx512_bf16", "AVX512-BF16"),
    (" amx_tile amx_bf16 amx_int8 avx512_bf16", "AMX-BF16"),
])
def test_native_bf16_from_cpuinfo_flags(extra, feature):
    text = X86.format(extra=extra) * 2  # one block per processor
    assert cpu.native_bf16_feature(text) == feature
    assert cpu.cpu_has_native_bf16(text) is (feature is not None)


def test_only_x86_flags_count():
    # ARM's bf16 instructions are not taken as native bf16 (not measured), nor is a flag
    # that appears on another line than "flags".
    assert not cpu.cpu_has_native_bf16(ARM)
    assert not cpu.cpu_has_native_bf16("vmx flags\t: avx512_bf16\n")
    assert not cpu.cpu_has_native_bf16("")


def test_environment_overrides_the_detection(monkeypatch):
    monkeypatch.setenv("KTT_CPU_BF16", "1")
    assert cpu.cpu_has_native_bf16()
    assert not cpu.cpu_has_native_bf16(X86.format(extra=""))  # a given cpuinfo text is not overridden
    monkeypatch.setenv("KTT_CPU_BF16", "0")
    assert not cpu.cpu_has_native_bf16()
    monkeypatch.setenv("KTT_CPU_BF16", "yes")
    with pytest.raises(KttError, match="KTT_CPU_BF16"):
        cpu.cpu_has_native_bf16()


@pytest.mark.parametrize("native", [True, False])
def test_use_bf16_follows_the_detection(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert devices.use_bf16(CPU, "auto") is native
    assert devices.use_bf16(CPU, "fp32") is False
    assert devices.use_bf16(CPU, "bf16") is True
    with full_precision():  # an export's parity check compares in fp32
        assert not devices.use_bf16(CPU, "auto") and not devices.use_bf16(CPU, "bf16")


def test_describe_precision(monkeypatch):
    monkeypatch.delenv("KTT_CPU_BF16", raising=False)
    monkeypatch.setattr(devices, "native_bf16_feature", lambda: "AVX512-BF16")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.describe_precision(CPU, "auto") == "bf16 (CPU has AVX512-BF16)"
    monkeypatch.setattr(devices, "native_bf16_feature", lambda: None)
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.describe_precision(CPU, "auto") == "fp32 (no native bf16 on this CPU)"
    assert devices.describe_precision(CPU, "fp32") == "fp32 (precision: fp32)"
    assert devices.describe_precision(CPU, "bf16").startswith("bf16 (precision: bf16; no native bf16")


def test_bf16_failure_falls_back_to_fp32(monkeypatch):
    monkeypatch.setenv("KTT_CPU_BF16", "1")
    monkeypatch.setattr(devices, "_BF16_FAILED", set())
    calls = []

    def step():  # an op with no bf16 kernel: fails under autocast, works in fp32
        with devices.autocast(CPU, "auto"):
            calls.append(torch.is_autocast_enabled("cpu"))
            if calls[-1]:
                raise RuntimeError('"some_op_cpu" not implemented for \'BFloat16\'')
        return "done"

    assert devices.retry_in_fp32(CPU, "auto", step) == "done"
    assert calls == [True, False]
    assert not devices.use_bf16(CPU, "auto") and devices.describe_precision(CPU, "auto").startswith("fp32 (bf16 failed")
    assert devices.use_bf16(CPU, "bf16")  # asked for explicitly: not switched off


def test_other_failures_are_not_retried(monkeypatch):
    monkeypatch.setenv("KTT_CPU_BF16", "1")
    monkeypatch.setattr(devices, "_BF16_FAILED", set())

    def fail(message):
        def step():
            raise RuntimeError(message)
        return step

    with pytest.raises(RuntimeError, match="shape"):
        devices.retry_in_fp32(CPU, "auto", fail("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="BFloat16"):  # precision: bf16 fails as asked
        devices.retry_in_fp32(CPU, "bf16", fail("not implemented for 'BFloat16'"))
    assert devices.use_bf16(CPU, "auto")


# -- CPUs available ----------------------------------------------------------------------------
@pytest.fixture
def four_cpus(monkeypatch):
    """This process may run on 4 CPUs (its affinity)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def cgroup(tmp_path, files: dict[str, str], self_cgroup: str = "0::/\n"):
    """A fake /sys/fs/cgroup holding ``files`` and a /proc/self/cgroup; returns both paths."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    (tmp_path / "self_cgroup").write_text(self_cgroup)
    return {"cgroup_root": root, "self_cgroup": tmp_path / "self_cgroup"}


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 2),                  # 1.5 CPUs of quota: rounded up
    ({"cpu.max": "max 100000\n"}, 4),                     # no quota: the affinity
    ({}, 4),                                              # no cgroup files at all
    ({"cpu.max": "20000 100000\n"}, 1),                   # below one CPU: still one thread
    ({"cpu.max": "800000 100000\n"}, 4),                  # more quota than CPUs: the CPUs
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),      # v1, no quota
    ({"cpu.max": "garbage\n"}, 4),                        # unreadable: ignored
])
def test_available_cpus(tmp_path, four_cpus, files, expected):
    assert cpu.available_cpus(**cgroup(tmp_path, files)) == expected


def test_a_quota_on_an_ancestor_cgroup_counts(tmp_path, four_cpus):
    # The process sits in /jobs/one; the limit is on /jobs (the smallest along the path counts).
    paths = cgroup(tmp_path, {"jobs/cpu.max": "300000 100000\n", "jobs/one/cpu.max": "max 100000\n"},
                   self_cgroup="0::/jobs/one\n")
    assert cpu.cgroup_cpu_quota(**paths) == 3.0
    assert cpu.available_cpus(**paths) == 3


def test_default_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "available_cpus", lambda: 4)
    monkeypatch.setattr(cpu, "idle_cpus", lambda interval=0.2: 3.9)  # an idle machine
    assert cpu.default_threads() == 4
    assert cpu.describe_threads(4) == "threads 4 (4 CPUs available)"
    # Other work keeps 2.6 CPUs busy: the count stays (same command, same rounding), the log
    # line says so and what would be faster.
    monkeypatch.setattr(cpu, "idle_cpus", lambda interval=0.2: 1.4)
    assert cpu.default_threads() == 4
    assert cpu.describe_threads(4) == ("threads 4 (4 CPUs available; other work keeps 2.6 of them busy now: "
                                       "--threads 1 is faster on shared cores)")
    monkeypatch.setattr(cpu, "idle_cpus", lambda interval=0.2: 0.0)  # all busy: still a hint of 1
    assert cpu.default_threads() == 4 and "--threads 1 is faster" in cpu.describe_threads(4)
    monkeypatch.setattr(cpu, "idle_cpus", lambda interval=0.2: None)  # no counters: no opinion
    assert cpu.default_threads() == 4 and cpu.describe_threads(4) == "threads 4 (4 CPUs available)"
    assert cpu.describe_threads(3) == "threads 3 (--threads; 4 CPUs available)"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a launcher's choice (torchrun: 1 per process)
    assert cpu.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "nonsense")
    assert cpu.default_threads() == 4


def test_idle_cpus_reads_this_machine():
    idle = cpu.idle_cpus(0.05)
    assert idle is not None and 0 <= idle <= cpu.available_cpus() + 1e-6


# -- the commands --------------------------------------------------------------------------------
@pytest.fixture
def restore_threads():
    """Training with --threads changes torch's thread count for this whole process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _header(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("db_linear on shop:"))


def test_train_says_threads_and_precision(ktt, synthetic_csv, tiny_encoder, workspace, monkeypatch,
                                          restore_threads):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    train = ("train", "db_linear", "shop", "--epochs", 1, "--set", f"encoder={tiny_encoder}",
             "--set", "train_batch_size=16", "--threads", 1)
    header = _header(ktt(*train).output)
    assert f"threads 1 (--threads; {cpu.available_cpus()} CPUs available)" in header, header
    assert "precision fp32 (KTT_CPU_BF16=0)" in header, header  # as tests/conftest.py sets it
    assert torch.get_num_threads() == 1
    header = _header(ktt(*train, "--set", "precision=fp32").output)
    assert "precision fp32 (precision: fp32)" in header, header

    # bf16 as on a CPU with native bf16: trains, tests and exports (the parity check in fp32).
    monkeypatch.setenv("KTT_CPU_BF16", "1")
    monkeypatch.setattr(devices, "_BF16_FAILED", set())
    header = _header(ktt(*train).output)
    assert "precision bf16 (KTT_CPU_BF16=1)" in header, header
    run = max((workspace / "runs" / "db_linear" / "shop").iterdir())
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    metrics = json.loads(ktt("test", "db_linear", "shop", "--json", "--threads", 1).output)
    assert 0 <= metrics["exact_path_accuracy"] <= 1 and math.isfinite(metrics["loss"])

    from ktt_core.jobs import load_model
    from ktt_core.plugins import Plugins
    from ktt_core.scoring import score

    plugins = Plugins()
    model = load_model(plugins, "db_linear", run / "best.pt")
    assert devices.use_bf16(model.device, model.config["precision"])
    scores = score(plugins, plugins.model("db_linear"), model, ["edible apple", "playful doll"], features=True)
    assert scores.path_log_scores.dtype == np.float32 and scores.features.dtype == np.float32
    assert "ONNX model written" in ktt("export", "db_linear", "shop", "--onnx").output


@pytest.mark.parametrize("command", [
    ("train", "db_linear", "shop"),
    ("test", "db_linear", "shop"),
    ("predict", "db_linear", "shop", "some text"),
    ("serve", "db_linear", "shop"),
])
def test_threads_below_one_are_refused(ktt, command):
    result = ktt(*command, "--threads", 0, expect=1)
    assert_clean_error(result, "--threads 0: must be at least 1")


def test_threads_reach_onnxruntime_and_the_service(ktt, monkeypatch, tmp_path):
    from ktt_core import onnx_runtime
    from ktt_core.serving import serve as serving

    seen = {}

    def opened(directory, providers=None, threads=None):
        seen["onnx"] = threads
        raise KttError("stop here")

    def served(*args, **kwargs):
        seen["serve"] = kwargs["threads"]
        seen["workers"] = kwargs["workers"]
        return 0

    monkeypatch.setattr(onnx_runtime, "open_onnx", opened)
    monkeypatch.setattr(serving, "serve", served)
    ktt("predict", "db_linear", "shop", "some text", "--onnx", tmp_path, "--threads", 3, expect=1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ktt("serve", "db_linear", "shop")
    # Not chosen by the command: serve shares the CPUs out among its workers itself, and a
    # server does not size itself by the load at its start.
    assert seen == {"onnx": 3, "serve": None, "workers": None}
    ktt("serve", "db_linear", "shop", "--threads", 2, "--workers", 3)
    assert seen["serve"] == 2 and seen["workers"] == 3


def test_serve_starts_one_worker_per_cpu_up_to_four(monkeypatch):
    from ktt_core.serving import serve

    for cpus, workers in ((1, 1), (2, 2), (3, 3), (16, serve.MAX_DEFAULT_WORKERS)):
        monkeypatch.setattr(cpu, "available_cpus", lambda cpus=cpus: cpus)
        assert serve.default_workers() == workers
