"""Serving benchmark (issue 21): one ``vimw serve`` process holding many models against one process per model.

    python benchmarks/serve.py --models-dir runs/serve/models [--seconds 6] [--rounds 3] [--threads 1]

For 1, 4 and 16 loaded models under 1, 8 and 32 concurrent clients (loopback HTTP clients,
one image per request, each client asking one model, models taken in turn; ``--client``),
it measures throughput (images/s) and p50/p99 latency, and the server's own counters
(batches, backbone passes, time in forward passes). The same 16-model load then goes
to 16 single-model ``vimw serve`` processes (client ``i`` to process ``i mod 16``), and
the resident memory of both set-ups is read (PSS: shared pages split between the
processes that map them; RSS and USS next to it). The in-process reference for latency
is ``predict_logits`` on one decoded image. Every process runs torch on ``--threads``.
All set-ups stay up for the whole run and every configuration is measured once per
round, rounds interleaved, so that a shared machine's changing load falls on all of
them alike; the tables give each number's median over the rounds.

Writes benchmarks/results/serve.json (every number, a ``targets`` list) and serve.md.

On a GPU (``--device cuda``: every server's backbone, plug-ins and heads there) the models
can be built in the same run on a ViT-B-sized HF backbone with random weights, from a
local config (``--build vit-b``, see :func:`build_hf_models`); the requests are then
synthetic RGB PNGs at the backbone's size (``--synthetic-images``). The servers' GPU memory
(torch's allocator, ``/v1/stats``; with ``nvidia-smi``, each process's whole share) is
recorded beside their resident memory::

    python benchmarks/serve.py --build vit-b --models-dir runs/serve-gpu --device cuda \
        --synthetic-images 224 --wide-threads 0 --rounds 2 --seconds 4 --name serve-gpu

The 16 models of the recorded CPU run (any 16 saved models on one backbone will do)::

    vimw zoo import runs/zoo --zoo runs/serve/zoo --modules fmnist-apparel mnist-segmentation \
        fmnist-rotation fmnist-distill            # the demo's modules, from a default zoo build
    for task in fmnist-footwear-bags digits8x8 mnist fmnist; do for seed in 0 1 2 3; do
      vimw aggregate --zoo runs/serve/zoo --task $task --shots 5 --epochs 3 --seed $seed \
        --method $(echo ens uniform topk merge | cut -d' ' -f$((seed + 1))) --out runs/serve/models/$task-s$seed
    done; done
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "vimwbenchboundary"


# -- what the clients send ---------------------------------------------------------------------------
def synthetic_images(count: int, size: int, seed: int = 0):
    """``count`` RGB images (uint8 ``N x size x size x 3``): smooth random colour fields, photo-like in size."""
    import numpy as np
    import torch

    coarse = torch.from_numpy(np.random.default_rng(seed).random((count, 3, 8, 8), dtype=np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (fine.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def request_bodies(count: int, synthetic_size: int = 0) -> list[bytes]:
    """``count`` multipart bodies, each one PNG as a user would send it: a Fashion-MNIST test image (28 x 28
    grey), or with ``synthetic_size`` a synthetic RGB image of that size (no dataset needed)."""
    import numpy as np
    from PIL import Image

    from vimw.data import load_task

    if synthetic_size:
        images = list(synthetic_images(count, synthetic_size))
    else:
        images = [x[0] for x in load_task("fmnist-footwear-bags").test.images[:count].numpy()]
    bodies = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"img{i}.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()
        bodies.append(head + buffer.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode())
    return bodies


# -- models on an HF backbone built here (a bare GPU machine has no zoo) ------------------------------------
# HF ViT configs (random weights): ViT-B/16 at 224 px, and a tiny one that runs the same code in seconds.
VIT_PRESETS = {
    "vit-b": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "image_size": 224, "patch_size": 16},
    "vit-tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "image_size": 32, "patch_size": 8},
}
# name -> kind. A model aggregates modules of one kind (one tap per model): LoRA (inner) or convpass (input).
BUILT_MODULES = {"convpass-a": "convpass", "convpass-b": "convpass", "lora-a": "lora", "lora-b": "lora"}
BUILT_METHODS = ("ens", "uniform", "topk", "merge")


def built_record(root: Path, preset: str) -> dict:
    """What ``build_hf_models`` made: the backbone's config and the zoo's modules (for the results)."""
    import json

    from vimw.zoo import Zoo

    config = json.loads((root / "backbone" / "config.json").read_text())
    zoo = Zoo(root / "zoo")
    return {"backbone": f"HF ViTModel ({preset}) from a local config, random weights (seed 0)",
            "config": {k: config.get(k) for k in (*VIT_PRESETS[preset], "hidden_act")},
            "zoo_modules": {name: {"kind": kind, "train_images": zoo.manifest(name).task["train_images"]}
                            for name, kind in BUILT_MODULES.items()},
            "methods": BUILT_METHODS,
            "training": "zoo modules: 1 epoch on their synthetic task; models: 1 epoch at 4 shots of 3 classes; "
                        "throughput and memory, not accuracy, are measured"}


def write_synthetic_task(path: Path, seed: int, classes: int = 3, per_class: int = 8) -> str:
    """A small ``npz:`` task of synthetic RGB images (32 px): enough to train a step, not to learn anything."""
    import numpy as np

    labels = np.repeat(np.arange(classes), per_class)
    np.savez(path, images=synthetic_images(len(labels), 32, seed), labels=labels.astype(np.int64),
             class_names=np.array([f"class{c}" for c in range(classes)]))
    return f"npz:{path}"


def build_hf_models(root: Path, preset: str, count: int, device: str) -> Path:
    """``count`` downstream models on a randomly initialised HF ViT (``VIT_PRESETS[preset]``), built on ``device``.

    ``root/backbone`` is the ViT (``save_pretrained``; the models name it as ``hf:<dir>``),
    ``root/zoo`` two convpass and two LoRA modules trained one epoch on a synthetic task,
    and ``root/models`` the downstream models: convpass and LoRA in turn, methods ens,
    uniform, topk and merge, each trained one epoch at 4 shots of its own synthetic task.
    Throughput and memory, not accuracy, are what they are for. Parts already there are kept.
    """
    import torch

    from vimw.backbones import create_backbone
    from vimw.backbones.hf_vit import save_tiny_hf
    from vimw.data import load_task
    from vimw.methods import train_downstream
    from vimw.training import TrainConfig
    from vimw.workflows.aggregate import save_model
    from vimw.workflows.midstream import MidstreamRecipe, train_module
    from vimw.zoo import Zoo

    tasks, models = root / "tasks", root / "models"
    for folder in (tasks, models):
        folder.mkdir(parents=True, exist_ok=True)
    if not (root / "backbone" / "config.json").is_file():
        save_tiny_hf("vit", root / "backbone", seed=0, **VIT_PRESETS[preset])
    backbone = create_backbone(f"hf:{root / 'backbone'}").to(device)
    zoo = Zoo(root / "zoo")
    for seed, (name, kind) in enumerate(BUILT_MODULES.items()):
        if name not in zoo:
            train = TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=seed)
            task = write_synthetic_task(tasks / f"{name}.npz", seed)
            train_module(zoo, MidstreamRecipe(name, task, kind=kind, train=train), backbone=backbone, progress=False)
    for i in range(count):
        kind, method = ("convpass", "lora")[i % 2], BUILT_METHODS[(i // 2) % len(BUILT_METHODS)]
        out = models / f"m{i:02d}-{kind}-{method}"
        if (out / "manifest.json").is_file():
            continue
        config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=i)
        data = load_task(write_synthetic_task(tasks / f"task{i:02d}.npz", 100 + i), shots=4, seed=i)
        names = [n for n, k in BUILT_MODULES.items() if k == kind]
        result = train_downstream(method, backbone, data, config, zoo=zoo, names=names)
        save_model(out, result, data, config, shots=4, test={})
        print(f"built {out.name} ({time.strftime('%H:%M:%S')})", flush=True)
    if device != "cpu":
        torch.cuda.empty_cache()
    return models


# -- servers -----------------------------------------------------------------------------------------
class Replica:
    """One ``vimw serve`` process on a free loopback port."""

    def __init__(self, models: list[Path], threads: int, max_batch: int, device: str = "cpu") -> None:
        argv = [sys.executable, "-m", "vimw.cli", "serve", "--port", "0", "--threads", str(threads),
                "--max-batch", str(max_batch), "--log-level", "warning", "--device", device,
                "--models", *[f"{p.name}={p}" for p in models]]
        self.names = [p.name for p in models]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.url = None

    def wait(self) -> "Replica":
        while self.url is None:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"vimw serve exited with {self.process.wait()}")
            if line.startswith("serving"):
                self.url = line.split(" on ")[1].split()[0]
        return self

    def memory(self) -> dict:
        import psutil

        info = psutil.Process(self.process.pid).memory_full_info()
        return {"rss_mb": info.rss / 2**20, "pss_mb": info.pss / 2**20, "uss_mb": info.uss / 2**20}

    def device_memory(self) -> dict:
        """What the server says of its device's memory (``/v1/stats``: torch's allocator, MiB)."""
        import httpx

        stats = httpx.get(f"{self.url}/v1/stats").json()
        return {k: v for k, v in stats.items() if k.startswith("cuda_")}

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_all(groups: list[list[Path]], threads: int, max_batch: int, device: str = "cpu") -> list[Replica]:
    """Start one process per group at once, then wait for each to listen."""
    replicas = [Replica(g, threads, max_batch, device) for g in groups]
    return [r.wait() for r in replicas]


# -- load ----------------------------------------------------------------------------------------------
async def raw_post(reader, writer, request: bytes) -> int:
    """One HTTP/1.1 request on a kept-alive connection; the response's status (its body read and dropped)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


async def drive(targets: list[str], bodies: list[bytes], seconds: float, warmup: float, client: str = "raw") -> dict:
    """``len(targets)`` clients, client ``i`` posting to ``targets[i]`` back to back; latencies after the warm-up.

    ``raw``: one kept-alive asyncio connection per client sending prepared HTTP/1.1 bytes
    (about 0.2 ms of CPU per request here); ``httpx``: httpx's AsyncClient (4-6 ms of CPU per
    request at 32 clients on this machine: more than the server itself, on the same two cores).
    """
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    content_type = f"multipart/form-data; boundary={BOUNDARY}"

    async def loop(index: int, send) -> None:
        turn = index
        while (now := time.perf_counter()) < stop_at:
            status = await send(bodies[turn % len(bodies)])
            turn += len(targets)
            if status != 200:
                errors[0] += 1
            elif now >= measure_from:
                latencies.append(time.perf_counter() - now)

    async def raw_client(index: int) -> None:
        url = urlsplit(targets[index])
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        path = f"{url.path}?{url.query}" if url.query else url.path
        requests = {id(b): (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: {content_type}\r\n"
                            f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies}
        try:
            await loop(index, lambda body: raw_post(reader, writer, requests[id(body)]))
        finally:
            writer.close()

    if client == "raw":
        await asyncio.gather(*(raw_client(i) for i in range(len(targets))))
    else:
        import httpx

        limits = httpx.Limits(max_connections=len(targets) + 4, max_keepalive_connections=len(targets) + 4)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            async def httpx_client(index: int) -> None:
                async def send(body: bytes) -> int:
                    response = await http.post(targets[index], content=body, headers={"content-type": content_type})
                    return response.status_code

                await loop(index, send)

            await asyncio.gather(*(httpx_client(i) for i in range(len(targets))))
    wall = time.perf_counter() - measure_from
    latencies.sort()
    return {"requests": len(latencies), "images_per_s": len(latencies) / wall, "errors": errors[0],
            "p50_ms": 1e3 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
            "measured_seconds": wall}


def models_paths(replica: Replica) -> dict[str, str]:
    """Which path each model of a server takes (shared pass or its own folded copy), as it says."""
    import httpx

    return {m["name"]: m["path"] for m in httpx.get(f"{replica.url}/v1/models").json()["models"]}


def stats_of(replicas: list[Replica]) -> dict:
    import httpx

    keys = ("requests", "images", "batches", "backbone_passes", "compute_seconds", "compute_cpu_seconds")
    total = dict.fromkeys(keys, 0.0)
    for replica in replicas:
        stats = httpx.get(f"{replica.url}/v1/stats").json()
        for key in keys:
            total[key] += stats[key]
    total["cpu_seconds"] = sum(r.cpu_seconds() for r in replicas)
    return total


def run_cell(replicas: list[Replica], clients: int, bodies: list[bytes], seconds: float, warmup: float,
             client: str = "raw") -> dict:
    """Load ``replicas`` with ``clients`` clients; the measurement plus the servers' counters over it."""
    names = [(r, n) for r in replicas for n in r.names]
    targets = [f"{r.url}/v1/models/{n}/predict?top=1" for r, n in (names[i % len(names)] for i in range(clients))]
    before, client_cpu = stats_of(replicas), time.process_time()
    result = asyncio.run(drive(targets, bodies, seconds, warmup, client))
    after, client_cpu = stats_of(replicas), time.process_time() - client_cpu
    delta = {k: after[k] - before[k] for k in before}
    wall = result["measured_seconds"] + warmup
    result.update(
        clients=clients, models=len(names), processes=len(replicas),
        mean_batch_images=delta["images"] / max(1, delta["batches"]),
        backbone_passes_per_request=delta["backbone_passes"] / max(1, delta["requests"]),
        forward_busy=delta["compute_seconds"] / wall / len(replicas),  # share of the worker thread's time
        server_cpu_per_s=delta["cpu_seconds"] / wall, client_cpu_per_s=client_cpu / wall,
        forward_ms_per_image=1e3 * delta["compute_seconds"] / max(1, delta["images"]),
        forward_cpu_ms_per_image=1e3 * delta["compute_cpu_seconds"] / max(1, delta["images"]),
        # Everything else the server processes spent CPU on (HTTP, parsing, decoding, answers), per request.
        other_cpu_ms_per_request=1e3 * (delta["cpu_seconds"] - delta["compute_cpu_seconds"])
        / max(1, delta["requests"]),
    )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


def png_of(body: bytes) -> bytes:
    """The image file inside one of :func:`request_bodies`' multipart bodies."""
    return body[body.index(b"\r\n\r\n") + 4: body.rindex(b"\r\n--")]


def in_process_reference(model_dir: Path, body: bytes, device: str = "cpu"):
    """A function timing, in this process, one decoded image through ``predict_logits`` (the
    issue's reference) and through the model's forward alone (stricter: no train/eval toggling),
    the model on ``device`` (the image goes there in the call; the logits come back to the CPU)."""
    import torch

    from vimw.aggregation import load_downstream
    from vimw.data.user_data import decode_image
    from vimw.evaluation import predict_logits

    model, _ = load_downstream(model_dir)
    model.to(device)
    image = decode_image(png_of(body), model.backbone.preprocess.size)[None]
    calls = {"predict_logits": lambda: predict_logits(model, image),
             "forward": lambda: model(model.backbone.preprocess(image.to(device))).cpu()}

    def p50_ms(repeats: int = 100) -> dict[str, float]:
        times = {name: [] for name in calls}  # both calls end on the CPU: no GPU work left running
        with torch.inference_mode():
            for i in range(repeats + 5):
                for name, call in calls.items():  # interleaved: the same load on both
                    started = time.perf_counter()
                    call()
                    if i >= 5:
                        times[name].append(time.perf_counter() - started)
        return {name: 1e3 * statistics.median(t) for name, t in times.items()}

    return p50_ms


def forward_breakdown(models: list[Path], bodies: list[bytes], batch: int, repeats: int = 7,
                      device: str = "cpu") -> dict:
    """ms per image of the server's batch function in this process: what one pass costs, and why.

    The plain backbone, one model's rows, every model's rows mixed (each image another
    model), and one model at one image (what each single-model process mostly runs).
    On the CPU the clock is the thread's CPU time; on CUDA the wall clock, the GPU
    synchronised before and after each call.
    """
    import torch

    from vimw.data.user_data import decode_image
    from vimw.serve.batcher import Job, run_batch
    from vimw.serve.device import synchronize
    from vimw.serve.registry import ModelRegistry

    registry = ModelRegistry(device=device)
    served = [registry.load(m) for m in models]
    size = registry.backbone.preprocess.size
    images = torch.stack([decode_image(png_of(b), size).expand(3, -1, -1) for b in bodies[:batch]])
    pixels = registry.backbone.preprocess(images.to(registry.device))
    on_cpu = registry.device.type == "cpu"
    clock = time.thread_time if on_cpu else time.perf_counter
    cases = {
        "backbone": (lambda: registry.backbone.forward_features(pixels), batch),
        "one_model": (lambda: run_batch([Job(served[0], images)]), batch),
        "mixed_models": (lambda: run_batch([Job(served[i % len(served)], images[i:i + 1]) for i in range(batch)]),
                         batch),
        "one_model_one_image": (lambda: run_batch([Job(served[0], images[:1])]), 1),
    }
    out = {}
    with torch.inference_mode():
        for name, (call, count) in cases.items():
            call()
            times = []
            for _ in range(repeats):
                synchronize(registry.device)
                started = clock()
                call()
                synchronize(registry.device)
                times.append(clock() - started)
            out[name] = round(1e3 * statistics.median(times) / count, 3)
    return {"batch": batch, "models": len(models), "device": str(registry.device),
            "clock": "thread CPU time" if on_cpu else "wall clock, GPU synchronised", "ms_per_image": out}


def breakdown_ms(breakdown: dict) -> dict:
    """The breakdown's ms per image (runs before the device option named it ``cpu_ms_per_image``)."""
    return breakdown.get("ms_per_image") or breakdown["cpu_ms_per_image"]


# -- report ----------------------------------------------------------------------------------------------
def targets(cells: list[dict], separate: list[dict], memory: dict, reference: dict) -> list[dict]:
    one = next(c for c in cells if c["models"] == 1 and c["clients"] == 1 and c["setup"] == "server")
    shared = next(c for c in cells if c["models"] == 16 and c["clients"] == 32 and c["setup"] == "server")
    apart = next(c for c in separate if c["clients"] == 32)
    speed = shared["images_per_s"] / apart["images_per_s"]
    # On a shared machine the set-ups get unequal CPU: the same comparison per CPU-second of the servers.
    per_cpu = ((shared["images_per_s"] / shared["server_cpu_per_s"])
               / (apart["images_per_s"] / apart["server_cpu_per_s"]))
    share = memory["server_16"]["pss_mb"] / memory["processes_16"]["pss_mb"]
    latency = one["p50_ms"] / reference["p50_ms"]
    strict = one["p50_ms"] / reference["forward_p50_ms"]
    return [
        {"target": "16 models, 32 clients: one server >= 3x the images/s of 16 single-model processes",
         "value": f"{speed:.2f}x ({shared['images_per_s']:.1f} vs {apart['images_per_s']:.1f} images/s; per CPU-second "
                  f"of the server processes {per_cpu:.2f}x)",
         "met": speed >= 3},
        {"target": "one server with 16 models <= 1/4 of the memory of 16 single-model processes (PSS)",
         "value": f"{share:.3f} ({memory['server_16']['pss_mb']:.0f} MB vs {memory['processes_16']['pss_mb']:.0f} MB)",
         "met": share <= 0.25},
        {"target": "1 model, 1 client: p50 latency within 1.5x of predict_logits in-process",
         "value": f"{latency:.2f}x ({one['p50_ms']:.2f} ms vs {reference['p50_ms']:.2f} ms; against the forward "
                  f"alone, {reference['forward_p50_ms']:.2f} ms: {strict:.2f}x)", "met": latency <= 1.5},
    ]


def on_gpu(payload: dict) -> bool:
    return payload.get("device", "cpu") != "cpu"


def gpu_server_limit(server: dict) -> str:
    """What bounds one server on a GPU, from its counters: the forward pass, or everything around it."""
    busy = server["forward_busy"]
    verdict = ("the compute thread bounds throughput" if busy >= 0.8 else
               f"the compute thread idled {1 - busy:.0%} of the time, so the forward pass was not the limit: "
               "requests reached it no faster through the HTTP side")
    return (f"- One server, {server['models']} models, {server['clients']} clients: its one compute thread ran "
            f"forward passes {busy:.0%} of the time ({server['mean_batch_images']:.1f} images per pass, "
            f"{server['forward_ms_per_image']:.2f} ms wall per image, of which {server['forward_cpu_ms_per_image']:.2f} "
            f"ms CPU time of that thread: launching kernels and waiting for the GPU), while everything else (HTTP, "
            f"parsing, decoding, answers) took {server['other_cpu_ms_per_request']:.2f} ms of CPU per request; the "
            f"process used {server['server_cpu_per_s']:.2f} CPU-seconds per second: {verdict}.")


def limits(payload: dict) -> list[str]:
    """What bounds the throughput of each set-up at the most clients, in words, from the measurements."""
    cells, apart = payload["cells"], payload["separate_processes"][-1]
    server = max((c for c in cells if c["setup"] == "server"), key=lambda c: (c["models"], c["clients"]))
    b = breakdown_ms(payload["forward_breakdown"])
    clock = payload["forward_breakdown"].get("clock", "thread CPU time")
    waited = 1 - server["forward_cpu_ms_per_image"] / server["forward_ms_per_image"]
    lines = [
        gpu_server_limit(server) if on_gpu(payload) else
        f"- One server, {server['models']} models, {server['clients']} clients: its one compute thread ran forward "
        f"passes {server['forward_busy']:.0%} of the time ({server['mean_batch_images']:.1f} images per pass, "
        f"{server['forward_cpu_ms_per_image']:.2f} ms of CPU per image), while everything else (HTTP, parsing, "
        f"decoding, answers) took {server['other_cpu_ms_per_request']:.2f} ms of CPU per request on the event "
        f"loop: the compute thread bounds throughput. It waited for a core {waited:.0%} of its busy time "
        f"({server['forward_ms_per_image']:.2f} ms wall per image): the process got {server['server_cpu_per_s']:.2f} "
        f"CPU-seconds per second on this shared machine.",
        f"- {apart['processes']} single-model processes, {apart['clients']} clients: {apart['mean_batch_images']:.1f} "
        f"images per pass, {apart['forward_cpu_ms_per_image']:.2f} ms of CPU per image in the forward and "
        f"{apart['other_cpu_ms_per_request']:.2f} ms per request outside it; together they got "
        f"{apart['server_cpu_per_s']:.2f} CPU-seconds per second"
        + (f" ({apart['forward_ms_per_image']:.2f} ms wall per image in the forward, the processes sharing one GPU)."
           if on_gpu(payload) else ": more processes, a larger share of a contested machine."),
        f"- In process, batch {payload['forward_breakdown']['batch']} (ms per image, {clock}): backbone {b['backbone']}, "
        f"one model {b['one_model']}, {payload['forward_breakdown']['models']} models mixed {b['mixed_models']}, "
        f"one model at one image {b['one_model_one_image']}. The server's advantage is the batch across models; "
        f"routing the rows of many models still costs {b['mixed_models'] - b['one_model']:.2f} ms per image over one "
        "model (each model's own projection per site, and merge-mode models, whose parameters differ, on their own).",
    ]
    wide = [c for c in cells if c["setup"] == "wide"]
    if wide:
        w = wide[0]
        lines.append(f"- The same server with {w['threads']} torch threads: {w['images_per_s']:.1f} images/s "
                     f"({w['server_cpu_per_s']:.2f} CPU-seconds per second).")
    return lines


def markdown(payload: dict) -> str:
    lines = ["## Targets", "", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} |" for t in payload["targets"]]
    columns = ("processes", "threads", "models", "clients", "images_per_s", "p50_ms", "p99_ms", "mean_batch_images",
               "backbone_passes_per_request", "forward_busy", "forward_ms_per_image", "forward_cpu_ms_per_image",
               "other_cpu_ms_per_request", "server_cpu_per_s",
               "client_cpu_per_s", "errors")
    lines += ["", "## Throughput and latency", "", "| " + " | ".join(columns) + " |",
              "|" + "---|" * len(columns)]
    for row in payload["cells"] + payload["separate_processes"]:
        lines.append("| " + " | ".join(str(row[c]) for c in columns) + " |")
    memory = payload["memory"]
    extra = [k for k in MEMORY_COLUMNS if all(k in m for m in memory.values())]
    lines += ["", "## Memory (MB)", "", "| " + " | ".join(["set-up", "PSS", "RSS", "USS", *extra]) + " |",
              "|---|---|---|---|" + "---|" * len(extra)]
    for name, m in memory.items():
        lines.append(f"| {name} | {m['pss_mb']:.1f} | {m['rss_mb']:.1f} | {m['uss_mb']:.1f} |"
                     + "".join(f" {m[k]:.1f} |" for k in extra))
    if extra:
        lines += ["", "GPU columns: torch's allocator in each server process (`/v1/stats`; peaks summed over the "
                  "processes), and `gpu_used_mb`, each process's whole share as `nvidia-smi` reports it (the CUDA "
                  "context included)."]
    b = payload["forward_breakdown"]
    ms = breakdown_ms(b)
    where = f"{b['device']}, {b['clock']}" if "clock" in b else "cpu, thread CPU time"
    lines += ["", f"## The forward pass in process (ms per image, batch {b['batch']}, {where})", "",
              "| " + " | ".join(ms) + " |", "|" + "---|" * len(ms),
              "| " + " | ".join(str(v) for v in ms.values()) + " |"]
    lines += ["", f"In process, one image: `predict_logits` p50 {payload['in_process']['p50_ms']} ms, "
              f"the model's forward alone p50 {payload['in_process']['forward_p50_ms']} ms.", "",
              "## What limits throughput", "", *limits(payload), "",
              "## Notes", "", *(f"- {n}" for n in payload["notes"])]
    if payload.get("machines"):  # results of this benchmark on other machines, and which machine made which
        lines += ["", "## Which machine made which numbers", "", *(f"- {m}" for m in payload["machines"])]
    return "\n".join(lines)


MEMORY_COLUMNS = ("cuda_max_memory_allocated_mb", "cuda_max_memory_reserved_mb", "gpu_used_mb")


def gpu_used_mb() -> dict[int, float]:
    """Each process's GPU memory as ``nvidia-smi`` reports it (MiB by pid; empty where it cannot say)."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)
        rows = [line.split(",") for line in done.stdout.splitlines() if line.strip()]
        return {int(pid): float(used) for pid, used in rows}
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def memory_of(replicas: list[Replica], gpu: dict[int, float]) -> dict:
    """The memory of ``replicas`` together: resident (PSS, RSS, USS) and, on a GPU, torch's peaks and nvidia-smi's."""
    parts = []
    for replica in replicas:
        part = {**replica.memory(), **replica.device_memory()}
        if replica.process.pid in gpu:
            part["gpu_used_mb"] = gpu[replica.process.pid]
        parts.append(part)
    keys = set.intersection(*(set(p) for p in parts))
    return {k: round(sum(p[k] for p in parts), 1) for k in sorted(keys)}


def median_cell(rounds: list[dict]) -> dict:
    """One configuration's cells from several rounds: the median of every number, the rounds kept."""
    keys = [k for k, v in rounds[0].items() if isinstance(v, float)]
    cell = {**rounds[0], **{k: round(statistics.median(r[k] for r in rounds if r[k] is not None), 4) for k in keys}}
    cell["errors"] = sum(r["errors"] for r in rounds)
    cell["rounds"] = [{k: r[k] for k in ("images_per_s", "p50_ms", "p99_ms")} for r in rounds]
    return cell


def rewrite_markdown(name: str) -> None:
    """NAME.md again from NAME.json (the run's own command and machine kept)."""
    import json

    from _common import RESULTS

    from vimw.io import atomic_write_text

    payload = json.loads((RESULTS / f"{name}.json").read_text())
    header = f"Command: `{payload['command']}`\n\nMachine: {payload['machine']}\n\n"
    atomic_write_text(RESULTS / f"{name}.md", header + markdown(payload) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "runs/serve/models",
                        help="the saved models; with --build, where the backbone, zoo and models/ are built")
    parser.add_argument("--build", choices=sorted(VIT_PRESETS),
                        help="first build the models on a random HF ViT of this size (see build_hf_models)")
    parser.add_argument("--build-only", action="store_true", help="build the models, measure nothing")
    parser.add_argument("--device", default="cpu", help="where every server computes: cpu, cuda or cuda:N")
    parser.add_argument("--synthetic-images", type=int, default=0, metavar="SIZE",
                        help="requests carry synthetic RGB PNGs of SIZE px (0: Fashion-MNIST test images)")
    parser.add_argument("--name", default="serve", help="results/NAME.json and .md")
    parser.add_argument("--counts", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell (after 1 s warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="every configuration runs once per round (interleaved)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every server process")
    parser.add_argument("--wide-threads", type=int, default=2,
                        help="also the largest server with this many torch threads, at the most clients (0: not)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="the load generator (see drive)")
    parser.add_argument("--note", action="append", default=[], help="a line for the notes (what else ran)")
    parser.add_argument("--rewrite-md", action="store_true", help="only rewrite NAME.md from NAME.json")
    args = parser.parse_args()
    if args.rewrite_md:
        rewrite_markdown(args.name)
        return

    import torch

    from vimw.serve.device import resolve_device

    torch.set_num_threads(args.threads)
    started, load_before = time.time(), os.getloadavg()
    device = str(resolve_device(args.device))  # a missing GPU stops the run here, before anything starts
    count = max(args.counts)
    models_dir = args.models_dir
    if args.build:
        models_dir = build_hf_models(args.models_dir, args.build, count, device)
        print(f"models built ({time.time() - started:.0f} s)", flush=True)
        if args.build_only:
            return
    models = sorted(p for p in models_dir.iterdir() if (p / "manifest.json").is_file())[:count]
    if len(models) < count:
        raise SystemExit(f"{models_dir} holds {len(models)} models; {count} are needed")
    bodies = request_bodies(64, args.synthetic_images)
    reference_p50 = in_process_reference(models[0], bodies[0], device)
    references: list[float] = []
    # Every set-up stays up for the whole run, so that the rounds interleave them under the same load.
    servers = {n: start_all([models[:n]], args.threads, args.max_batch, device) for n in args.counts}
    singles = start_all([[m] for m in models], args.threads, args.max_batch, device)
    wide = start_all([models], args.wide_threads, args.max_batch, device) if args.wide_threads else []
    print(f"{len(servers) + len(singles) + len(wide)} servers up ({time.time() - started:.0f} s)", flush=True)
    configs = [("server", n, c) for n in args.counts for c in args.clients]
    configs += [("wide", count, max(args.clients))] if wide else []
    configs += [("processes", count, c) for c in args.clients if c >= count // 2]
    measured: dict[tuple, list[dict]] = {k: [] for k in configs}
    try:
        for round_ in range(args.rounds):
            for kind, n, clients in configs:
                replicas = {"server": servers.get(n), "processes": singles, "wide": wide}[kind]
                if (kind, n, clients) == ("server", 1, 1):  # its reference, measured just before it
                    references.append(reference_p50())
                cell = run_cell(replicas, clients, bodies, args.seconds, 1.0, args.client)
                measured[(kind, n, clients)].append({**cell, "setup": kind, "threads": args.wide_threads
                                                     if kind == "wide" else args.threads})
                shown = {k: cell[k] for k in ("images_per_s", "p50_ms", "p99_ms", "mean_batch_images", "forward_busy",
                                              "errors")}
                print(round_, kind, n, clients, shown, flush=True)  # a run cut short keeps these in its log
        paths = models_paths(servers[count][0])
        gpu = gpu_used_mb() if device != "cpu" else {}
        memory = {f"server_{n}": memory_of(replicas, gpu) for n, replicas in servers.items()}
        memory[f"processes_{count}"] = memory_of(singles, gpu)
    finally:
        for replica in [r for group in servers.values() for r in group] + singles + wide:
            replica.stop()
    reference = {"p50_ms": round(statistics.median(r["predict_logits"] for r in references), 4),
                 "forward_p50_ms": round(statistics.median(r["forward"] for r in references), 4),
                 "rounds": references, "what": "one decoded image in this process, 100 calls per round: "
                 "predict_logits (p50_ms), the model's forward on preprocessed pixels (forward_p50_ms)"}
    cells = [median_cell(measured[k]) for k in configs if k[0] in ("server", "wide")]
    separate = [median_cell(measured[k]) for k in configs if k[0] == "processes"]
    breakdown = forward_breakdown(models, bodies, batch=16, device=device)
    size = args.synthetic_images
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - started, 1),
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "device": device,
        "models": [m.name for m in models],
        "request": (f"one {size}x{size} RGB PNG (synthetic) per request, top=1" if size else
                    "one 28x28 grey PNG (Fashion-MNIST test) per request, top=1"),
        "client": args.client,
        "rounds": args.rounds, "cells": cells, "separate_processes": separate, "memory": memory, "paths": paths,
        "in_process": reference, "forward_breakdown": breakdown, "notes": args.note,
    }
    payload["targets"] = targets(cells, separate, memory, reference) if count == 16 else []
    if args.build:
        payload["built"] = built_record(args.models_dir, args.build)
    write_results(args.name, payload, markdown(payload))


if __name__ == "__main__":
    main()
