"""``vimw serve``: one frozen backbone, many downstream models, one HTTP server (extra ``serve``).

- ``registry``: the loaded models on one shared backbone, zoo modules shared between them;
- ``mixed``: one backbone pass whose rows belong to different models (cross-task batching);
- ``batcher``: the worker thread that groups queued requests into those passes;
- ``app``: the Starlette endpoints; ``server``: uvicorn around them (a process or a thread).

It sits beside the command line, above the workflows: it predicts through
``vimw.workflows.predict``, so it answers what ``vimw predict --model`` prints.
"""

from __future__ import annotations

from vimw._lazy import lazy_exports

_EXPORTS = {
    "ModelRegistry": "registry", "ServedModel": "registry",
    "Batcher": "batcher", "run_batch": "batcher",
    "mixed_features": "mixed",
    "create_app": "app",
    "BackgroundServer": "server", "Service": "server", "start": "server", "run": "server", "bind": "server",
}  # fmt: skip

__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
