"""ViM downstream: per-site softmax gates over a frozen zoo, baselines, saved models."""

from vimw.aggregation.aggregate import MODES, GatedSite, ZooAggregate
from vimw.aggregation.gates import gate_entropy, merge_parameters, softmax_gates, topk_gates
from vimw.aggregation.store import load_downstream, read_manifest, save_downstream
from vimw.aggregation.workflow import BASELINES, METHODS, DownstreamResult, build_model, train_downstream

__all__ = [
    "BASELINES",
    "METHODS",
    "MODES",
    "DownstreamResult",
    "GatedSite",
    "ZooAggregate",
    "build_model",
    "gate_entropy",
    "load_downstream",
    "merge_parameters",
    "read_manifest",
    "save_downstream",
    "softmax_gates",
    "topk_gates",
    "train_downstream",
]
