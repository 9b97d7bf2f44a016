"""The server's defaults, in one light file (the command line reads them without importing torch)."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"  # loopback unless told otherwise
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 32  # images per batch
DEFAULT_MAX_WAIT_MS = 10.0  # longest a request waits for others to join its batch
DEFAULT_MAX_UPLOAD_MB = 16.0  # largest request body
DEFAULT_TOP = 5  # classes per image
DEFAULT_DEVICE = "cpu"
DEVICE_PATTERN = r"cpu|cuda(:[0-9]+)?"  # where the backbone, plug-ins and heads run
FOLD_POLICIES = ("auto", "never", "always")  # LoRA models: their own folded backbone copy or the shared pass
