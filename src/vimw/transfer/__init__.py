"""TransMiter: logit-space adaptation transfer from a weak to a stronger model (SPEC 2).

Extract an adapter from a fine-tuned weak model without labels, move it to a stronger
zero-shot model with one orthogonal Procrustes rotation (no backpropagation), optionally
refine it with a few labels (TransMiter+). ``vimw.transfer.protocol`` holds the fine-tuned
weak model and the base-to-novel scoring; ``vimw.transfer.pipeline`` runs the whole protocol
(the benchmark, the demo and ``vimw transfer`` use it).
"""

from vimw.transfer.adapter import TransMiterAdapter, load_adapter, random_orthogonal, save_adapter
from vimw.transfer.cache import LogitCache
from vimw.transfer.extraction import (
    ExtractionConfig,
    RefineConfig,
    adapter_accuracy,
    choose_lambda,
    extract_adapter,
    kd_loss,
    refine_adapter,
    transfer_adapter,
)
from vimw.transfer.protocol import (
    FineTunedZeroShot,
    base_novel_scores,
    choose_alpha,
    ensemble_logits,
    finetune_zero_shot,
    harmonic_mean,
    make_plugin,
    proxy_logits,
)
from vimw.transfer.procrustes import DEFAULT_LAMBDA_PER_IMAGE, normalised_lambda, orthogonal_alignment
from vimw.transfer.standardize import destandardize, standardize
from vimw.transfer.vocab import (
    DEFAULT_NUM_LOGITS,
    DEFAULT_TEMPLATE,
    aux_vocabulary,
    aux_words_sha256,
    build_class_list,
    class_list_sha256,
)
from vimw.transfer.zeroshot import (
    HFCLIPZeroShot,
    ImageNetTextHead,
    MiniLMTextEncoder,
    ZeroShotClassifier,
    fit_ridge,
)

__all__ = [
    "DEFAULT_LAMBDA_PER_IMAGE",
    "DEFAULT_NUM_LOGITS",
    "DEFAULT_TEMPLATE",
    "ExtractionConfig",
    "FineTunedZeroShot",
    "base_novel_scores",
    "choose_alpha",
    "ensemble_logits",
    "finetune_zero_shot",
    "harmonic_mean",
    "make_plugin",
    "proxy_logits",
    "HFCLIPZeroShot",
    "ImageNetTextHead",
    "LogitCache",
    "MiniLMTextEncoder",
    "RefineConfig",
    "TransMiterAdapter",
    "ZeroShotClassifier",
    "adapter_accuracy",
    "aux_vocabulary",
    "aux_words_sha256",
    "build_class_list",
    "choose_lambda",
    "class_list_sha256",
    "destandardize",
    "extract_adapter",
    "fit_ridge",
    "kd_loss",
    "load_adapter",
    "normalised_lambda",
    "orthogonal_alignment",
    "random_orthogonal",
    "refine_adapter",
    "save_adapter",
    "standardize",
    "transfer_adapter",
]
