"""Training: heads, the task model, the fitting engine and the loop on it, checkpoints.

Exports load on first use (PEP 562): reading ``TrainConfig`` (e.g. for the command
line's defaults) must not import torch.
"""

from vimw._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "FitResult": "engine",
    "cosine_lr": "engine",
    "run_fit": "engine",
    "HeadConfig": "heads",
    "build_head": "heads",
    "head_config_for": "heads",
    "fit": "loop",
    "TaskModel": "task_model",
}
# Scoring goes with training in users' code; it lives in vimw.evaluation.
_FROM_EVALUATION = ("evaluate", "predict_logits")

_local = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str):
    if name in _FROM_EVALUATION:
        import vimw.evaluation

        return getattr(vimw.evaluation, name)
    return _local(name)


__all__ = sorted([*_EXPORTS, *_FROM_EVALUATION])
