"""TransMiter: logit-space adaptation transfer from a weak to a stronger model.

What a user calls, re-exported here:

* the steps on files (``vimw transfer``): :func:`extract_step`, :func:`apply_step`,
  :func:`refine_step`, :func:`evaluate_step`, with their defaults in :class:`TransferSettings`
  and the data settings in :class:`DataConfig`;
* the same steps on logits: :func:`extract_adapter`, :func:`apply_adapter` (no
  backpropagation), :func:`refine_adapter` (TransMiter+), :func:`select_lambda`,
  :func:`adapter_logits`, and their configs;
* the adapter and the teacher and their files; the zero-shot models and their loader
  (:func:`load_zero_shot`, one grammar for every model name); scoring (base / novel / HM,
  the blends).

One home per concept: ``adapter``, ``teacher``, ``steps``, ``scoring``, ``zeroshot``; ``data``
(split, image sets, cached zero-shot passes), ``settings`` (every default), ``workflow`` (the
steps on files); ``protocol`` (the base-to-novel benchmark protocol) and ``demo`` (the demo's
transfer step) run them; ``vocab``, ``cache``, ``procrustes``, ``standardize`` are the pieces
under them.
"""

from vimw._lazy import lazy_exports

_EXPORTS = {
    "apply_step": "workflow", "evaluate_step": "workflow", "extract_step": "workflow", "refine_step": "workflow",
    "TransferSettings": "settings", "DataConfig": "data",
    "ExtractionConfig": "steps", "RefineConfig": "steps", "adapter_logits": "steps", "apply_adapter": "steps",
    "extract_adapter": "steps", "refine_adapter": "steps", "select_lambda": "steps",
    "TransMiterAdapter": "adapter", "load_adapter": "adapter", "save_adapter": "adapter",
    "FineTunedZeroShot": "teacher", "TeacherConfig": "teacher", "finetune_teacher": "teacher",
    "load_teacher": "teacher", "make_plugin": "teacher", "save_teacher": "teacher",
    "HFCLIPZeroShot": "zeroshot", "ImageNetTextHead": "zeroshot", "ZeroShotClassifier": "zeroshot",
    "load_zero_shot": "zeroshot",
    "base_novel_scores": "scoring", "blend_logits": "scoring", "ensemble_logits": "scoring",
    "harmonic_mean": "scoring", "proxy_logits": "scoring", "select_alpha": "scoring",
    "validation_metrics": "scoring",
    "demo_step": "demo",
}  # fmt: skip

__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
