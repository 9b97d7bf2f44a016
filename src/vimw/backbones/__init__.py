"""Frozen foundation models exposing module sites (see ``base.Backbone``)."""

from vimw.backbones import efficientnet_lite as _efficientnet_lite  # noqa: F401  (registers)
from vimw.backbones._registry import HF_PREFIX, create_backbone, list_backbones, register_backbone
from vimw.backbones.base import Backbone, BackboneRecord, Bypass, Preprocess, Site
from vimw.backbones.imagenet import imagenet_class_names, imagenet_standard_names
from vimw.backbones.names import ModelName, parse_model_name

__all__ = [
    "Backbone",
    "BackboneRecord",
    "Bypass",
    "HF_PREFIX",
    "ModelName",
    "Preprocess",
    "Site",
    "create_backbone",
    "imagenet_class_names",
    "imagenet_standard_names",
    "list_backbones",
    "parse_model_name",
    "register_backbone",
]
