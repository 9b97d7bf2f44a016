"""ViM downstream: per-site softmax gates over a frozen zoo and saved downstream models.

Training a downstream model (and the baselines) is a method: :mod:`vimw.methods`.
"""

from vimw.aggregation.aggregate import MODES, GatedSite, ZooAggregate
from vimw.aggregation.gates import gate_entropy, merge_parameters, softmax_gates, topk_gates
from vimw.aggregation.store import load_downstream, read_manifest, save_downstream

__all__ = [
    "MODES",
    "GatedSite",
    "ZooAggregate",
    "gate_entropy",
    "load_downstream",
    "merge_parameters",
    "read_manifest",
    "save_downstream",
    "softmax_gates",
    "topk_gates",
]
