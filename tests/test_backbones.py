"""The backbone contract on the real EfficientNet-Lite weights."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from vimw.backbones import create_backbone, list_backbones
from vimw.errors import RegistryError, VimwError


def photo(name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())).permute(2, 0, 1)[None]


@pytest.fixture(scope="module", params=["efficientnet_lite0", "efficientnet_lite2"])
def native(request):
    return create_backbone(request.param)  # native resolution: 224 and 260 px


@pytest.mark.parametrize("image, expected", [("chelsea", 285), ("coffee", 967)])
def test_real_imagenet_weights_give_the_right_top1(native, image, expected):
    with torch.inference_mode():
        logits = native.classify(native(native.preprocess(photo(image))))
    assert logits.argmax().item() == expected
    assert native.class_names[expected] in ("Egyptian cat", "espresso")  # the standard ImageNet-1k names


def test_imagenet_heads_use_the_standard_class_names():
    from vimw.backbones import imagenet_class_names, imagenet_standard_names

    standard = imagenet_standard_names()
    assert len(standard) == 1000
    assert (standard[0], standard[281], standard[282], standard[285]) == ("tench", "tabby", "tiger cat", "Egyptian cat")
    assert create_backbone("efficientnet_lite0", image_size=32).class_names == standard
    # The curated names stay available (zero-shot prompts use them).
    assert imagenet_class_names()[285] == "Egyptian Mau"


def test_the_efficientnet_lites_are_registered_and_name_one_site_per_block():
    # Other registered backbones run the shared contract in test_contracts.py; this list
    # is not pinned, so registering a new backbone does not break this test.
    names = [entry.name for entry in list_backbones()]
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(names)
    assert names == sorted(names)
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        backbone = create_backbone(name, image_size=64)
        assert len(backbone.sites) == backbone.num_blocks and backbone.frozen
        assert [s.block for s in backbone.sites] == list(range(backbone.num_blocks))


def test_lite0_sites_describe_each_mbconv_block():
    backbone = create_backbone("efficientnet_lite0", image_size=64)
    sites = backbone.sites
    assert len(sites) == 16
    assert (sites[0].in_channels, sites[0].out_channels, sites[0].stride) == (32, 16, 1)
    assert [s.stride for s in sites].count(2) == 4  # stem and four strided stages reach stride 32
    assert sites[-1].out_channels == 320 and all(s.layout == "nchw" for s in sites)
    pixels = backbone.preprocess(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    for site, hidden in zip(sites, backbone.forward_intermediates(pixels, None, range(16))):
        assert hidden.shape[1] == site.out_channels


def test_fingerprint_is_stable_and_tells_weights_apart():
    first = create_backbone("efficientnet_lite0", image_size=64)
    again = create_backbone("efficientnet_lite0", image_size=128)
    other = create_backbone("efficientnet_lite2", image_size=64)
    assert first.fingerprint() == again.fingerprint()  # resolution is not part of the weights
    assert first.fingerprint() != other.fingerprint()
    random = create_backbone("efficientnet_lite0", image_size=64, pretrained=False)
    assert random.fingerprint() != first.fingerprint()


def test_freezing_is_an_api_of_the_model():
    backbone = create_backbone("efficientnet_lite0", image_size=64)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training  # a frozen backbone stays in inference mode
    backbone.unfreeze()
    assert all(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone._bn0.training  # normalisation statistics never follow few-shot batches


def test_preprocess_resizes_grey_and_rgba_to_normalised_rgb():
    backbone = create_backbone("efficientnet_lite0", image_size=64)
    grey = backbone.preprocess(torch.full((3, 28, 28), 255, dtype=torch.uint8))
    rgba = backbone.preprocess(torch.zeros(2, 4, 50, 30, dtype=torch.uint8))
    assert grey.shape == (3, 3, 64, 64) and rgba.shape == (2, 3, 64, 64)
    torch.testing.assert_close(grey.max(), torch.tensor(128 / 128.0))  # (255 - 127) / 128
    torch.testing.assert_close(rgba.min(), torch.tensor(-127 / 128.0))


def test_unknown_backbone_and_unknown_site_are_clear_errors():
    with pytest.raises(RegistryError, match="unknown backbone 'resnet50'"):
        create_backbone("resnet50")
    backbone = create_backbone("efficientnet_lite0", image_size=64)
    with pytest.raises(VimwError, match="no site named 'block99'"):
        backbone.site("block99")


# -- the model-name grammar (NAME[@SIZE][+invert]), shared with the zero-shot loader ----------
@pytest.mark.parametrize("text, arch, size, invert", [
    ("efficientnet_lite0", "efficientnet_lite0", None, False),
    ("efficientnet_lite0@96", "efficientnet_lite0", 96, False),
    ("efficientnet_lite0@96+invert", "efficientnet_lite0", 96, True),
    ("efficientnet_lite2+invert", "efficientnet_lite2", None, True),
    ("hf:openai/clip-vit-base-patch16", "hf:openai/clip-vit-base-patch16", None, False),
    ("hf:openai/clip-vit-base-patch16@224", "hf:openai/clip-vit-base-patch16", 224, False),
    ("hf:/models/with@sign/clip", "hf:/models/with@sign/clip", None, False),
])
def test_model_names_parse_into_arch_size_and_inversion_and_print_back(text, arch, size, invert):
    from vimw.backbones.names import parse_model_name

    parsed = parse_model_name(text)
    assert (parsed.arch, parsed.image_size, parsed.invert) == (arch, size, invert)
    assert str(parsed) == text


@pytest.mark.parametrize("text, why", [
    ("", "empty"), ("efficientnet_lite0@abc", "whole number"), ("efficientnet_lite0@", "whole number"),
    ("efficientnet_lite0@8", "at least 16"), ("@96", "no model"), ("hf:", "no model"),
])
def test_bad_model_names_are_clear_errors(text, why):
    from vimw.backbones.names import parse_model_name

    with pytest.raises(RegistryError, match=f"bad model name .*{why}.*NAME\\[@SIZE\\]"):
        parse_model_name(text)


def test_an_hf_directory_whose_name_ends_in_a_size_is_taken_as_it_is(tmp_path):
    from vimw.backbones.names import parse_model_name

    (tmp_path / "clip@32").mkdir()
    parsed = parse_model_name(f"hf:{tmp_path}/clip@32")
    assert parsed.arch == f"hf:{tmp_path}/clip@32" and parsed.image_size is None


def test_create_backbone_reads_the_size_from_the_name():
    named = create_backbone("efficientnet_lite0@48")
    keyword = create_backbone("efficientnet_lite0", image_size=48)
    assert named.preprocess.size == keyword.preprocess.size == 48
    assert named.fingerprint() == keyword.fingerprint()
    assert create_backbone("efficientnet_lite0@48", image_size=48).preprocess.size == 48
    with pytest.raises(RegistryError, match="names size 48 but image_size=64"):
        create_backbone("efficientnet_lite0@48", image_size=64)
    with pytest.raises(RegistryError, match="'\\+invert' is an option of zero-shot heads"):
        create_backbone("efficientnet_lite0@48+invert")
    with pytest.raises(RegistryError, match="unknown backbone 'resnet50'"):
        create_backbone("resnet50@64")
