"""Training: heads, the task model, the loop (single process or torchrun/DDP), checkpoints."""

from vimw.training.config import TrainConfig
from vimw.training.engine import cosine_lr, run_fit
from vimw.training.heads import HeadConfig, build_head, head_config_for
from vimw.evaluation import evaluate, predict_logits  # re-exported: training and scoring go together
from vimw.training.loop import FitResult, fit
from vimw.training.task_model import TaskModel

__all__ = [
    "FitResult",
    "HeadConfig",
    "TaskModel",
    "TrainConfig",
    "build_head",
    "cosine_lr",
    "evaluate",
    "fit",
    "head_config_for",
    "predict_logits",
    "run_fit",
]
