"""The N zoo modules of one site run as one grouped computation (issue 6, item 1).

Each module kind declares its stacked runner when it registers
(``register_module_kind(..., stacked=...)``; the runners live in the kinds' folders,
their shared machinery in ``vimw.modules.stacked``). This file picks the runner for
the modules present at a site, or none when they cannot run as one group.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from vimw.modules import StackedModules
from vimw.modules.registry import lookup_module_kind


def stack_modules(modules: Sequence[nn.Module]) -> StackedModules | None:
    """A stacked runner for ``modules``, or ``None`` when they cannot run as one group.

    They can when all are of one registered kind that declares a stacked runner (its
    exact module class, not a subclass that may change ``forward``), sit at the same
    site, have parameters of identical shapes and pass the runner's own ``accepts``.
    """
    if not modules:
        return None
    cls = type(modules[0])
    entry = lookup_module_kind(getattr(cls, "kind", ""))
    stacker = entry.stacked_cls if entry is not None and entry.module_cls is cls else None
    if stacker is None or any(type(m) is not cls for m in modules):
        return None
    site = modules[0].site
    if any(m.site != site for m in modules):
        return None
    shapes = [{n: tuple(p.shape) for n, p in m.named_parameters()} for m in modules]
    if any(s != shapes[0] for s in shapes) or set(shapes[0]) != set(stacker.names):
        return None
    if not stacker.accepts(modules):
        return None
    return stacker(modules)


__all__ = ["StackedModules", "stack_modules"]
