"""The HTTP face of ``vimw serve``: a Starlette app on uvicorn (extra ``serve``).

Endpoints (every answer is JSON; every error is ``{"error": {"type", "message"}}`` with a
4xx status that names the problem, and the server keeps serving):

- ``GET /healthz``: ``{"status": "ok", "models": N}``.
- ``GET /v1/models``: the backbone and each model's task, classes, method, backbone
  fingerprint and execution path (shared batched pass or its own folded copy).
- ``POST /v1/models``: ``{"path": DIR, "name": optional, "zoo": optional}`` loads a saved model.
- ``DELETE /v1/models/{name}``: unloads one; the others keep serving.
- ``POST /v1/models/{name}/predict``: image files as ``multipart/form-data`` (every file
  part is an image) or JSON ``{"images": [base64 | {"name", "data": base64}], "top": k}``;
  ``?top=k`` also works. Answers the top-k classes per image, as ``vimw predict`` does.
- ``GET /v1/stats``: the batcher's counters (requests, images, batches, backbone passes),
  the device, and on CUDA the memory torch's allocator holds.

Bodies over ``max_upload_bytes`` are refused while they arrive (413), before anything is
decoded; nothing is ever written to disk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from vimw.errors import BackboneMismatchError, DataError, FormatError, RegistryError, VimwError
from vimw.serve.batcher import Batcher, BatchTooLargeError
from vimw.serve.defaults import DEFAULT_MAX_UPLOAD_MB, DEFAULT_TOP
from vimw.serve.device import memory_stats
from vimw.serve.registry import ModelRegistry, NameTakenError, UnknownModelError
from vimw.workflows.predict import check_top, top_classes

log = logging.getLogger("vimw.serve")


class UploadTooLargeError(VimwError):
    """A request body is larger than the server accepts."""


class UnsupportedMediaError(VimwError):
    """A request body of a content type the endpoint does not read."""


# The most specific class first: the first match gives the status.
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (UnknownModelError, 404),
    (NameTakenError, 409),
    (BackboneMismatchError, 409),
    (UploadTooLargeError, 413),
    (BatchTooLargeError, 413),
    (UnsupportedMediaError, 415),
    (FormatError, 422),
    (RegistryError, 422),
    (DataError, 400),
    (VimwError, 400),
)


def error_response(exc: Exception) -> JSONResponse:
    status = next((code for cls, code in STATUS if isinstance(exc, cls)), 500)
    message = str(exc) if status < 500 else "internal error (see the server's log)"
    return JSONResponse({"error": {"type": type(exc).__name__ if status < 500 else "InternalError",
                                   "message": message}}, status_code=status)


class BodyLimit:
    """ASGI middleware: refuse a body larger than ``limit`` bytes, by its header or as it streams."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = error_response(UploadTooLargeError(self._message(int(declared))))
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise UploadTooLargeError(self._message(seen))
            return message

        await self.app(scope, limited, send)

    def _message(self, size: int) -> str:
        return (f"the request body ({size} bytes or more) is over the server's limit of {self.limit} bytes "
                "(vimw serve --max-upload-mb)")


# -- reading a predict request -------------------------------------------------------------
def decode_base64(entry, index: int) -> tuple[str, bytes]:
    """One JSON image entry (a base64 string, or ``{"name", "data"}``) as ``(name, bytes)``."""
    name, data = f"image{index}", entry
    if isinstance(entry, dict):
        name, data = str(entry.get("name") or name), entry.get("data")
    if not isinstance(data, str):
        raise DataError(f"{name}: expected base64 text, got {type(data).__name__}")
    try:
        return name, base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError(f"{name}: not valid base64 ({exc})") from None


async def read_multipart(request: Request, max_files: int, spool_bytes: int) -> tuple[list[tuple[str, bytes]], object]:
    """The file parts of a ``multipart/form-data`` body as ``(name, bytes)``, and its ``top`` field."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(request.headers, request.stream(), max_files=max_files, max_fields=16)
    parser.spool_max_size = spool_bytes  # files stay in memory (the body limit bounds them): no disk
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise DataError(f"the multipart body cannot be read: {exc.message}") from None
    try:
        files = [(part.filename or key, await part.read()) for key, part in form.multi_items()
                 if isinstance(part, UploadFile)]
        return files, form.get("top")
    finally:
        await form.close()


async def read_json_images(request: Request) -> tuple[list[tuple[str, bytes]], object]:
    """The base64 images of a JSON body ``{"images": [...], "top": k}`` as ``(name, bytes)``, and ``top``."""
    payload = await read_json(request)
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list):
        raise DataError('the JSON body needs "images": a list of base64 strings or {"name", "data"} objects')
    return [decode_base64(entry, i) for i, entry in enumerate(images)], payload.get("top")


async def read_json(request: Request):
    body = await request.body()
    try:
        return json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"the JSON body cannot be parsed: {exc}") from None


async def read_uploads(request: Request, max_files: int, spool_bytes: int) -> tuple[list[tuple[str, bytes]], object]:
    """The request's images as ``(name, bytes)`` and its ``top`` field (``None`` if absent)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await read_multipart(request, max_files, spool_bytes)
    if kind == "application/json":
        return await read_json_images(request)
    if not kind and not await request.body():
        return [], None
    raise UnsupportedMediaError(f"content type {kind or 'none'!r} is not read here: send multipart/form-data "
                                "image files or application/json with base64 images")


def parse_top(value) -> int:
    """``top`` from a query, form field or JSON value (default ``DEFAULT_TOP``)."""
    if value is None:
        return DEFAULT_TOP
    try:
        return check_top(int(value) if isinstance(value, str) else value)
    except (ValueError, VimwError):
        raise DataError(f"top must be a positive integer, got {value!r}") from None


def decode_all(files: list[tuple[str, bytes]], size: int) -> torch.Tensor:
    """uint8 ``N x 3 x size x size`` images, decoded as ``vimw predict`` reads files."""
    from vimw.data.user_data import decode_image

    images = [decode_image(data, size, name) for name, data in files]
    return torch.stack([x.expand(3, -1, -1) if x.shape[0] == 1 else x for x in images])


# -- the app ---------------------------------------------------------------------------------
def create_app(registry: ModelRegistry, batcher: Batcher, *,
               max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)) -> BodyLimit:
    """The ASGI app serving ``registry``'s models through ``batcher``."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "models": len(registry)})

    async def list_models(request: Request) -> JSONResponse:
        return JSONResponse(registry.describe())

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({**batcher.stats(), **memory_stats(registry.device)})

    async def add_model(request: Request) -> JSONResponse:
        payload = await read_json(request)
        if (not isinstance(payload, dict) or not isinstance(payload.get("path"), str)
                or not all(isinstance(payload.get(k), (str, type(None))) for k in ("name", "zoo"))):
            raise DataError('POST /v1/models needs a JSON body {"path": MODEL_DIR, "name": optional, "zoo": optional}'
                            ", all strings")
        served = await run_in_threadpool(registry.load, payload["path"], payload.get("name"), payload.get("zoo"))
        log.info("loaded model %s from %s (%s path)", served.name, served.directory, served.path)
        return JSONResponse(served.describe(), status_code=201)

    async def remove_model(request: Request) -> JSONResponse:
        served = registry.remove(request.path_params["name"])
        log.info("removed model %s", served.name)
        return JSONResponse({"removed": served.name})

    async def predict(request: Request) -> JSONResponse:
        with batcher.incoming():
            served = registry.get(request.path_params["name"])
            files, top = await read_uploads(request, 16 * batcher.max_batch, max_upload_bytes)
            top = parse_top(request.query_params.get("top", top))
            if not files:
                raise DataError("the request holds no image (send image files as multipart/form-data, "
                                'or JSON {"images": [base64, ...]})')
            if len(files) > batcher.max_batch:
                raise BatchTooLargeError(f"the request holds {len(files)} images; one batch takes at most "
                                         f"{batcher.max_batch}")
            images = await run_in_threadpool(decode_all, files, served.predictor.image_size)
            future = batcher.submit(served, images)
        probabilities = await asyncio.wrap_future(future)
        rows = top_classes(probabilities, [name for name, _ in files], served.predictor.class_names, top)
        return JSONResponse({"model": served.name, "predictions": [row.to_dict() for row in rows]})

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"type": "HTTPError", "message": str(exc.detail)}}, status_code=exc.status_code)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models", add_model, methods=["POST"]),
        Route("/v1/models/{name}", remove_model, methods=["DELETE"]),
        Route("/v1/models/{name}/predict", predict, methods=["POST"]),
    ]
    # VimwError: expected (a 4xx); any other exception is a bug: a 500, logged with its traceback.
    app = Starlette(routes=routes, exception_handlers={VimwError: on_error, Exception: on_error,
                                                       HTTPException: on_http_error})
    return BodyLimit(app, max_upload_bytes)


__all__ = ["BodyLimit", "STATUS", "UploadTooLargeError", "create_app", "decode_all",
           "error_response"]
