"""Where a training run's per-epoch records go: a JSON-lines file and/or TensorBoard.

The JSON-lines log is plain text, one record per epoch (loss, metrics, learning
rate, images per second), appended as the run goes so a crash keeps what was
logged; it is what reports and plots read. TensorBoard event files are optional
(extra ``tensorboard``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vimw._extras import require


class RunLog:
    """The run log: one JSON line per epoch, and TensorBoard scalars when asked for."""

    def __init__(self, jsonl_path: str | os.PathLike | None = None,
                 tensorboard_dir: str | os.PathLike | None = None) -> None:
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self._writer = None
        if tensorboard_dir is not None:
            require("tensorboard", "tensorboard", "TensorBoard logging")
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=os.fspath(tensorboard_dir))

    def write(self, record: dict) -> None:
        """Append one record (an epoch's numbers) to the log."""
        if self.jsonl_path is not None:
            with open(self.jsonl_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = int(record.get("epoch", 0))
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key.replace("_", "/", 1) if key.startswith("val_") else key, value, step)
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
