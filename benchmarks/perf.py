"""Performance benchmark (issues 6 and 14): aggregation cost vs the plain backbone,
training throughput with the prefix cache, memory format, ONNX, zoo listing, CLI start-up.

    python benchmarks/perf.py [--quick] [--threads T]

Writes benchmarks/results/perf.json (every number) and perf.md (tables, targets).
All ratios are measured in the same process, cases interleaved round by round, and
reported as medians. Times are CPU time of the measuring thread (torch runs on that
one thread): on a shared machine, wall time also counts the time other processes hold
the core; wall-clock medians are recorded next to them. Training cases run in one
subprocess each, A/B/A/B, so peak memory (``ru_maxrss`` of that subprocess:
whole-process peak, imports included; the ``baseline`` case is the same process
without training) can be read per case; their throughput is images per CPU-second of
the training steps (validation excluded), with the engine's wall-clock rate next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZE, BATCH = 64, 64


def machine_info(threads: int) -> dict:
    import torch

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
        "load_average_at_start": os.getloadavg(),
    }


def interleaved_times(cases: dict, rounds: int, warmup: int = 1, inference: bool = True) -> dict[str, dict]:
    """Every round runs every case once; per case the median CPU time of this thread
    (``cpu``) and the median wall time (``wall``), in seconds."""
    import contextlib

    import torch

    cpu: dict[str, list[float]] = {k: [] for k in cases}
    wall: dict[str, list[float]] = {k: [] for k in cases}
    with torch.inference_mode() if inference else contextlib.nullcontext():
        for r in range(warmup + rounds):
            for name, fn in cases.items():
                start_cpu, start = time.thread_time(), time.perf_counter()
                fn()
                if r >= warmup:
                    cpu[name].append(time.thread_time() - start_cpu)
                    wall[name].append(time.perf_counter() - start)
    return {k: {"cpu": statistics.median(cpu[k]), "wall": statistics.median(wall[k])} for k in cases}


def median_times(cases: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median CPU seconds per case (see ``interleaved_times``)."""
    return {k: v["cpu"] for k, v in interleaved_times(cases, rounds, warmup).items()}


def count_flops(fn) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return int(counter.get_total_flops())


def random_zoo(backbone, config, n, seed=0):
    import torch

    from vimw.modules import ModuleSet

    g = torch.Generator().manual_seed(seed)
    zoo = []
    for _ in range(n):
        module = ModuleSet.create(config, backbone.sites)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        zoo.append(module)
    return zoo


# -- inference -----------------------------------------------------------------------------
def bench_inference(ns: list[int], rounds: int) -> dict:
    import torch

    from vimw.aggregation import ZooAggregate
    from vimw.aggregation.fold import fold_into_backbone, lora_deltas
    from vimw.backbones import create_backbone
    from vimw.modules import ConvpassConfig, LoRAConfig

    backbone = create_backbone("efficientnet_lite0", image_size=SIZE)
    inp = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = {"batch": BATCH, "image_size": SIZE, "rounds": rounds, "by_n": {}}
    for layout in ("channels_last", "nchw"):
        # The backbone's feature maps: channels-last is its default; NCHW for comparison.
        backbone.memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        for n in ns:
            if layout == "nchw" and n != max(ns):
                continue  # the memory-format comparison only at the largest N
            convpass = random_zoo(backbone, ConvpassConfig(), n)
            lora = random_zoo(backbone, LoRAConfig(rank=4), n, seed=1)
            names = [f"m{i}" for i in range(n)]

            def agg(zoo, mode, batched):
                a = ZooAggregate(zoo, names, backbone, mode=mode, batched=batched, top_k=2)
                with torch.no_grad():
                    a.gate_logits.normal_(generator=torch.Generator().manual_seed(n))
                return a.eval()

            plugins = {
                "ens_looped": agg(convpass, "ens", False),
                "ens_batched": agg(convpass, "ens", True),
                "topk2_looped": agg(convpass, "topk", False),
                "topk2_batched": agg(convpass, "topk", True),
                "merge_looped": agg(convpass, "merge", False),
                "merge_batched": agg(convpass, "merge", True),
                "lora_ens_batched": agg(lora, "ens", True),
            }
            folded = fold_into_backbone(backbone, lora_deltas(plugins["lora_ens_batched"]))
            with torch.no_grad():
                err = (folded(inp) - backbone(inp, plugins["lora_ens_batched"].bypass)).abs().max().item()
            cases = {"backbone": lambda: backbone(inp)}
            for name, plugin in plugins.items():
                cases[name] = (lambda p: lambda: backbone(inp, p.bypass))(plugin)
            cases["lora_folded"] = lambda: folded(inp)
            both = interleaved_times(cases, rounds)
            times = {k: v["cpu"] for k, v in both.items()}
            flops = {k: count_flops(fn) for k, fn in cases.items()}
            base_t, base_f = times["backbone"], flops["backbone"]
            rows = {
                k: {"ms": round(times[k] * 1e3, 2), "wall_ms": round(both[k]["wall"] * 1e3, 2),
                    "images_per_s": round(BATCH / times[k], 1),
                    "latency_ratio": round(times[k] / base_t, 3), "gflops": round(flops[k] / 1e9, 3),
                    "flop_ratio": round(flops[k] / base_f, 3),
                    "time_over_flops": round((times[k] / base_t) / (flops[k] / base_f), 3)}
                for k in cases
            }
            rows["lora_folded"]["max_abs_err_vs_unfolded"] = err
            out["by_n"].setdefault(layout, {})[str(n)] = rows
            if layout == "channels_last" and n == max(ns):
                out["sites_at_max_n"] = {k: site_breakdown(backbone, plugins[k], inp, rounds)
                                         for k in ("ens_batched", "topk2_batched")}
            print(f"[inference {layout}] N={n}: " + ", ".join(f"{k} {v['latency_ratio']}x" for k, v in rows.items()), flush=True)
    backbone.memory_format = torch.channels_last
    return out


def bench_memory_format(rounds: int) -> dict:
    """The backbone's feature maps channels-last (default) vs NCHW: inference, and one
    training step of a convpass module on the last half (forward + backward)."""
    import torch

    from vimw.backbones import create_backbone
    from vimw.modules import ConvpassConfig, ModuleSet
    from vimw.training import TaskModel, head_config_for

    backbone = create_backbone("efficientnet_lite0", image_size=SIZE)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    y = torch.arange(BATCH) % 10
    torch.manual_seed(0)
    plugin = ModuleSet.create(ConvpassConfig(first_block=backbone.num_blocks // 2, dropout=0.0), backbone.sites)
    model = TaskModel(backbone, head_config_for(backbone, "classification", 10), plugin=plugin)

    def in_format(fmt, fn):
        def run():
            backbone.memory_format = fmt
            fn()
        return run

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    out = {}
    for what, fn, inference in (("inference", lambda: backbone(x), True), ("training_step", step, False)):
        cases = {"channels_last": in_format(torch.channels_last, fn), "nchw": in_format(torch.contiguous_format, fn)}
        t = interleaved_times(cases, rounds, inference=inference)
        out[what] = {"channels_last_ms": round(t["channels_last"]["cpu"] * 1e3, 2), "nchw_ms": round(t["nchw"]["cpu"] * 1e3, 2),
                     "speedup": round(t["nchw"]["cpu"] / t["channels_last"]["cpu"], 3)}
    backbone.memory_format = torch.channels_last
    print(f"[memory format] {out}", flush=True)
    return out


def site_breakdown(backbone, plugin, inp, rounds: int) -> dict:
    """CPU ms (median over ``rounds`` forward passes) and MFLOPs of the plug-in's work at each site."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vimw.aggregation import ZooAggregate

    run_site = ZooAggregate.run_site
    seconds: dict[str, list[float]] = {}
    flops: dict[str, int] = {}

    def timed(self, index, site, h):
        start = time.thread_time()
        result = run_site(self, index, site, h)
        seconds.setdefault(site, []).append(time.thread_time() - start)
        return result

    def counted(self, index, site, h):
        with FlopCounterMode(display=False) as counter:
            result = run_site(self, index, site, h)
        flops[site] = int(counter.get_total_flops())
        return result

    try:
        with torch.inference_mode():
            ZooAggregate.run_site = counted
            backbone(inp, plugin.bypass)
            ZooAggregate.run_site = timed
            for _ in range(rounds):
                backbone(inp, plugin.bypass)
    finally:
        ZooAggregate.run_site = run_site
    sizes = {s.name: s for s in backbone.sites}
    return {site: {"block": sizes[site].block, "ms": round(statistics.median(v) * 1e3, 3),
                   "mflops": round(flops.get(site, 0) / 1e6, 1)} for site, v in seconds.items()}


def bench_compile(rounds: int) -> dict:
    """torch.compile of the plain backbone forward (inference), vs eager, channels_last."""
    import torch

    from vimw.backbones import create_backbone

    backbone = create_backbone("efficientnet_lite0", image_size=SIZE)
    x = torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    try:
        started = time.perf_counter()
        compiled = torch.compile(backbone)
        with torch.inference_mode():
            compiled(x)
        compile_s = time.perf_counter() - started
    except Exception as exc:  # no compiler, unsupported op...
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    times = median_times({"eager": lambda: backbone(x), "compiled": lambda: compiled(x)}, rounds)
    return {"compile_seconds": round(compile_s, 1), "eager_ms": round(times["eager"] * 1e3, 2),
            "compiled_ms": round(times["compiled"] * 1e3, 2), "speedup": round(times["eager"] / times["compiled"], 3)}


# -- training (one subprocess per case) ---------------------------------------------------------
def synthetic_task(n_train: int, n_val: int, classes: int = 10):
    import torch

    from vimw.data import ImageSet, TaskData
    from vimw.data.tasks import TaskSpec

    g = torch.Generator().manual_seed(0)
    names = tuple(f"c{i}" for i in range(classes))
    # Class-dependent colour and stripe frequency, plus noise: learnable in a few epochs.
    def split(n, name):
        targets = torch.arange(n) % classes
        xs = torch.linspace(0, 1, SIZE)
        stripes = torch.sin(xs[None, :] * (targets[:, None].float() + 1) * 3.14)[:, None, None, :]
        colour = torch.stack([(targets % 3) / 2, (targets % 5) / 4, (targets % 2).float()], 1)[:, :, None, None]
        images = 0.5 * colour + 0.3 * stripes + 0.3 * torch.rand(n, 3, SIZE, SIZE, generator=g)
        return ImageSet((images.clamp(0, 1) * 255).to(torch.uint8), targets, names, name)

    return TaskData(TaskSpec(name="perf-synthetic", dataset="synthetic"), split(n_train, "train"),
                    split(n_val, "val"), split(n_val, "test"))


def train_case(case: str, n_train: int, n_val: int, epochs: int, threads: int) -> dict:
    import copy

    import torch

    torch.set_num_threads(threads)
    from vimw.backbones import create_backbone
    from vimw.modules import ConvpassConfig, ModuleSet
    from vimw.training import TaskModel, TrainConfig, fit, head_config_for

    backbone = create_backbone("efficientnet_lite0", image_size=SIZE)
    data = synthetic_task(n_train, n_val)
    head = head_config_for(backbone, "classification", data.num_classes)
    torch.manual_seed(0)
    cache = None
    if case.startswith("module"):
        plugin = ModuleSet.create(ConvpassConfig(first_block=backbone.num_blocks // 2, dropout=0.0), backbone.sites)
        model = TaskModel(backbone, head, plugin=plugin)
    elif case.startswith("linear_probe"):
        model = TaskModel(backbone, head)
    elif case == "full_ft":
        model = TaskModel(copy.deepcopy(backbone).unfreeze(), head)
    elif case == "baseline":
        return {"case": case, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    else:
        raise SystemExit(f"unknown case {case}")
    if case.endswith("_cache"):
        cache = 1 << 30
    config = TrainConfig(epochs=epochs, batch_size=BATCH, lr=1e-3 if case == "full_ft" else 1e-2, seed=0)
    # CPU time of each epoch's training steps: the engine switches the model to train mode
    # before an epoch's batches and validation switches it to eval mode after them.
    switches: list[tuple[bool, float]] = []
    train_mode = model.train

    def recording_train(mode: bool = True):
        switches.append((bool(mode), time.process_time()))
        return train_mode(mode)

    model.train = recording_train
    result = fit(model, data, config, progress=False, prefix_cache=cache)
    rates = [h["images_per_second"] for h in result.history]
    cpu_seconds, began = [], None
    for mode, at in switches:
        if mode:
            began = at
        elif began is not None:
            cpu_seconds.append(at - began)
            began = None
    cpu_rates = [n_train / max(sec, 1e-9) for sec in cpu_seconds[:epochs]]
    return {
        "case": case, "epochs": epochs, "n_train": n_train,
        "cpu_images_per_second_by_epoch": [round(r, 1) for r in cpu_rates],
        "cpu_images_per_second_after_first": round(statistics.median(cpu_rates[1:]), 1) if len(cpu_rates) > 1 else None,
        "images_per_second_by_epoch": [round(r, 1) for r in rates],
        "images_per_second_after_first": round(statistics.median(rates[1:]), 1) if len(rates) > 1 else None,
        "images_per_second_overall": round(result.images_per_second, 1),
        "val_accuracy_by_epoch": [h["val_accuracy"] for h in result.history],
        "best_val": result.best_score,
        "cache_bytes": model.prefix_cache.bytes_used if model.prefix_cache is not None else 0,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def bench_training(n_train: int, n_val: int, epochs: int, repeats: int, threads: int) -> dict:
    cases = ["baseline", "module_nocache", "module_cache", "linear_probe_nocache", "linear_probe_cache", "full_ft"]
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for r in range(repeats):
        for case in cases:
            if case in ("baseline", "full_ft") and r > 0:
                continue
            cmd = [sys.executable, __file__, "--train-case", case, "--n-train", str(n_train), "--n-val", str(n_val),
                   "--epochs", str(epochs), "--threads", str(threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                runs[case].append({"case": case, "error": done.stderr[-2000:]})
                continue
            runs[case].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"[training] {case}: {runs[case][-1].get('cpu_images_per_second_after_first')} img/CPU-s, "
                  f"{runs[case][-1].get('images_per_second_after_first')} img/s wall "
                  f"(peak RSS {runs[case][-1]['max_rss_mb']} MB)", flush=True)
    summary = {}
    for case, items in runs.items():
        ok = [i for i in items if "error" not in i]
        if not ok:
            summary[case] = {"error": items[0]["error"] if items else "not run"}
            continue
        first = ok[0]
        summary[case] = {**first}
        for key in ("cpu_images_per_second_after_first", "images_per_second_after_first", "images_per_second_overall"):
            values = [i[key] for i in ok if i.get(key) is not None]
            if values:
                summary[case][key] = round(statistics.median(values), 1)
        summary[case]["max_rss_mb"] = max(i["max_rss_mb"] for i in ok)
        summary[case]["runs"] = len(ok)
    return {"n_train": n_train, "n_val": n_val, "epochs": epochs, "batch": BATCH, "cases": summary, "raw": runs}


# -- zoo listing ---------------------------------------------------------------------------
def bench_zoo_list(sizes: list[int], repeats: int) -> dict:
    import torch

    from vimw.backbones import create_backbone
    from vimw.modules import LoRAConfig, ModuleSet
    from vimw.zoo import Zoo
    from vimw.zoo.index import write_index
    from vimw.zoo.manifest import ModuleManifest

    backbone = create_backbone("efficientnet_lite0", image_size=SIZE)
    out = {}
    root = Path(tempfile.mkdtemp(prefix="vimw-zoo-bench-"))
    try:
        # One real module through Zoo.add; the other index entries are copies of its
        # entry (timing of the index only: their module folders don't exist).
        zoo = Zoo(root / "seed")
        module = ModuleSet.create(LoRAConfig(rank=1, first_block=15), backbone.sites)
        zoo.add(ModuleManifest(name="real", module=module.config.to_dict(),
                               backbone={"arch": backbone.arch, "fingerprint": backbone.fingerprint(), "image_size": SIZE},
                               task={"name": "synthetic", "dataset": "synthetic"}, weights={},
                               metrics={"val_score": 0.5}), module)
        entry = zoo.read_index()["real"]
        floor = _cli_seconds([sys.executable, "-c", "import torch"], repeats)
        for n in sizes:
            directory = root / f"zoo{n}"
            shutil.copytree(zoo.root, directory)
            index = {"real": entry, **{f"m{i:05d}": {**entry, "task": f"task{i}"} for i in range(n - 1)}}
            write_index(directory, index)
            big = Zoo(directory)
            in_process = []
            for _ in range(max(5, repeats)):
                start = time.perf_counter()
                rows = big.list()
                in_process.append(time.perf_counter() - start)
            assert len(rows) == n
            start = time.perf_counter()
            big.load("real", backbone)  # lazy: only this module's files are read
            load_s = time.perf_counter() - start
            cli = _cli_seconds([sys.executable, "-m", "vimw.cli", "zoo", "list", "--zoo", str(directory)], repeats)
            out[str(n)] = {"zoo_list_in_process_ms": round(statistics.median(in_process) * 1e3, 2),
                           "vimw_zoo_list_cli_s": round(cli, 3), "load_one_module_ms": round(load_s * 1e3, 1)}
            print(f"[zoo list] {n}: {out[str(n)]}", flush=True)
        out["python_import_torch_s"] = round(floor, 3)
        out["cli_startup"] = bench_cli_startup(root / f"zoo{max(sizes)}", max(5, repeats))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


HEAVY_MODULES = ("torch", "transformers", "matplotlib", "numpy")


def bench_cli_startup(zoo_dir: Path, repeats: int) -> dict:
    """End-to-end seconds of the light commands, against a bare interpreter; and, from
    ``python -X importtime``, their total import time and whether a heavy package was imported."""
    commands = {"vimw --help": ["--help"], "vimw data list": ["data", "list"],
                "vimw zoo list (1,000 modules)": ["zoo", "list", "--zoo", str(zoo_dir)]}
    out = {"python_bare_s": round(_cli_seconds([sys.executable, "-c", "pass"], repeats), 3), "commands": {}}
    for name, argv in commands.items():
        cmd = [sys.executable, "-m", "vimw.cli", *argv]
        seconds = _cli_seconds(cmd, repeats)
        done = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], capture_output=True, text=True, cwd=ROOT)
        self_us, imported = 0, set()
        for line in done.stderr.splitlines():
            if line.startswith("import time:") and "|" in line and "self [us]" not in line:
                fields = [f.strip() for f in line[len("import time:"):].split("|")]
                self_us += int(fields[0])
                imported.add(fields[2].split(".")[0])
        out["commands"][name] = {"seconds": round(seconds, 3), "import_seconds": round(self_us / 1e6, 3),
                                 "heavy_imported": sorted(imported & set(HEAVY_MODULES))}
    print(f"[cli start-up] {out}", flush=True)
    return out


def _cli_seconds(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-1500:]}")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- ONNX ----------------------------------------------------------------------------------------
def bench_onnx(n: int = 4) -> dict:
    """The exported graph (``vimw.deploy.onnx_latency``) of downstream models over ``n``
    random zoo modules (convpass ens; lora ens, folded) against the plain backbone's graph."""
    try:
        from vimw.deploy import onnx_latency
    except ImportError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    import torch

    from vimw.aggregation import ZooAggregate, save_downstream
    from vimw.backbones import create_backbone
    from vimw.modules import ConvpassConfig, LoRAConfig
    from vimw.training import TaskModel, head_config_for
    from vimw.zoo import Zoo
    from vimw.zoo.manifest import ModuleManifest

    backbone = create_backbone("efficientnet_lite0", image_size=SIZE)
    out = {}
    root = Path(tempfile.mkdtemp(prefix="vimw-onnx-bench-"))
    try:
        for label, config in (("convpass_ens", ConvpassConfig()), ("lora_ens_folded", LoRAConfig(rank=4))):
            zoo = Zoo(root / label / "zoo")
            names = [f"m{i}" for i in range(n)]
            for name, module in zip(names, random_zoo(backbone, config, n)):
                zoo.add(ModuleManifest(name=name, module=module.config.to_dict(),
                                       backbone={"arch": backbone.arch, "fingerprint": backbone.fingerprint(),
                                                 "image_size": SIZE},
                                       task={"name": "synthetic"}, weights={}), module)
            agg = ZooAggregate([zoo.load(m, backbone) for m in names], names, backbone, mode="ens")
            with torch.no_grad():
                agg.gate_logits.normal_(generator=torch.Generator().manual_seed(n))
            model = TaskModel(backbone, head_config_for(backbone, "classification", 10), plugin=agg).eval()
            index = zoo.read_index()
            save_downstream(root / label / "model", model, {
                "method": "ens", "aggregation": {"mode": "ens", "top_k": 2, "single_index": None},
                "zoo": {"path": str(zoo.root), "modules": [{"name": m, "sha256": index[m]["sha256"]} for m in names]},
                "class_names": [str(i) for i in range(10)]})
            try:
                out[label] = onnx_latency(root / label / "model", batch=BATCH, repeats=5, rounds=3, threads=1)
            except Exception as exc:  # noqa: BLE001 - recorded, the rest of the benchmark goes on
                out[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"[onnx] {label}: {out[label]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


# -- report ---------------------------------------------------------------------------------------
def targets(report: dict) -> list[dict]:
    rows = []
    inf = report["inference"]["by_n"]["channels_last"]
    n16 = inf.get("16") or inf[max(inf, key=int)]
    ens_speed = n16["ens_looped"]["ms"] / n16["ens_batched"]["ms"]
    bound = n16["ens_looped"]["latency_ratio"] / n16["ens_batched"]["flop_ratio"]
    rows.append({"target": "batched ens at N=16 >= 2x faster than looped",
                 "value": f"{ens_speed:.2f}x (batched does {n16['ens_batched']['flop_ratio']}x the backbone's FLOPs; "
                          f"at the backbone's own time per FLOP it would be {bound:.2f}x faster than the loop)",
                 "met": ens_speed >= 2.0})
    tof = n16["ens_batched"]["time_over_flops"]
    rows.append({"target": "batched ens at N=16 within 1.3x of its FLOP prediction",
                 "value": f"{n16['ens_batched']['latency_ratio']}x time vs {n16['ens_batched']['flop_ratio']}x FLOPs "
                          f"(= {tof}x)", "met": tof <= 1.3})
    topk = n16["topk2_batched"]["latency_ratio"]
    rows.append({"target": "topk k=2 at N=16 <= 1.2x backbone latency",
                 "value": f"{topk}x ({n16['topk2_batched']['flop_ratio']}x the backbone's FLOPs)", "met": topk <= 1.2})
    fold = n16["lora_folded"]
    rows.append({"target": "folded lora 1.00x backbone, outputs within 1e-5",
                 "value": f"{fold['latency_ratio']}x, max abs err {fold['max_abs_err_vs_unfolded']:.2e}",
                 "met": abs(fold["latency_ratio"] - 1) <= 0.05 and fold["max_abs_err_vs_unfolded"] <= 1e-5})
    train = report["training"]["cases"]
    key = "cpu_images_per_second_after_first"
    if train.get("module_cache", {}).get(key) and train.get("module_nocache", {}).get(key):
        speed = train["module_cache"][key] / train["module_nocache"][key]
        wall = train["module_cache"]["images_per_second_after_first"] / train["module_nocache"]["images_per_second_after_first"]
        same = train["module_cache"]["val_accuracy_by_epoch"] == train["module_nocache"]["val_accuracy_by_epoch"]
        rows.append({"target": "prefix cache >= 2x training img/s (modules on the last half), same val accuracy",
                     "value": f"{speed:.2f}x per CPU-second ({wall:.2f}x wall clock), epochs after the first; "
                              f"val accuracy identical: {same}",
                     "met": speed >= 2.0 and same})
    fmt = report.get("memory_format")
    if fmt:
        rows.append({"target": "channels_last on by default where it measures faster",
                     "value": f"on by default (EfficientNet-Lite); vs NCHW: inference {fmt['inference']['speedup']}x, "
                              f"module training step {fmt['training_step']['speedup']}x faster",
                     "met": fmt["inference"]["speedup"] > 1.0 and fmt["training_step"]["speedup"] > 1.0})
    zoo = report["zoo_list"]
    startup = zoo.get("cli_startup")
    if startup:
        worst = max(c["seconds"] for c in startup["commands"].values())
        heavy = sorted({m for c in startup["commands"].values() for m in c["heavy_imported"]})
        rows.append({"target": "vimw --help, data list, zoo list answer at once (< 0.5 s), no torch/transformers/"
                               "matplotlib imported",
                     "value": ", ".join(f"{k} {v['seconds']} s" for k, v in startup["commands"].items())
                              + f" (bare python {startup['python_bare_s']} s); heavy imports: {heavy or 'none'}",
                     "met": worst < 0.5 and not (set(heavy) & {"torch", "transformers", "matplotlib"})})
    if "1000" in zoo:
        rows.append({"target": "vimw zoo list on 1,000 modules < 1 s",
                     "value": f"Zoo.list {zoo['1000']['zoo_list_in_process_ms']} ms in process; CLI end to end "
                              f"{zoo['1000']['vimw_zoo_list_cli_s']} s (it imports no torch; `import torch` alone "
                              f"takes {zoo['python_import_torch_s']} s)", "met": zoo["1000"]["vimw_zoo_list_cli_s"] < 1.0})
    return rows


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# vimw performance benchmark (issues 6 and 14)", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}  ",
             f"Machine: {json.dumps(report['machine'])}  ", f"Total wall time: {report['seconds']:.0f} s", "",
             "Ratios are medians of interleaved rounds in one process, timed in CPU seconds of the "
             "measuring thread (torch on one thread; other processes on this shared machine do not count); "
             "wall-clock medians are in perf.json. Random modules (timing only). EfficientNet-Lite0, "
             f"{SIZE} px, batch {BATCH}, inference mode.", "", "## Targets", "",
             "| target | reached | met |", "|---|---|---|"]
    for row in report["targets"]:
        lines.append(f"| {row['target']} | {row['value']} | {'yes' if row['met'] else 'NO'} |")
    for layout, by_n in report["inference"]["by_n"].items():
        lines += ["", f"## Inference (backbone feature maps {layout})", "",
                  "| N | mode | CPU ms/batch | wall ms/batch | img/CPU-s | x backbone | GFLOPs | x backbone FLOPs | time/FLOP ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n, rows in by_n.items():
            for mode, r in rows.items():
                lines.append(f"| {n} | {mode} | {r['ms']} | {r.get('wall_ms', '')} | {r['images_per_s']} | "
                             f"{r['latency_ratio']} | {r['gflops']} | {r['flop_ratio']} | {r['time_over_flops']} |")
    sites = report["inference"].get("sites_at_max_n")
    if sites:
        base = report["inference"]["by_n"]["channels_last"][str(max(map(int, report["inference"]["by_n"]["channels_last"])))]
        backbone_ms, backbone_gf = base["backbone"]["ms"], base["backbone"]["gflops"]
        lines += ["", "## Where the plug-in's time goes (largest N, channels-last; per site, CPU ms and MFLOPs)", "",
                  f"The plain backbone: {backbone_ms} ms, {backbone_gf * 1e3:.0f} MFLOPs per batch "
                  f"({backbone_gf / backbone_ms * 1e3:.1f} GFLOP/s).", "",
                  "| mode | blocks | plug-in ms | plug-in MFLOPs | GFLOP/s | share of backbone time |", "|---|---|---|---|---|---|"]
        for mode, by_site in sites.items():
            for label, lo, hi in (("0-2 (32x32 and 16x16 maps)", 0, 2), ("3-15 (8x8 to 2x2 maps)", 3, 99)):
                part = [r for r in by_site.values() if lo <= r["block"] <= hi]
                ms, mf = sum(r["ms"] for r in part), sum(r["mflops"] for r in part)
                lines.append(f"| {mode} | {label} | {ms:.2f} | {mf:.0f} | {mf / max(ms, 1e-9):.1f} | "
                             f"{ms / backbone_ms:.3f} |")
    fmt = report.get("memory_format")
    if fmt:
        lines += ["", "## Memory format of the backbone's feature maps (channels-last is the default)", "",
                  "| what | channels_last CPU ms | NCHW CPU ms | channels_last speed-up |", "|---|---|---|---|"]
        for what, r in fmt.items():
            lines.append(f"| {what} | {r['channels_last_ms']} | {r['nchw_ms']} | {r['speedup']}x |")
    onnx = report.get("onnx")
    if onnx:
        lines += ["", f"## ONNX (onnxruntime, 1 thread, batch {BATCH}): exported downstream graph vs the plain backbone's graph", "",
                  "| model | exporter | exported ms | backbone ms | ratio |", "|---|---|---|---|---|"]
        for label, r in onnx.items():
            if "error" in r:
                lines.append(f"| {label} | error: {r['error']} | | | |")
            else:
                lines.append(f"| {label} ({r.get('kind')}) | {r.get('exporter')} | {r['exported_ms']:.2f} | "
                             f"{r['backbone_ms']:.2f} | {r['ratio']:.3f} |")
    comp = report.get("compile")
    if comp:
        lines += ["", "## torch.compile (plain backbone, channels_last, inference)", "", f"`{json.dumps(comp)}`"]
    train = report["training"]
    lines += ["", f"## Training throughput ({train['n_train']} train / {train['n_val']} val images, "
                  f"{train['epochs']} epochs, batch {train['batch']})", "",
              "Peak memory: `ru_maxrss` of the case's own subprocess (whole process: Python, torch, data, "
              "model, cache); `baseline` is the same process without training.", "",
              "| case | img/CPU-s (epochs after the 1st) | img/s wall (epochs after the 1st) | img/s wall overall | val accuracy by epoch | cache MB | peak RSS MB |",
              "|---|---|---|---|---|---|---|"]
    for case, r in train["cases"].items():
        if "error" in r:
            lines.append(f"| {case} | error | | | | | |")
            continue
        lines.append(f"| {case} | {r.get('cpu_images_per_second_after_first', '')} | {r.get('images_per_second_after_first', '')} | "
                     f"{r.get('images_per_second_overall', '')} | "
                     f"{r.get('val_accuracy_by_epoch', '')} | {round(r.get('cache_bytes', 0) / 2**20, 1)} | {r['max_rss_mb']} |")
    lines += ["", "## Zoo listing", "", "| modules | Zoo.list (ms, in process) | `vimw zoo list` (s, end to end) | Zoo.load of one module (ms) |",
              "|---|---|---|---|"]
    for n, r in report["zoo_list"].items():
        if n.isdigit():
            lines.append(f"| {n} | {r['zoo_list_in_process_ms']} | {r['vimw_zoo_list_cli_s']} | {r['load_one_module_ms']} |")
    lines += ["", f"`python -c 'import torch'` alone: {report['zoo_list'].get('python_import_torch_s')} s.", ""]
    startup = report["zoo_list"].get("cli_startup")
    if startup:
        lines += ["## CLI start-up", "", f"Bare `python -c pass`: {startup['python_bare_s']} s. Import time: the sum of "
                  "`python -X importtime` self times.", "",
                  "| command | seconds (end to end, median) | import time (s) | heavy packages imported |", "|---|---|---|---|"]
        for name, r in startup["commands"].items():
            lines.append(f"| `{name}` | {r['seconds']} | {r['import_seconds']} | {', '.join(r['heavy_imported']) or 'none'} |")
        lines.append("")
    lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


NOTES = [
    "Batched execution stacks the N modules of a site: one matrix product for the N down-projections "
    "(channels-last maps are N x H x W x C in memory), one grouped 3x3 conv (groups=N), one matrix product over "
    "the N*d channels for the up-projections with the gates folded in as per-module scaling. QuickGELU's 1.702 "
    "is folded into the weights around each activation, so each activation is one in-place silu. In inference "
    "the gates, the gathered top-k weights and the gate-folded matrices are computed once while the logits and "
    "the weights stay unchanged, and the batch runs in slices whose N*d-channel intermediates fit in ~1 MiB "
    "(at least 16 images).",
    "topk gathers only the k active modules' weights; merge averages the stacked parameters with one "
    "tensordot per parameter; lora_folded is the plain backbone with the gate-weighted updates added to the "
    "projection weights (BN2 scale divided out on EfficientNet-Lite).",
    "The frozen backbone itself got faster in this round (so every 'x backbone' ratio is against a faster "
    "baseline than in earlier runs): channels-last feature maps by default, each batch norm folded into its "
    "convolution while frozen, ReLU6 / residual / plug-in output applied in place (no fresh buffers).",
    "torch.compile: see its section; not switched on inside vimw (its start-up cost is paid per process).",
    "Training with the prefix cache: the first epoch fills the cache (as slow as no cache); the speed-up is "
    "for later epochs, and it is bounded by what the cache removes: the forward pass of the frozen prefix "
    "(stem and blocks 0-7), against the forward and backward of blocks 8-15 and the optimiser step that remain. "
    "Validation uses the cache too (not counted in the throughput).",
    "`vimw --help`, `vimw data list` and `vimw zoo list` build only the parser of the command being run and "
    "import neither torch nor numpy (task specs live in the torch-free vimw.data.specs).",
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer N, rounds and images (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stabler on a shared machine)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--train-case")
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-val", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if args.train_case:
        print(json.dumps(train_case(args.train_case, args.n_train, args.n_val, args.epochs, args.threads)))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report = {"command": " ".join(["python", "benchmarks/perf.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(args.threads), "notes": NOTES}
    quick = args.quick
    report["inference"] = bench_inference([1, 4, 16] if quick else [1, 2, 4, 8, 16], 3 if quick else 7)
    report["memory_format"] = bench_memory_format(3 if quick else 7)
    report["onnx"] = bench_onnx()
    if not args.no_compile and not quick:
        report["compile"] = bench_compile(5)
        print(f"[compile] {report['compile']}", flush=True)
    report["training"] = bench_training(256 if quick else 512, 64 if quick else 128, 3, 1 if quick else 3, args.threads)
    report["zoo_list"] = bench_zoo_list([10, 100, 1000], 2 if quick else 3)
    report["seconds"] = time.perf_counter() - started
    report["targets"] = targets(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "perf.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_markdown(report, RESULTS / "perf.md")
    for row in report["targets"]:
        print(f"{'MET ' if row['met'] else 'MISS'} {row['target']}: {row['value']}")
    print(f"wrote {RESULTS / 'perf.json'} and perf.md in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
