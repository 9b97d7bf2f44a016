"""TransMiter: logit-space adaptation transfer from a weak to a stronger model.

One home per concept:

* ``adapter`` - the logit-space adapter and its file format;
* ``scoring`` - base / novel / HM, the blends (TransMiter's, proxy, ensemble) and their alpha;
* ``teacher`` - the fine-tuned weak model (a plug-in on a zero-shot model) and its file format;
* ``steps`` - extract (no labels), apply (no backpropagation), refine (TransMiter+), and the
  one :func:`select_lambda`;
* ``protocol`` - the base-to-novel protocol that runs the steps and the baselines;
* ``zeroshot``, ``vocab``, ``cache``, ``procrustes``, ``standardize`` - the pieces under them.
"""

from vimw._lazy import lazy_exports

# The submodule ``standardize`` shares its function's name: bind the function eagerly so the
# package attribute is the function, not the module.
from vimw.transfer.standardize import destandardize, standardize

_EXPORTS = {
    "TransMiterAdapter": "adapter", "load_adapter": "adapter", "random_orthogonal": "adapter",
    "save_adapter": "adapter",
    "LogitCache": "cache",
    "DEFAULT_LAMBDA_PER_IMAGE": "procrustes", "normalised_lambda": "procrustes",
    "orthogonal_alignment": "procrustes",
    "DEFAULT_NUM_LOGITS": "vocab", "DEFAULT_TEMPLATE": "vocab", "aux_vocabulary": "vocab",
    "aux_words_sha256": "vocab", "build_class_list": "vocab", "class_list_sha256": "vocab",
    "HFCLIPZeroShot": "zeroshot", "ImageNetTextHead": "zeroshot", "MiniLMTextEncoder": "zeroshot",
    "ZeroShotClassifier": "zeroshot", "fit_ridge": "zeroshot",
    "ALPHA_GRID": "scoring", "base_novel_scores": "scoring", "blend_logits": "scoring",
    "ensemble_logits": "scoring", "harmonic_mean": "scoring", "proxy_logits": "scoring",
    "select_alpha": "scoring", "validation_metrics": "scoring",
    "FineTunedZeroShot": "teacher", "TeacherConfig": "teacher", "finetune_teacher": "teacher",
    "load_teacher": "teacher", "make_plugin": "teacher", "save_teacher": "teacher",
    "ExtractionConfig": "steps", "LAMBDA_GRID": "steps", "RefineConfig": "steps", "adapter_logits": "steps",
    "apply_adapter": "steps", "extract_adapter": "steps", "kd_loss": "steps", "refine_adapter": "steps",
    "select_lambda": "steps",
    "DataConfig": "protocol", "ProtocolConfig": "protocol", "load_zero_shot": "protocol",
    "make_sets": "protocol", "measure_pairs": "protocol", "run_protocol": "protocol",
}  # fmt: skip

__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted([*_EXPORTS, "destandardize", "standardize"])
