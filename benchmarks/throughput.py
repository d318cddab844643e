#!/usr/bin/env python
"""Training and inference throughput: the original KTT's loop against KTT's core paths.

One run, one model (db_linear, built through the plugin manager as ``ktt train`` builds it),
one set of rows, the same starting weights for every measurement:

* NAIVE: the original KTT's loop, reproduced here as the baseline. A torch Dataset whose
  ``__getitem__`` tokenizes one row padded to 64 tokens, DataLoader batch 16, fp32, plain
  Adam, ``.item()`` of the loss and ``.cpu()`` of the outputs at every step; inference over
  the same Dataset, batch 16, under ``torch.no_grad()``, ``.cpu().numpy()`` per batch.
* KTT: the core's own code, not a copy of it. Training is ``encode_texts`` (tokenization is
  timed) then ``ktt_core.training.fit`` for one epoch on a RunContext with no run folder,
  with whatever ``fit`` does by default (batch size, padding, precision, ...) and including
  its end-of-epoch validation on ``--val-rows`` extra rows; inference is the scoring call every
  command uses (``ktt_core.scoring.predict``: the model's ``score``, tokenization included).

Both process the same ``--rows`` rows exactly once per path. Each path is warmed up on one
batch first, then the weights are restored. Run ``--help`` for the options; see README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from ktt_core.config import parse_set_options, resolve_config  # noqa: E402
from ktt_core.data.batches import encode_texts  # noqa: E402
from ktt_core.cpu import check_threads, describe_threads  # noqa: E402
from ktt_core.devices import available_cpus, describe_precision, resolve_device, seed_everything, use_threads  # noqa: E402
from ktt_core.hierarchy import Hierarchy  # noqa: E402
from ktt_core.scoring import predict as predict_texts  # noqa: E402
from ktt_core.plugins import Plugins  # noqa: E402
from ktt_core.runs import RunContext  # noqa: E402
from ktt_core.training import fit  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "walmart_30k.parquet"
BUNDLED = REPO / "data" / "walmart_sample.parquet"
MODEL = "db_linear"
QUICK_ROWS = 256
QUICK_VAL_ROWS = 16

# The original KTT's loop, fixed here: these are the baseline, not knobs to tune.
NAIVE_BATCH = 16
NAIVE_MAX_LENGTH = 64


# --------------------------------------------------------------------------- timing, memory
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class PeakMemory:
    """Peak memory of one phase: CUDA allocated bytes, or the process's resident set on CPU.

    On CPU the per-phase figure resets the kernel's RSS high-water mark (``/proc/self/clear_refs``,
    Linux) before the phase; where that is not possible it is the process peak so far
    (``getrusage`` max RSS), which only grows. Resetting the mark also resets what
    ``getrusage`` reports, so the process peak is kept here (:attr:`process_peak`).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seen = max_rss_bytes() if device.type != "cuda" else 0
        self.per_phase = device.type == "cuda" or self._can_reset_rss()

    @staticmethod
    def _can_reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return PeakMemory._vm_hwm() is not None
        except OSError:
            return False

    @staticmethod
    def _vm_hwm() -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.per_phase:
            self.seen = max(self.seen, max_rss_bytes())
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def read(self) -> int:
        if self.device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(self.device))
        elif self.per_phase:
            peak = int(self._vm_hwm())
        else:
            peak = max_rss_bytes()
        self.seen = max(self.seen, peak)
        return peak

    @property
    def process_peak(self) -> int:
        """CUDA: the largest phase peak; CPU: the process's peak RSS over the whole run."""
        if self.device.type == "cuda":
            return self.seen
        return max(self.seen, max_rss_bytes())

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated per phase"
        if self.per_phase:
            return "peak RSS per phase (VmHWM reset through /proc/self/clear_refs)"
        return "process peak RSS so far (getrusage ru_maxrss)"


def max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(device: torch.device, memory: PeakMemory, work):
    """(result, seconds, peak memory bytes, CPU seconds / wall seconds) of ``work()``.

    The last figure is the number of cores the process kept busy: on CPU, well below
    ``torch.get_num_threads()`` means it was waiting, often for another process's cores.
    """
    synchronize(device)
    memory.reset()
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    result = work()
    synchronize(device)
    seconds = time.perf_counter() - started
    return result, seconds, memory.read(), (cpu_seconds() - cpu0) / seconds


# --------------------------------------------------------------------------- the naive baseline
class NaiveDataset(Dataset):
    """The original KTT's dataset: every row tokenized on access, padded to max_length."""

    def __init__(self, texts, targets, tokenizer, max_length: int = NAIVE_MAX_LENGTH):
        self.texts = list(texts)
        self.targets = targets
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        enc = self.tokenizer(self.texts[i], padding="max_length", max_length=self.max_length, truncation=True)
        return {"input_ids": torch.tensor(enc["input_ids"], dtype=torch.long),
                "attention_mask": torch.tensor(enc["attention_mask"], dtype=torch.long),
                "targets": torch.as_tensor(self.targets[i], dtype=torch.long)}


def naive_train(model, texts, targets, device, lr: float, seed: int, max_batches: int | None = None) -> float:
    """One pass of the original loop; returns the mean training loss."""
    dataset = NaiveDataset(texts, targets, model.tokenizer)
    loader = DataLoader(dataset, batch_size=NAIVE_BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.to(device)
    model.train()
    losses, outputs_seen = [], []
    for step, batch in enumerate(loader):
        if max_batches is not None and step >= max_batches:
            break
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        y = batch["targets"].to(device)
        optimizer.zero_grad()
        outputs = model(ids, mask)
        loss = model.head.loss(outputs, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        outputs_seen.append(outputs.detach().cpu())
    return float(np.mean(losses)) if losses else float("nan")


def naive_predict(model, texts, targets, device, max_batches: int | None = None) -> np.ndarray:
    dataset = NaiveDataset(texts, targets, model.tokenizer)
    loader = DataLoader(dataset, batch_size=NAIVE_BATCH, shuffle=False)
    model.to(device)
    model.eval()
    out = []
    with torch.no_grad():
        for step, batch in enumerate(loader):
            if max_batches is not None and step >= max_batches:
                break
            outputs = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out.append(outputs.cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


# --------------------------------------------------------------------------- KTT's paths
def ktt_train(model, texts, paths, val_texts, val_paths, device, seed: int) -> dict:
    """Tokenize with the core, then the core's ``fit`` for one epoch (incl. its validation)."""
    config, hierarchy = model.config, model.hierarchy
    t0 = time.perf_counter()
    train_split = encode_texts(texts, model.tokenizer, config["max_length"], hierarchy, paths)
    val_split = encode_texts(val_texts, model.tokenizer, config["max_length"], hierarchy, val_paths)
    tokenize_s = time.perf_counter() - t0
    run = RunContext(directory=None, device=device, epochs=1, seed=seed, log=lambda *a, **k: None)
    history = fit(model, train_split, val_split, run)
    return {"history": history, "tokenize_seconds": tokenize_s}


def ktt_predict(plugins, model, texts, device):
    model.to(device)
    return predict_texts(plugins, plugins.model(model.name), model, texts)


# --------------------------------------------------------------------------- setup
def load_rows(path: Path | None, rows: int, val_rows: int, seed: int):
    """(train texts, train paths, val texts, val paths, hierarchy of the whole file, source)."""
    source = path or (DATA if DATA.is_file() else BUNDLED)
    frame = pd.read_parquet(source, columns=["title", "category"])
    frame = frame[frame["title"].astype(str).str.strip().astype(bool)]
    paths = [tuple(str(x) for x in p) for p in frame["category"]]
    texts = frame["title"].astype(str).tolist()
    hierarchy = Hierarchy.from_paths(paths)
    need = rows + val_rows
    if need > len(texts):
        raise SystemExit(f"--rows {rows} + --val-rows {val_rows} > {len(texts)} rows in {source}")
    order = np.random.default_rng(seed).permutation(len(texts))
    pick = lambda idx: ([texts[i] for i in idx], [paths[i] for i in idx])  # noqa: E731
    train_texts, train_paths = pick(order[:rows])
    val_texts, val_paths = pick(order[rows:need])
    return train_texts, train_paths, val_texts, val_paths, hierarchy, source


def distilbert_base_folder(folder: Path) -> str:
    """A randomly initialised DistilBERT-base encoder (DistilBertConfig defaults) with the
    MiniLM tokenizer's vocabulary, saved to ``folder``; for GPU-sized measurements."""
    import transformers

    from ktt_core.encoders import resolve_encoder

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_encoder("all-MiniLM-L6-v2"),
                                                           local_files_only=True)
    config = transformers.DistilBertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id or 0)
    torch.manual_seed(0)
    transformers.DistilBertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def machine(device: torch.device) -> dict:
    """Where a benchmark runs: device, CPU model, CPU counts, torch threads, library versions."""
    import transformers

    return {
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "available_cpus": available_cpus(),  # affinity bounded by the cgroup CPU quota
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
    }


def describe_machine(r: dict) -> str:
    """One line of :func:`machine`'s record."""
    return (f"device {r['device']} ({r['device_name']}); {r['cpu_count']} CPUs, affinity {r['cpu_affinity']}, "
            f"available {r['available_cpus']}, torch threads {r['torch_threads']}; torch {r['torch_version']}, "
            f"transformers {r['transformers_version']}, python {r['python_version']}")


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def competing_load(processes: int):
    """``processes`` busy-looping processes for the duration: other work on a shared machine."""
    import multiprocessing

    workers = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        yield
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.join()


def load_average() -> tuple | None:
    """The load averages (1, 5, 15 min), or None where the platform has none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def describe_load(before, after) -> str:
    load = lambda x: "?" if x is None else f"{x[0]:.2f}"  # noqa: E731
    return f"load average (1 min) {load(before)} before, {load(after)} after"


def run_started() -> dict:
    """When, and on how loaded a machine, a benchmark starts (for :func:`run_record`)."""
    return {"at": datetime.datetime.now(datetime.timezone.utc), "clock": time.perf_counter(),
            "load": load_average()}


def run_record(device: torch.device, started: dict, argv) -> dict:
    """What a benchmark's report ends with: :func:`machine`, date, command, duration, load."""
    return {
        **machine(device),
        "date": started["at"].isoformat(timespec="seconds"),
        "command": command_line(argv),
        "total_seconds": time.perf_counter() - started["clock"],
        # 1-minute load average before and after: well above torch_threads at the start
        # means something else was running and the figures are not clean.
        "loadavg_before": started["load"],
        "loadavg_after": load_average(),
    }


def publish(report: dict, path: Path | None, show) -> dict:
    """``show(report)``, and write it as JSON to ``path`` (when given)."""
    show(report)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"figures written to {path}")
    return report


def command_line(argv) -> str:
    """The benchmark's command as run (``argv``: what ``main`` got, None for ``sys.argv``)."""
    return " ".join([Path(sys.argv[0]).name] + (list(argv) if argv is not None else sys.argv[1:]))


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_run_options(p: argparse.ArgumentParser, set_help: str, threads_for: str = "") -> None:
    """``--device``, ``--set`` (help ``set_help``), ``--threads``, ``--seed`` and ``--json``."""
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch threads {threads_for}(default: as ktt train, the CPUs this process may use)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1000, help="rows trained on (once) and predicted, per path")
    p.add_argument("--val-rows", type=int, default=64,
                   help="extra rows for the validation that KTT's fit runs at the end of its epoch")
    p.add_argument("--quick", action="store_true",
                   help=f"--rows {QUICK_ROWS} --val-rows {QUICK_VAL_ROWS}: a check that runs in under a minute")
    p.add_argument("--data", type=Path, default=None,
                   help=f"parquet with title and category (default {DATA}, else {BUNDLED})")
    p.add_argument("--encoder", default=None, help="encoder name or folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--distilbert-base", action="store_true",
                   help="randomly initialised DistilBERT-base-sized encoder (for GPU measurements)")
    p.add_argument("--competing-load", type=int, default=0, metavar="N",
                   help="run N busy-looping processes during the measurements (a shared machine)")
    add_run_options(p, "override a key of the model config, as `ktt train --set` does (repeatable); "
                       "the naive loop keeps its fixed batch 16 / length 64 / Adam / fp32", "for both paths ")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.val_rows = QUICK_ROWS, QUICK_VAL_ROWS
    if args.encoder and args.distilbert_base:
        p.error("give --encoder or --distilbert-base, not both")
    if args.rows < 1 or args.val_rows < 1:
        p.error("--rows and --val-rows must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = run_started()
    wall0 = started["clock"]
    device = resolve_device(args.device)
    # The competing load starts first, so that the thread line can say how busy the CPUs are.
    load = contextlib.ExitStack()
    load.enter_context(competing_load(args.competing_load))
    use_threads(check_threads(args.threads))  # as ktt train does, for both paths
    texts, paths, val_texts, val_paths, hierarchy, source = load_rows(args.data, args.rows, args.val_rows, args.seed)

    with tempfile.TemporaryDirectory(prefix="ktt-bench-") as tmp:
        encoder = args.encoder or (distilbert_base_folder(Path(tmp)) if args.distilbert_base else None)
        plugins = Plugins()
        spec = plugins.model(MODEL)
        overrides = {"seed": args.seed}
        if encoder:
            overrides["encoder"] = encoder
        config = resolve_config(spec, [("benchmark", overrides), ("--set", parse_set_options(args.settings))])
        seed_everything(args.seed)
        model = plugins.hook.ktt_build_model(spec=spec, hierarchy=hierarchy, config=config)
    model.to(device)
    initial = copy.deepcopy(model.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    targets = hierarchy.encode_many(paths)
    memory = PeakMemory(device)

    def restore():
        model.load_state_dict(initial)
        seed_everything(args.seed)

    def log(msg):
        print(f"[{time.perf_counter() - wall0:6.1f}s] {msg}", flush=True)

    precision = describe_precision(device, config["precision"])
    log(f"{MODEL}, encoder {config['encoder']} ({n_params / 1e6:.1f}M parameters), device {device}, "
        f"KTT precision {precision}, torch {describe_threads(torch.get_num_threads())}, "
        f"{args.rows} rows (+{args.val_rows} val rows for fit) from {source}")
    if args.competing_load:
        log(f"competing load: {args.competing_load} busy-looping processes during every measurement")
    with load:
        results = measure(args, model, plugins, config, texts, paths, val_texts, val_paths, targets, device,
                          memory, restore, log)
    report = {
        "train_speedup": results["ktt_train"]["samples_per_s"] / results["naive_train"]["samples_per_s"],
        "inference_speedup": results["ktt_inference"]["samples_per_s"] / results["naive_inference"]["samples_per_s"],
        **{f"{k}_samples_per_s": v["samples_per_s"] for k, v in results.items()},
        "results": results,
        "rows": args.rows,
        "val_rows": args.val_rows,
        "competing_load_processes": args.competing_load,
        "data": str(source),
        "model": MODEL,
        "encoder": "distilbert-base (random init)" if args.distilbert_base else config["encoder"],
        "parameters": n_params,
        "naive": {"batch_size": NAIVE_BATCH, "max_length": NAIVE_MAX_LENGTH, "padding": "max_length",
                  "optimizer": "Adam", "lr": config["encoder_lr"], "precision": "fp32"},
        "ktt_config": config,
        "ktt_precision": precision,  # what precision: auto (or --set precision=...) gave, and why
        "memory_measure": memory.kind,
        "peak_memory_bytes": memory.process_peak,
        "process_peak_rss_bytes": max_rss_bytes() if device.type == "cuda" else memory.process_peak,
        **run_record(device, started, argv),
    }
    return publish(report, args.json, print_report)


def measure(args, model, plugins, config, texts, paths, val_texts, val_paths, targets, device, memory,
            restore, log) -> dict:
    """The four timed paths: naive and KTT training, naive and KTT inference."""
    results: dict = {}

    # Naive training: warm up one batch, restore, time one pass.
    naive_train(model, texts, targets, device, config["encoder_lr"], args.seed, max_batches=1)
    restore()
    loss, seconds, peak, busy = timed(device, memory, lambda: naive_train(
        model, texts, targets, device, config["encoder_lr"], args.seed))
    results["naive_train"] = {"seconds": seconds, "samples_per_s": args.rows / seconds,
                              "peak_memory_bytes": peak, "cpu_cores_busy": busy, "mean_train_loss": loss}
    log(f"naive train: {args.rows / seconds:.1f} samples/s ({seconds:.1f}s)")

    # KTT training: warm up fit on one batch, restore, time tokenization + fit.
    restore()
    bs = config["train_batch_size"]
    ktt_train(model, texts[:bs], paths[:bs], val_texts, val_paths, device, args.seed)
    restore()
    out, seconds, peak, busy = timed(device, memory, lambda: ktt_train(
        model, texts, paths, val_texts, val_paths, device, args.seed))
    record = out["history"][-1]
    results["ktt_train"] = {"seconds": seconds, "samples_per_s": args.rows / seconds, "peak_memory_bytes": peak,
                            "cpu_cores_busy": busy,
                            "mean_train_loss": record["train_loss"], "tokenize_seconds": out["tokenize_seconds"],
                            "includes_validation_rows": args.val_rows}
    log(f"KTT train (encode_texts + fit incl. validation of {args.val_rows} rows): "
        f"{args.rows / seconds:.1f} samples/s ({seconds:.1f}s)")

    # Naive inference.
    restore()
    naive_predict(model, texts, targets, device, max_batches=1)
    _, seconds, peak, busy = timed(device, memory, lambda: naive_predict(model, texts, targets, device))
    results["naive_inference"] = {"seconds": seconds, "samples_per_s": args.rows / seconds,
                                  "peak_memory_bytes": peak, "cpu_cores_busy": busy}
    log(f"naive inference: {args.rows / seconds:.1f} samples/s ({seconds:.1f}s)")

    # KTT inference: the scoring call.
    ktt_predict(plugins, model, texts[: config["eval_batch_size"]], device)
    _, seconds, peak, busy = timed(device, memory, lambda: ktt_predict(plugins, model, texts, device))
    results["ktt_inference"] = {"seconds": seconds, "samples_per_s": args.rows / seconds,
                                "peak_memory_bytes": peak, "cpu_cores_busy": busy}
    log(f"KTT inference (the scoring call): {args.rows / seconds:.1f} samples/s ({seconds:.1f}s)")
    return results


def print_report(r: dict) -> None:
    mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
    res = r["results"]
    print()
    print(f"{'path':<18}{'samples/s':>12}{'seconds':>10}{'peak memory':>14}{'cores busy':>12}")
    for key, label in (("naive_train", "naive train"), ("ktt_train", "KTT train"),
                       ("naive_inference", "naive inference"), ("ktt_inference", "KTT inference")):
        v = res[key]
        print(f"{label:<18}{v['samples_per_s']:>12.1f}{v['seconds']:>10.2f}{mib(v['peak_memory_bytes']):>14}"
              f"{v['cpu_cores_busy']:>12.2f}")
    print(f"train_speedup      {r['train_speedup']:.2f}x   (KTT fit incl. validation of {r['val_rows']} rows "
          f"and tokenization {res['ktt_train']['tokenize_seconds']:.2f}s)")
    print(f"inference_speedup  {r['inference_speedup']:.2f}x")
    print(f"mean train loss    naive {res['naive_train']['mean_train_loss']:.4f}   "
          f"KTT {res['ktt_train']['mean_train_loss']:.4f}")
    print(f"rows {r['rows']} from {r['data']}; {r['model']} with encoder {r['encoder']} "
          f"({r['parameters'] / 1e6:.1f}M parameters); KTT batch {r['ktt_config']['train_batch_size']} train / "
          f"{r['ktt_config']['eval_batch_size']} eval, naive batch {r['naive']['batch_size']}")
    print(f"KTT precision {r['ktt_precision']}; naive loop fp32")
    if r.get("competing_load_processes"):
        print(f"competing load: {r['competing_load_processes']} busy-looping processes during the measurements")
    print(describe_machine(r))
    print(f"memory: {r['memory_measure']}; process peak RSS {mib(r['process_peak_rss_bytes'])}")
    print(f"date {r['date']}; total {r['total_seconds']:.0f}s; "
          f"{describe_load(r['loadavg_before'], r['loadavg_after'])}")


if __name__ == "__main__":
    main()
