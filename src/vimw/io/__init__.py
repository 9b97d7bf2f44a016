"""The only place vimw reads and writes files.

- ``atomic``: crash-safe writes (temporary file in the same directory, fsync, rename)
  and an advisory directory lock for concurrent writers.
- ``tensors``: safetensors, the only format tensors are stored in.
- ``manifest``: JSON metadata, versioned and validated.
"""

from vimw.io.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    file_lock,
    fsync_dir,
    is_temporary,
    lock_is_held,
    sha256_file,
)
from vimw.io.manifest import dumps_json, read_json, write_json
from vimw.io.tensors import load_tensors, save_tensors

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "file_lock",
    "fsync_dir",
    "is_temporary",
    "lock_is_held",
    "dumps_json",
    "sha256_file",
    "read_json",
    "write_json",
    "load_tensors",
    "save_tensors",
]
