"""Downstream methods, one registered object each (``vimw aggregate --method NAME``).

- ``baselines``: ``linear_probe``, ``scratch`` (a new module), ``full_ft`` (benchmark only);
- ``vim``: ViM's aggregation modes ``ens``, ``topk``, ``uniform``, ``merge``, ``single``;
- ``fitted``: ``gates_ridge``, ``gates_cma`` (gates fitted to a held-out ridge objective);
- ``zoo_init``: ``zoo_init``, ``zoo_init_gated`` (a new module initialised from the zoo);
- ``closed_form``: ``ridge_probe``, ``zoo_ridge`` (a ridge head in closed form on the frozen
  backbone / the amplified uniform zoo ensemble: no training seed, no validation images);
- ``residual``: ``zoo_residual`` (the frozen uniform zoo ensemble plus a new module trained like ``scratch``).

``base`` defines :class:`DownstreamMethod` and the registry; importing this package registers
every built-in method. Choosing among methods (``auto``) is a workflow: ``vimw.workflows.compare``.
"""

from vimw.methods.base import (
    GATED_GRID,
    HEAD_ONLY_GRID,
    MODULE_GRID,
    DownstreamMethod,
    DownstreamResult,
    FitHooks,
    MethodContext,
    auto_candidates,
    build_model,
    get_method,
    list_methods,
    register_method,
    train_downstream,
    unregister_method,
    zoo_methods,
)
# Registration order is the order methods are listed in (ViM first, baselines last).
from vimw.methods import vim, fitted, zoo_init, closed_form, residual, baselines  # noqa: F401, I001  (registers the built-in methods)
from vimw.methods.zoo_init import zoo_average_module

__all__ = [
    "GATED_GRID",
    "HEAD_ONLY_GRID",
    "MODULE_GRID",
    "DownstreamMethod",
    "DownstreamResult",
    "FitHooks",
    "MethodContext",
    "auto_candidates",
    "build_model",
    "get_method",
    "list_methods",
    "register_method",
    "train_downstream",
    "unregister_method",
    "zoo_average_module",
    "zoo_methods",
]
