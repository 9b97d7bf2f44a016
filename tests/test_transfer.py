"""TransMiter core: adapter, standardisation, Procrustes, the steps (extract, apply, refine,
select_lambda), the blend, vocabulary, adapter files and the logit cache (synthetic data, CPU)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from vimw.errors import DataError, FormatError, TrainingError
from vimw.transfer import (
    ExtractionConfig,
    RefineConfig,
    TransMiterAdapter,
    adapter_logits,
    apply_adapter,
    base_novel_scores,
    blend_logits,
    extract_adapter,
    load_adapter,
    refine_adapter,
    select_lambda,
    validation_metrics,
)
from vimw.transfer.adapter import random_orthogonal
from vimw.transfer.cache import LogitCache
from vimw.transfer.procrustes import normalised_lambda, orthogonal_alignment
from vimw.transfer.standardize import destandardize, standardize
from vimw.transfer.steps import kd_loss
from vimw.transfer.vocab import aux_vocabulary, aux_words_sha256, build_class_list

K, C = 32, 8


def _logits(n: int, k: int = K, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3.0 + torch.randn(n, 1, generator=g) * 5.0


def _mixing(seed: int = 1) -> torch.Tensor:
    return random_orthogonal(K, seed)


def _teacher(z: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear function of the source logits: the 'fine-tuned' model."""
    s = standardize(z)[0]
    return 6.0 * torch.tanh(s @ _mixing())[:, :C]


def _mean_preserving_rotation(k: int, seed: int) -> torch.Tensor:
    """A random orthogonal R with R 1 = 1 (so per-sample mean and std are preserved)."""
    ones = torch.ones(k, 1, dtype=torch.float64) / k**0.5
    basis, _ = torch.linalg.qr(torch.cat([ones, torch.randn(k, k - 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)], 1))
    b = basis[:, 1:]  # orthonormal basis of the complement of 1
    m = random_orthogonal(k - 1, seed + 1, dtype=torch.float64)
    return (ones @ ones.T + b @ m @ b.T).float()


# -- standardisation and the adapter -------------------------------------------------------------
def test_standardize_round_trip():
    z = _logits(10)
    s, mean, std = standardize(z)
    assert torch.allclose(s.mean(1), torch.zeros(10), atol=1e-5)
    assert torch.allclose(s.std(1), torch.ones(10), atol=1e-4)
    assert torch.allclose(destandardize(s, mean, std), z, atol=1e-4)


def test_new_adapter_is_identity_at_default_size():
    adapter = TransMiterAdapter(num_classes=100, seed=3)
    assert adapter.num_logits == 1024
    assert 9.0e6 < sum(p.numel() for p in adapter.parameters()) < 9.6e6  # about 9.4 M, as in TransMiter (Park et al. 2025)
    # float32 with K = 1024: the error is ~4e-6 on unit-scale logits and scales with std(z)
    z = torch.randn(6, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(adapter(z, return_all=True), z, atol=1e-5, rtol=0)
        assert torch.allclose(adapter(z), z[:, :100], atol=1e-5, rtol=0)
        big = 20.0 * z + 30.0  # CLIP-like scale: still identity relative to the spread
        assert ((adapter(big, return_all=True) - big).abs().max() / big.std()) < 1e-5


def test_initial_W_is_random_orthogonal_and_seeded():
    a, b, c = TransMiterAdapter(K, C, seed=0), TransMiterAdapter(K, C, seed=0), TransMiterAdapter(K, C, seed=1)
    with torch.no_grad():
        w = a.W
        assert torch.allclose(w @ w.T, torch.eye(K), atol=1e-5)
        assert not torch.allclose(w, torch.eye(K), atol=0.1)
        assert torch.equal(w, b.W)
        assert not torch.allclose(w, c.W)


def test_W_stays_orthogonal_after_training_steps():
    adapter = TransMiterAdapter(K, C, seed=0)
    opt = torch.optim.AdamW(adapter.parameters(), lr=0.05)
    z, y = _logits(64), _teacher(_logits(64))
    w0 = adapter.W.detach().clone()
    for _ in range(5):
        loss = kd_loss(adapter(z), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = adapter.W.detach()
    assert not torch.allclose(w, w0, atol=1e-3)  # it did move
    assert torch.allclose(w @ w.T, torch.eye(K), atol=1e-5)


def test_adapter_rejects_bad_shapes():
    with pytest.raises(ValueError):
        TransMiterAdapter(8, 9)
    with pytest.raises(ValueError):
        TransMiterAdapter(K, C)(torch.zeros(3, K + 1))


# -- Procrustes -------------------------------------------------------------------------------------
def test_procrustes_is_orthogonal():
    s = standardize(_logits(200, seed=1))[0]
    t = standardize(_logits(200, seed=2))[0]
    q = orthogonal_alignment(s, t, 5.0)
    assert q.dtype == torch.float64
    assert torch.allclose(q @ q.T, torch.eye(K, dtype=torch.float64), atol=1e-10)


def test_procrustes_identical_logits_give_identity():
    s = standardize(_logits(200))[0]
    for lam in (0.0, 10.0):
        assert torch.allclose(orthogonal_alignment(s, s, lam), torch.eye(K, dtype=torch.float64), atol=1e-6)


def test_procrustes_recovers_a_known_rotation():
    s = standardize(_logits(300))[0]
    # standardised rows are orthogonal to the ones vector, so only rotations of its
    # complement are identifiable (and they keep the target standardised)
    r = _mean_preserving_rotation(K, 7)
    t = s @ r.T  # a target that is a rotated source
    q = orthogonal_alignment(s, t, 0.0)
    assert torch.allclose(q.float(), r, atol=1e-4)
    assert torch.allclose((t.double() @ q).float(), s, atol=1e-4)  # orientation: T Q0 ~ S


def test_lambda_pulls_toward_identity_and_is_per_image():
    assert normalised_lambda(0.5, 1000) == 500.0
    s = standardize(_logits(300))[0]
    t = s @ random_orthogonal(K, 7).T
    eye = torch.eye(K, dtype=torch.float64)
    dist = [torch.linalg.norm(orthogonal_alignment(s, t, normalised_lambda(lam, 300)) - eye) for lam in (0.0, 1.0, 100.0)]
    assert dist[0] > dist[1] > dist[2]


# -- extraction -------------------------------------------------------------------------------------
def _agreement(adapter, z, y):
    with torch.no_grad():
        return (adapter(z).argmax(1) == y.argmax(1)).float().mean().item()


def test_extraction_learns_the_teacher():
    z = _logits(1024)
    y = _teacher(z)
    cfg = ExtractionConfig(epochs=25, lr=3e-3, seed=0, progress=False)
    adapter, info = extract_adapter(z, y, config=cfg)
    losses = [h["train_loss"] for h in info["history"]]
    assert len(losses) == 25
    assert losses[-1] < 0.4 * losses[0]
    z_test = _logits(512, seed=5)
    y_test = _teacher(z_test)
    zero_shot = (z_test[:, :C].argmax(1) == y_test.argmax(1)).float().mean().item()
    learned = _agreement(adapter, z_test, y_test)
    assert zero_shot < 0.35
    assert learned > 0.7 and learned > zero_shot + 0.4


def test_extraction_is_seeded_and_deterministic():
    z = _logits(300)
    y = _teacher(z)
    cfg = ExtractionConfig(epochs=2, seed=4, progress=False)
    a, ha = extract_adapter(z, y, config=cfg)
    b, hb = extract_adapter(z, y, config=cfg)
    assert [h["train_loss"] for h in ha["history"]] == [h["train_loss"] for h in hb["history"]]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_extraction_cannot_take_labels():
    params = inspect.signature(extract_adapter).parameters
    assert list(params) == ["source_zs_logits", "teacher_logits", "config"]
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    z = _logits(256)
    y = _teacher(z)
    with pytest.raises(TypeError):
        extract_adapter(z, y, labels=torch.zeros(256, dtype=torch.long))  # type: ignore[call-arg]
    # the result is a function of the logits and the seed alone: two runs agree, another seed differs
    cfg = ExtractionConfig(epochs=1, seed=1, progress=False)
    runs = [extract_adapter(z, y, config=cfg)[0] for _ in range(2)]
    assert all(torch.equal(runs[0].state_dict()[k], runs[1].state_dict()[k]) for k in runs[0].state_dict())
    other = extract_adapter(z, y, config=ExtractionConfig(epochs=1, seed=2, progress=False))[0]
    assert any(not torch.equal(runs[0].state_dict()[k], other.state_dict()[k]) for k in runs[0].state_dict())


def test_extraction_raises_on_nan_loss(monkeypatch):
    import vimw.transfer.steps as steps

    z = _logits(64)
    y = _teacher(z)
    kd = steps.kd_loss
    monkeypatch.setattr(steps, "kd_loss", lambda *a, **k: kd(*a, **k) * float("nan"))
    with pytest.raises(TrainingError):
        extract_adapter(z, y, config=ExtractionConfig(epochs=3, progress=False))


def test_extraction_rejects_mismatched_inputs():
    with pytest.raises(DataError):
        extract_adapter(_logits(10), torch.zeros(9, C))
    with pytest.raises(DataError):
        extract_adapter(_logits(10, 4), torch.zeros(10, 5))


# -- transfer -------------------------------------------------------------------------------------------
def _trained_adapter(seed: int = 0) -> TransMiterAdapter:
    """An adapter that is far from the identity (random non-zero last layer)."""
    adapter = TransMiterAdapter(K, C, seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        adapter.mlp[3].weight.normal_(0.0, 0.05, generator=g)
        adapter.mlp[3].bias.normal_(0.0, 0.05, generator=g)
    return adapter


def test_transfer_runs_without_autograd_or_optimizer(monkeypatch):
    import vimw.transfer.steps as steps

    seen = []
    real = steps.orthogonal_alignment

    def spy(*args, **kwargs):
        seen.append(torch.is_grad_enabled())
        return real(*args, **kwargs)

    def no_optimizer(*args, **kwargs):
        raise AssertionError("transfer must not build an optimizer")

    def no_backward(*args, **kwargs):
        raise AssertionError("transfer must not backpropagate")

    monkeypatch.setattr(steps, "orthogonal_alignment", spy)
    monkeypatch.setattr(torch.optim.Optimizer, "__init__", no_optimizer)
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    source = _trained_adapter()
    s, t = _logits(200, seed=1), _logits(200, seed=2)
    with torch.enable_grad():
        target = apply_adapter(source, s, t, 0.5)
    assert seen == [False]
    assert target.rotation is not None and not target.rotation.requires_grad
    assert all(p.grad is None for p in target.parameters())
    assert source.rotation is None  # the source adapter is left untouched


def test_transfer_with_identical_logits_is_the_source_adapter():
    source = _trained_adapter()
    z = _logits(200)
    target = apply_adapter(source, z, z, 0.0)
    assert torch.allclose(target.rotation, torch.eye(K), atol=1e-5)
    z_new = _logits(50, seed=9)
    with torch.no_grad():
        assert torch.allclose(target(z_new, return_all=True), source(z_new, return_all=True), atol=1e-4)


def test_transfer_to_rotated_target_reproduces_source_outputs():
    source = _trained_adapter()
    r = _mean_preserving_rotation(K, 3)
    z_src = _logits(400)
    z_tgt = z_src @ r.T  # the "target model": the same information in another basis
    target = apply_adapter(source, z_src, z_tgt, 0.0)
    assert torch.allclose(target.rotation, r, atol=1e-4)
    z_new = _logits(64, seed=11)
    with torch.no_grad():
        expected = source(z_new, return_all=True) @ r.T
        got = target(z_new @ r.T, return_all=True)
        assert (got - source(z_new @ r.T, return_all=True)).abs().max() > 1e-2  # not trivially equal
    assert torch.allclose(got, expected, atol=1e-4)


def _rotation(t: float, seed: int = 5) -> torch.Tensor:
    """exp(t A) for a fixed skew-symmetric A acting on the complement of the ones vector."""
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(K, 1, dtype=torch.float64) / K**0.5
    basis, _ = torch.linalg.qr(torch.cat([ones, torch.randn(K, K - 1, generator=g, dtype=torch.float64)], 1))
    b = basis[:, 1:]
    m = torch.randn(K - 1, K - 1, generator=g, dtype=torch.float64)
    a = b @ (m - m.T) @ b.T
    a = a * (1.2 / torch.linalg.eigvals(a).abs().max())  # rotation angles up to 1.2 rad
    return torch.linalg.matrix_exp(t * a).float()


BASE, NOVEL = [0, 1, 2, 3], [4, 5, 6, 7]


def test_select_lambda_picks_an_interior_value():
    """Alignment data rotated by R(1), validation data by R(1/2): the Procrustes solution for
    lambda/image = 1 on isotropic rows is the half rotation (polar(R + I) = R^1/2), so the best
    lambda lies strictly inside the grid, and the validation score says so."""
    source = _trained_adapter()
    s = standardize(torch.randn(4000, K, generator=torch.Generator().manual_seed(1)))[0]
    align_tgt = s @ _rotation(1.0).T
    z_val = _logits(400, seed=12)
    half = _rotation(0.5)
    with torch.no_grad():  # labels the adapter moved by exactly R(1/2) gets right
        y_val = (source(z_val, return_all=True) @ half.T)[:, :C].argmax(1)
    grid = [0.0, 0.1, 1.0, 10.0, 1000.0]
    lam, candidates = select_lambda(source, s, align_tgt, z_val @ half.T, y_val, base=BASE, novel=NOVEL, grid=grid)
    scores = [c["score"] for c in candidates]
    assert [c["lambda"] for c in candidates] == grid
    assert lam == 1.0 and lam not in (grid[0], grid[-1])
    assert scores[2] > max(scores[0], scores[-1]) + 0.02
    with pytest.raises(DataError):
        select_lambda(source, s, align_tgt, z_val, y_val, base=BASE, novel=NOVEL, grid=[-1.0])
    with pytest.raises(DataError):
        select_lambda(source, s, align_tgt, z_val, y_val, base=BASE, novel=NOVEL, grid=[])


# -- the blend --------------------------------------------------------------------------------------------
def test_blend_at_alpha_one_is_the_adapter_alone():
    adapter = _trained_adapter()
    z, y = _labelled(300, 50)
    out = adapter_logits(adapter, z)
    zero_shot = z[:, :C]
    blended = blend_logits(out, zero_shot, 1.0)
    assert torch.allclose(blended, torch.log_softmax(out, -1))
    assert base_novel_scores(blended, y, BASE, NOVEL) == base_novel_scores(out, y, BASE, NOVEL)
    for cols in (BASE, NOVEL, list(range(C))):
        assert torch.equal(blended[:, cols].argmax(1), out[:, cols].argmax(1))
    # alpha = 0 is the zero-shot model, and a middle alpha is neither
    assert base_novel_scores(blend_logits(out, zero_shot, 0.0), y, BASE, NOVEL) == base_novel_scores(zero_shot, y, BASE, NOVEL)
    mid = blend_logits(out, zero_shot, 0.5)
    assert not torch.allclose(mid, blended) and not torch.allclose(mid, torch.log_softmax(zero_shot, -1))
    with pytest.raises(DataError):
        blend_logits(out, zero_shot, 1.5)


# -- refinement (TransMiter+) --------------------------------------------------------------------------
def _labelled(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    z = _logits(n, seed=seed)
    return z, _teacher(z).argmax(1)


def _base_only(z, y):
    keep = y < len(BASE)
    return z[keep], y[keep]


def test_refine_improves_validation_score():
    adapter = TransMiterAdapter(K, C, seed=0)
    z, y = _base_only(*_labelled(1024, 20))
    zv, yv = _base_only(*_labelled(512, 21))
    before = validation_metrics(adapter_logits(adapter, zv), yv, BASE, NOVEL, "base")["score"]
    refined, info = refine_adapter(adapter, z, y, zv, yv, base=BASE, novel=NOVEL, protocol="base",
                                   config=RefineConfig(lrs=(3e-3,), epochs=15, progress=False))
    after = validation_metrics(adapter_logits(refined, zv), yv, BASE, NOVEL, "base")["score"]
    assert info["lr"] == 3e-3 and info["epoch"] > 0
    assert after == pytest.approx(info["score"])
    assert after > before + 0.2
    assert validation_metrics(adapter_logits(adapter, zv), yv, BASE, NOVEL, "base")["score"] == before  # untouched


def test_refine_keeps_the_start_when_training_only_hurts():
    adapter = _trained_adapter()
    z, zv = _logits(256, seed=30), _logits(128, seed=31)
    yv = adapter_logits(adapter, zv)[:, BASE].argmax(1)  # the starting adapter is perfect on validation
    y = torch.randint(0, len(BASE), (256,), generator=torch.Generator().manual_seed(0))  # noise labels
    refined, info = refine_adapter(adapter, z, y, zv, yv, base=BASE, novel=NOVEL, protocol="base",
                                   config=RefineConfig(lrs=(1e-2,), epochs=3, progress=False))
    assert info["epoch"] == 0 and info["candidates"][0]["epoch"] == 0
    assert torch.allclose(adapter_logits(refined, zv), adapter_logits(adapter, zv), atol=1e-6)


def test_refine_needs_base_class_labels():
    adapter = TransMiterAdapter(K, C, seed=0)
    z, y = _labelled(128, 40)
    with pytest.raises(DataError, match="base class"):
        refine_adapter(adapter, z, y, z, y, base=BASE, novel=NOVEL, config=RefineConfig(epochs=1))
    with pytest.raises(DataError):
        RefineConfig(lrs=())


def _toy_base_to_novel(seed: int):
    """Logits of 4 classes (0, 1 base; 2, 3 novel) on K = 32 columns: class prototypes plus noise,
    the own column raised. Returns labelled base shots and validation, unlabeled rows of every
    class, and labelled test rows of every class."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(4, K, generator=g)

    def sample(labels: torch.Tensor) -> torch.Tensor:
        z = proto[labels] + torch.randn(len(labels), K, generator=g)
        z[torch.arange(len(labels)), labels] += 2.0
        return z

    shots, val = torch.tensor([0, 1] * 8), torch.tensor([0, 1] * 8)
    unlabeled, test = torch.tensor([0, 1, 2, 3] * 8), torch.tensor([0, 1, 2, 3] * 100)
    return (sample(shots), shots), (sample(val), val), sample(unlabeled), (sample(test), test)


@pytest.mark.parametrize("seed", [0, 2])
def test_refinement_pulled_toward_its_start_keeps_the_novel_accuracy_cross_entropy_loses(seed):
    (z, y), (zv, yv), unlabeled, (zt, yt) = _toy_base_to_novel(seed)
    start = TransMiterAdapter(K, 4, seed=0)  # what transfer gave: its novel accuracy is the one to keep
    base, novel = [0, 1], [2, 3]

    def refined(distill: float) -> dict[str, float]:
        config = RefineConfig(lrs=(1e-2,), epochs=20, batch_size=8, distill=distill, progress=False)
        model, _ = refine_adapter(start, z, y, zv, yv, base=base, novel=novel, protocol="base", config=config,
                                  distill_logits=unlabeled)
        return base_novel_scores(adapter_logits(model, zt), yt, base, novel)

    before, plain, pulled = base_novel_scores(adapter_logits(start, zt), yt, base, novel), refined(0.0), refined(10.0)
    assert plain["novel"] < before["novel"] - 0.05  # cross-entropy on the base classes alone loses it
    assert abs(pulled["novel"] - before["novel"]) <= 0.01  # the pull keeps it within 1 point
    assert pulled["base"] > before["base"] and pulled["hm"] > plain["hm"]


def test_refinement_pulled_toward_the_zero_shot_takes_its_novel_accuracy():
    (z, y), (zv, yv), unlabeled, (zt, yt) = _toy_base_to_novel(0)
    start = TransMiterAdapter(K, 4, seed=0)  # starts as the identity: the zero-shot itself
    base, novel = [0, 1], [2, 3]

    def refined(zero_shot: float) -> dict[str, float]:
        config = RefineConfig(lrs=(1e-2,), epochs=20, batch_size=8, distill=0.0, zero_shot=zero_shot, progress=False)
        model, _ = refine_adapter(start, z, y, zv, yv, base=base, novel=novel, protocol="base", config=config,
                                  distill_logits=unlabeled)
        return base_novel_scores(adapter_logits(model, zt), yt, base, novel)

    zero_shot = base_novel_scores(zt[:, :4], yt, base, novel)  # the target's own C columns
    plain, pulled = refined(0.0), refined(10.0)
    assert zero_shot["novel"] > plain["novel"] + 0.1
    assert pulled["novel"] > plain["novel"] + 0.1 and pulled["novel"] >= zero_shot["novel"] - 0.05
    assert pulled["base"] > 0.8


def test_refinement_pull_weights_must_be_finite_and_not_negative():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(DataError, match="distillation weight"):
            RefineConfig(distill=bad)
        with pytest.raises(DataError, match="zero-shot pull weight"):
            RefineConfig(zero_shot=bad)


# -- vocabulary ---------------------------------------------------------------------------------------
def test_shipped_vocabulary_is_large_clean_and_generic():
    words = aux_vocabulary()
    assert len(words) >= 1500
    assert len({w.casefold() for w in words}) == len(words)
    assert all(w == w.strip().lower() and w for w in words)
    for generic in ("toothbrush", "bicycle", "pineapple", "hammer", "giraffe", "umbrella", "sunflower"):
        assert generic in words
    assert len(aux_words_sha256()) == 64


def test_build_class_list_is_deterministic():
    task = ["apple", "truck", "violin"]
    a, sha_a = build_class_list(task, 64, seed=5)
    b, sha_b = build_class_list(task, 64, seed=5)
    c, _ = build_class_list(task, 64, seed=6)
    assert a == b and sha_a == sha_b == aux_words_sha256()
    assert a != c
    assert a[:3] == task and len(a) == 64 and len({n.casefold() for n in a}) == 64


def test_build_class_list_dedups_against_task_names_case_insensitively():
    vocab = ["Cat", "CAT ", "cat", "dog", "Sea_Lion", "sea lion", "zebra"]
    names, _ = build_class_list(["cat", "sea lion"], 4, seed=0, vocabulary=vocab)
    assert sorted(names[2:]) == ["dog", "zebra"]
    everything, _ = build_class_list(["Cat"], len(aux_vocabulary()), seed=0)
    assert sum(n.casefold() == "cat" for n in everything) == 1


def test_build_class_list_errors():
    with pytest.raises(DataError, match="smaller than"):
        build_class_list(["a", "b", "c"], 2, seed=0)
    with pytest.raises(DataError, match="vocabulary"):
        build_class_list(["a"], 5, seed=0, vocabulary=["b", "c"])


# -- adapter files ----------------------------------------------------------------------------------------
def _save(adapter, path):
    return adapter.save(path, source_model="weak", aux_words_sha256=aux_words_sha256(),
                        template="a photo of a {}.", settings={"epochs": 1})


def test_save_load_round_trip_is_exact(tmp_path):
    source = _trained_adapter()
    target = apply_adapter(source, _logits(100, seed=1), _logits(100, seed=2), 0.5)
    z = _logits(20, seed=3)
    for i, adapter in enumerate((source, target)):
        _save(adapter, tmp_path / str(i))
        loaded, manifest = load_adapter(tmp_path / str(i))
        assert manifest["num_logits"] == K and manifest["num_classes"] == C
        assert manifest["template"] == "a photo of a {}." and manifest["source_model"] == "weak"
        assert manifest["transferred"] == (i == 1)
        with torch.no_grad():
            assert torch.equal(loaded.W, adapter.W)
            assert torch.equal(loaded(z, return_all=True), adapter(z, return_all=True))


def test_load_refuses_corrupt_weights(tmp_path):
    _save(_trained_adapter(), tmp_path)
    path = tmp_path / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError):
        load_adapter(tmp_path)
    path.write_bytes(b"not safetensors")
    with pytest.raises(FormatError):
        load_adapter(tmp_path)


def test_load_refuses_manifest_tensor_mismatch(tmp_path):
    _save(_trained_adapter(), tmp_path)
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["num_logits"] = K * 2
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="do not match"):
        load_adapter(tmp_path)
    manifest["num_logits"] = K
    manifest["transferred"] = True
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FormatError):
        load_adapter(tmp_path)


# -- logit cache ----------------------------------------------------------------------------------------
def test_logit_cache_computes_once(tmp_path):
    cache = LogitCache(tmp_path)
    names = ["a", "b", "c"]
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(12.0).view(4, 3)

    first = cache.get_or_compute("m", "set1", names, "{}", compute, aux_words_sha256="x", num_images=4)
    second = cache.get_or_compute("m", "set1", names, "{}", compute, aux_words_sha256="x", num_images=4)
    assert len(calls) == 1 and torch.equal(first, second)
    manifest = json.loads(next(tmp_path.glob("*/manifest.json")).read_text())
    assert manifest["class_names"] == names and manifest["num_images"] == 4 and manifest["model"] == "m"
    cache.get_or_compute("m", "set2", names, "{}", compute, aux_words_sha256="x")  # another image set
    cache.get_or_compute("m", "set1", names, "a {}", compute, aux_words_sha256="x")  # another template
    assert len(calls) == 3


def test_logit_cache_recomputes_on_manifest_mismatch(tmp_path):
    cache = LogitCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(4, 2) * len(calls)

    cache.get_or_compute("m", "s", ["a", "b"], "{}", compute, aux_words_sha256="x")
    again = cache.get_or_compute("m", "s", ["a", "b"], "{}", compute, aux_words_sha256="y")
    assert len(calls) == 2 and again[0, 0] == 2.0
    cache.get_or_compute("m", "s", ["a", "b"], "{}", compute, aux_words_sha256="y", num_images=4)
    assert len(calls) == 2


def test_logit_cache_refuses_corrupt_file(tmp_path):
    cache = LogitCache(tmp_path)
    cache.get_or_compute("m", "s", ["a", "b"], "{}", lambda: torch.ones(4, 2))
    next(tmp_path.glob("*/logits.safetensors")).write_bytes(b"garbage")
    with pytest.raises(FormatError):
        cache.get_or_compute("m", "s", ["a", "b"], "{}", lambda: torch.ones(4, 2))
