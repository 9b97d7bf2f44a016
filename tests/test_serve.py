"""``vimw serve``: a real server on a free loopback port, spoken to over HTTP.

Three downstream models on the session's tiny zoo (``ens`` and ``topk`` over its three
convpass modules, and a linear probe with no plug-in) are served together; every answer
is compared with what ``vimw predict --model`` computes for the same files
(``workflows.predict.predict_files``, full precision).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import pattern_images, synthetic_task, write_npz  # noqa: E402
from PIL import Image  # noqa: E402

from vimw.errors import VimwError  # noqa: E402
from vimw.methods import train_downstream  # noqa: E402
from vimw.serve.batcher import Job, run_batch  # noqa: E402
from vimw.serve.device import resolve_device  # noqa: E402
from vimw.serve.registry import ModelRegistry  # noqa: E402
from vimw.serve.server import BackgroundServer, start  # noqa: E402
from vimw.training import TrainConfig  # noqa: E402
from vimw.workflows.aggregate import save_model  # noqa: E402
from vimw.workflows.midstream import MidstreamRecipe, train_module  # noqa: E402
from vimw.workflows.predict import load_predictor, predict_files  # noqa: E402
from vimw.zoo import Zoo  # noqa: E402

TOP = 3
MAX_BATCH = 8
UPLOAD_LIMIT = 64 * 1024
# name -> (method, task pattern)
MODELS = {"bands-ens": ("ens", "bands"), "blocks-topk": ("topk", "blocks"), "dots-probe": ("linear_probe", "dots")}


def make_model(directory: Path, method: str, backbone, zoo: Zoo | None, pattern: str, seed: int = 0) -> Path:
    """A downstream model trained for one epoch on a tiny synthetic task, saved as ``vimw aggregate`` saves it."""
    data = synthetic_task(pattern=pattern, n_train=24, n_val=12, n_test=12, seed=seed, name=f"syn-{pattern}")
    config = TrainConfig(epochs=1, batch_size=12, lr=1e-2, seed=seed)
    result = train_downstream(method, backbone, data, config, zoo=zoo)
    save_model(directory, result, data, config, shots=None, test={})
    return directory


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, lite0, tiny_zoo) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served")
    return {name: make_model(root / name, method, lite0, tiny_zoo, pattern, seed=i)
            for i, (name, (method, pattern)) in enumerate(MODELS.items())}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Six PNG files: RGB patterns of each kind and one grey image."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    paths = []
    for i, pattern in enumerate(["bands", "blocks", "dots", "bands", "blocks"]):
        grey = pattern_images(np.array([i % 3]), rng, pattern)[0, 0]
        paths.append(write_png(root / f"{pattern}{i}.png", np.repeat(grey[:, :, None], 3, axis=2)))
    paths.append(write_png(root / "grey.png", pattern_images(np.array([1]), rng, "dots")[0, 0]))
    return paths


@pytest.fixture(scope="module")
def expected(models, images) -> dict[str, dict[str, list]]:
    """model -> image name -> [(class, probability)], as ``vimw predict --model`` computes them."""
    out = {}
    for name, directory in models.items():
        rows, _ = predict_files(images, load_predictor(model=directory), top=TOP)
        out[name] = {Path(r.source).name: [(c, p) for p, _, c in r.classes] for r in rows}
    return out


@pytest.fixture(scope="module")
def server(models):
    service = start([f"{name}={directory}" for name, directory in models.items()], max_batch=MAX_BATCH,
                    max_wait_ms=50, max_upload_bytes=UPLOAD_LIMIT)
    with BackgroundServer(service.app, on_stop=service.batcher.close) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def files_of(paths) -> list:
    return [("images", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in paths]


def check_answer(answer: dict, expected: dict) -> None:
    for row in answer["predictions"]:
        want = expected[row["source"]]
        assert [t["class"] for t in row["top"]] == [c for c, _ in want]
        assert np.allclose([t["probability"] for t in row["top"]], [p for _, p in want], atol=1e-5, rtol=0)


def predict(client, model: str, paths) -> httpx.Response:
    return client.post(f"/v1/models/{model}/predict", files=files_of(paths), params={"top": TOP})


def tree_digest(*roots: Path) -> str:
    """A hash of every file's path, size and bytes under ``roots``: equal means nothing was written."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            digest.update(str(path).encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


# -- what the server answers ----------------------------------------------------------------------
def test_predictions_equal_vimw_predict_for_three_models(server, images, expected):
    for name in MODELS:
        response = predict(server, name, images)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model"] == name and len(answer["predictions"]) == len(images)
        check_answer(answer, expected[name])


def test_base64_json_gives_the_same_answer_as_a_file_upload(server, images, expected):
    payload = {"images": [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in images[:3]],
               "top": TOP}
    response = server.post("/v1/models/bands-ens/predict", json=payload)
    assert response.status_code == 200, response.text
    check_answer(response.json(), expected["bands-ens"])


def test_models_endpoint_describes_each_model_and_its_path(server, lite0):
    listing = server.get("/v1/models").json()
    assert listing["backbone"]["fingerprint"] == lite0.fingerprint()
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == set(MODELS)
    for name, (method, pattern) in MODELS.items():
        model = by_name[name]
        assert model["method"] == method and model["classes"] == [f"class{c}" for c in range(3)]
        assert model["backbone"]["fingerprint"] == lite0.fingerprint() and model["task"]["name"] == f"syn-{pattern}"
        assert model["path"] == "shared" and model["device"] == "cpu"
    assert listing["device"] == "cpu" and server.get("/v1/stats").json()["device"] == "cpu"
    assert by_name["dots-probe"]["zoo_modules"] == [] and len(by_name["bands-ens"]["zoo_modules"]) == 3
    # ens and topk over one zoo: their modules' hidden pass is shared at every site; a probe has none.
    assert by_name["bands-ens"]["shared_hidden_sites"] == by_name["blocks-topk"]["shared_hidden_sites"] > 0
    assert by_name["dots-probe"]["shared_hidden_sites"] == 0
    # The two zoo models share the zoo's three modules: three in memory, not six.
    assert listing["zoo_modules_in_memory"] == 3
    assert server.get("/healthz").json() == {"status": "ok", "models": 3}


def test_32_concurrent_requests_across_three_models_all_succeed(server, images, expected):
    names = list(MODELS)
    jobs = [(names[i % 3], images[i % len(images): i % len(images) + 1 + i % 2]) for i in range(32)]
    before = server.get("/v1/stats").json()
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda job: predict(server, *job), jobs))
    assert [r.status_code for r in responses] == [200] * 32
    for (name, _), response in zip(jobs, responses):
        check_answer(response.json(), expected[name])
    after = server.get("/v1/stats").json()
    assert after["requests"] - before["requests"] == 32
    # Cross-task batching: fewer backbone passes than requests, and batches of several requests.
    assert after["backbone_passes"] - before["backbone_passes"] < 32
    assert after["largest_batch"] > 1


# -- bad input: a 4xx naming the problem, the next good request answered, nothing written ---------------
def _corrupt_copy(models, tmp_path) -> Path:
    broken = Path(shutil.copytree(models["dots-probe"], tmp_path / "broken"))
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return broken


def _other_backbone_copy(models, tmp_path) -> Path:
    other = Path(shutil.copytree(models["dots-probe"], tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["backbone"]["fingerprint"] = "0" * 64  # as saved by a model trained on another backbone
    (other / "manifest.json").write_text(json.dumps(manifest))
    return other


BAD_REQUESTS = {
    "corrupt image": (400, "cannot read image", lambda c, m, t, i: c.post(
        "/v1/models/bands-ens/predict", files=[("images", ("cut.png", i[0].read_bytes()[:40], "image/png"))])),
    "not an image": (400, "not an image format", lambda c, m, t, i: c.post(
        "/v1/models/bands-ens/predict", files=[("images", ("notes.png", b"just some text", "image/png"))])),
    "empty body": (400, "no image", lambda c, m, t, i: c.post("/v1/models/bands-ens/predict")),
    "empty file": (400, "empty", lambda c, m, t, i: c.post(
        "/v1/models/bands-ens/predict", files=[("images", ("zero.png", b"", "image/png"))])),
    "bad base64": (400, "base64", lambda c, m, t, i: c.post(
        "/v1/models/bands-ens/predict", json={"images": ["%%%not base64"]})),
    "wrong content type": (415, "content type", lambda c, m, t, i: c.post(
        "/v1/models/bands-ens/predict", content=b"abc", headers={"content-type": "text/plain"})),
    "oversized upload": (413, "limit", lambda c, m, t, i: c.post(
        "/v1/models/bands-ens/predict", files=[("images", ("big.png", b"\0" * (UPLOAD_LIMIT + 1), "image/png"))])),
    "too many images for one batch": (413, "at most", lambda c, m, t, i: c.post(
        "/v1/models/bands-ens/predict", files=files_of([i[0]] * (MAX_BATCH + 1)))),
    "bad top": (400, "top", lambda c, m, t, i: c.post(
        "/v1/models/bands-ens/predict", files=files_of(i[:1]), params={"top": "0"})),
    "unknown model": (404, "no model named", lambda c, m, t, i: c.post(
        "/v1/models/nope/predict", files=files_of(i[:1]))),
    "unknown model removed": (404, "no model named", lambda c, m, t, i: c.delete("/v1/models/nope")),
    "model for another backbone": (409, "fingerprint", lambda c, m, t, i: c.post(
        "/v1/models", json={"path": str(_other_backbone_copy(m, t)), "name": "other"})),
    "model that fails verification": (422, "sha256", lambda c, m, t, i: c.post(
        "/v1/models", json={"path": str(_corrupt_copy(m, t)), "name": "broken"})),
    "not a model directory": (400, "not a downstream model directory", lambda c, m, t, i: c.post(
        "/v1/models", json={"path": str(t), "name": "empty"})),
    "name taken": (409, "already loaded", lambda c, m, t, i: c.post(
        "/v1/models", json={"path": str(m["dots-probe"]), "name": "bands-ens"})),
    "no such route": (404, "Not Found", lambda c, m, t, i: c.get("/v2/nothing")),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(server, models, images, expected, tiny_zoo, tmp_path, case):
    status, words, send = BAD_REQUESTS[case]
    before = tree_digest(*models.values(), tiny_zoo.root)
    response = send(server, models, tmp_path, images)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words.lower() in error["message"].lower(), error
    assert tree_digest(*models.values(), tiny_zoo.root) == before
    good = predict(server, "bands-ens", images[:2])
    assert good.status_code == 200
    check_answer(good.json(), expected["bands-ens"])
    assert {m["name"] for m in server.get("/v1/models").json()["models"]} == set(MODELS)


# -- hot add and remove -------------------------------------------------------------------------------
def test_hot_add_and_remove_never_fail_a_request_for_the_other_models(server, models, images, expected):
    failures, answered, stop = [], [0], threading.Event()

    def keep_asking(name: str) -> None:
        with httpx.Client(base_url=str(server.base_url), timeout=60) as client:
            while not stop.is_set():
                response = predict(client, name, images[:2])
                if response.status_code != 200:
                    failures.append((name, response.status_code, response.text))
                else:
                    check_answer(response.json(), expected[name])
                    answered[0] += 1

    threads = [threading.Thread(target=keep_asking, args=(n,)) for n in ("bands-ens", "dots-probe")]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(2):
            added = server.post("/v1/models", json={"path": str(models["blocks-topk"]), "name": f"hot{round_}"})
            assert added.status_code == 201, added.text
            response = predict(server, f"hot{round_}", images[:2])
            assert response.status_code == 200
            check_answer(response.json(), expected["blocks-topk"])
            assert server.delete(f"/v1/models/hot{round_}").json() == {"removed": f"hot{round_}"}
            assert predict(server, f"hot{round_}", images[:1]).status_code == 404
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures and answered[0] > 0


# -- replicas -------------------------------------------------------------------------------------------
def round_robin_proxy(upstreams: list[str]):
    """A minimal load balancer (the role nginx or a cloud balancer plays): each request to the next replica."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    turn = [0]

    async def forward(request):
        turn[0] += 1
        target = upstreams[turn[0] % len(upstreams)]
        async with httpx.AsyncClient(base_url=target, timeout=60) as client:
            answer = await client.request(request.method, request.url.path, params=request.query_params,
                                          content=await request.body(),
                                          headers={"content-type": request.headers.get("content-type", "")})
        return Response(answer.content, answer.status_code, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE"])])


def test_two_replicas_behind_a_load_balancer_give_the_same_answers(server, models, images, expected):
    """One replica is ``vimw serve`` in its own process, the other this module's server."""
    argv = [sys.executable, "-m", "vimw.cli", "serve", "--port", "0", "--threads", "1", "--log-level", "warning",
            "--models", *[f"{n}={d}" for n, d in models.items()]]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:
            line = child.stdout.readline()
            assert line or child.poll() is None, child.stderr.read()
        replica = line.split(" on ")[1].split()[0]
        proxy = BackgroundServer(round_robin_proxy([str(server.base_url), replica]))
        before = [httpx.get(f"{u}/v1/stats").json()["requests"] for u in (str(server.base_url), replica)]
        with proxy as url, httpx.Client(base_url=url, timeout=60) as client:
            for i in range(6):
                name = list(MODELS)[i % 3]
                response = predict(client, name, images[i: i + 1])
                assert response.status_code == 200, response.text
                check_answer(response.json(), expected[name])
        after = [httpx.get(f"{u}/v1/stats").json()["requests"] for u in (str(server.base_url), replica)]
        assert [a - b for a, b in zip(after, before)] == [3, 3]
    finally:
        child.terminate()
        child.wait(timeout=30)


# -- the execution paths, without HTTP --------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_model(tmp_path_factory, lite0) -> Path:
    """A model aggregated over a zoo of two LoRA modules (inner tap: foldable)."""
    root = tmp_path_factory.mktemp("lora")
    zoo = Zoo(root / "zoo")
    for seed, pattern in enumerate(("bands", "dots")):
        npz = write_npz(root / f"{pattern}.npz", n=36, pattern=pattern, seed=seed)
        recipe = MidstreamRecipe(f"lora-{pattern}", f"npz:{npz}", kind="lora",
                                 train=TrainConfig(epochs=1, batch_size=12, lr=1e-2, seed=seed))
        train_module(zoo, recipe, backbone=lite0, progress=False)
    return make_model(root / "model", "ens", lite0, zoo, "blocks")


def _probabilities(registry: ModelRegistry, jobs_spec, images: torch.Tensor):
    jobs = [Job(registry.get(name), images[rows]) for name, rows in jobs_spec]
    return run_batch(jobs)


def test_a_mixed_batch_gives_each_model_its_own_answer_with_lora_folded_or_shared(models, lora_model, images,
                                                                                  expected):
    from vimw.workflows.predict import read_images

    for fold, want_path, want_passes in (("never", "shared", 2), ("always", "folded", 2)):
        registry = ModelRegistry(fold=fold)
        for name in ("bands-ens", "blocks-topk", "dots-probe"):
            registry.load(models[name], name)
        registry.load(lora_model, "lora")
        assert registry.get("lora").path == want_path and registry.get("bands-ens").path == "shared"
        pixels, kept, _ = read_images(images, registry.backbone.preprocess.size)
        pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
        # ens and topk share their zoo's hidden pass; the probe has no plug-in; LoRA taps inside.
        spec = [("bands-ens", slice(0, 3)), ("lora", slice(1, 4)), ("dots-probe", slice(2, 6)),
                ("blocks-topk", slice(0, 2)), ("bands-ens", slice(3, 6))]
        with torch.inference_mode():
            results, passes = _probabilities(registry, spec, pixels)
        # The LoRA model taps inside the block: a pass of its own (shared inner-tap or folded copy).
        assert passes == want_passes
        lora_rows, _ = predict_files(images[1:4], load_predictor(model=lora_model), top=3)
        lora_want = torch.tensor([[p for p, _, _ in r.classes] for r in lora_rows])
        assert torch.allclose(results[1].topk(3).values, lora_want, atol=1e-5)
        for (name, rows), result in zip(spec, results):
            if name == "lora":
                continue
            want = [expected[name][p.name] for p in images[rows]]
            assert torch.allclose(result.topk(TOP).values, torch.tensor([[p for _, p in w] for w in want]),
                                  atol=1e-5)


def test_a_zoo_residual_model_shares_a_mixed_batch_and_the_zoos_modules(models, tiny_zoo, lite0, images,
                                                                        tmp_path):
    """The zoo under a new module (``zoo_residual``) is served from the same in-memory zoo modules as the
    gated models, in the same backbone pass, with the answer ``vimw predict`` gives."""
    from vimw.workflows.predict import read_images

    residual = make_model(tmp_path / "residual", "zoo_residual", lite0, tiny_zoo, "dots", seed=5)
    registry = ModelRegistry()
    registry.load(models["bands-ens"], "bands-ens")
    registry.load(residual, "residual")
    assert registry.describe()["zoo_modules_in_memory"] == 3  # one copy of each zoo module for both models
    pixels, _, _ = read_images(images, registry.backbone.preprocess.size)
    pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
    with torch.inference_mode():
        results, passes = _probabilities(registry, [("bands-ens", slice(0, 3)), ("residual", slice(1, 6))], pixels)
    assert passes == 1
    rows, _ = predict_files(images[1:6], load_predictor(model=residual), top=3)
    want = torch.tensor([[p for p, _, _ in r.classes] for r in rows])
    assert torch.allclose(results[1].topk(3).values, want, atol=1e-5)


def test_auto_fold_keeps_the_faster_path_and_says_so(lora_model):
    registry = ModelRegistry(fold="auto")
    served = registry.load(lora_model, "lora")
    timing = served.describe()["timing_ms"]
    assert timing["shared"] > 0 and timing["folded"] > 0
    assert served.path == ("folded" if timing["folded"] < timing["shared"] else "shared")


def test_serve_command_help_lists_its_options():
    done = subprocess.run([sys.executable, "-m", "vimw.cli", "serve", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for option in ("--models", "--max-batch", "--max-wait-ms", "--max-upload-mb", "--host", "--fold", "--device"):
        assert option in done.stdout
    assert "127.0.0.1" in done.stdout


# -- the device ---------------------------------------------------------------------------------------------
def run_serve(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vimw.cli", "serve", "--port", "0", *options], capture_output=True,
                          text=True, timeout=120)


def test_device_names_are_checked_and_cpu_is_always_there():
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("gpu", "CUDA", "cuda:", "cuda:x", "cuda:0:1", "", None):
        with pytest.raises(VimwError, match="cpu, cuda or cuda:N"):
            resolve_device(name)
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda", 0)
        with pytest.raises(VimwError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_serve_asks_for_cuda_without_a_gpu_and_is_refused_before_loading(tmp_path):
    done = run_serve("--device", "cuda:0", "--models", str(tmp_path / "no-such-model"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"vimw: error: device 'cuda:0' was asked for, but this torch ({torch.__version__}) sees no CUDA GPU "
        "(use --device cpu)"]


def test_serve_refuses_a_malformed_device_name():
    done = run_serve("--device", "gpu")
    assert done.returncode == 2
    assert done.stderr.strip() == "vimw: error: argument --device: expected cpu, cuda or cuda:N, got 'gpu'"
