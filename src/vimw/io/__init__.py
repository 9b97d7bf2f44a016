"""The only place vimw reads and writes files.

- ``atomic``: crash-safe writes (temporary file in the same directory, fsync, rename)
  and an advisory directory lock for concurrent writers.
- ``tensors``: safetensors, the only format tensors are stored in.
- ``manifest``: JSON metadata, versioned and validated.
"""

from vimw._lazy import lazy_exports

# Exports are loaded on first use (PEP 562), so reading JSON (``vimw zoo list``)
# does not pay for importing torch, which only the tensor functions need.
_EXPORTS = {
    "atomic_write_bytes": "atomic",
    "atomic_write_text": "atomic",
    "file_lock": "atomic",
    "fsync_dir": "atomic",
    "is_temporary": "atomic",
    "lock_is_held": "atomic",
    "sha256_file": "atomic",
    "dumps_json": "manifest",
    "read_json": "manifest",
    "write_json": "manifest",
    "unmeasured_as_null": "manifest",
    "load_tensors": "tensors",
    "save_tensors": "tensors",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


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
    "unmeasured_as_null",
    "load_tensors",
    "save_tensors",
]
