"""vimw.io, the one place files are read and written: atomic writes, locks, safetensors, JSON, names."""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import pickle

import pytest
import torch

from vimw.errors import BusyError, FormatError, IntegrityError
from vimw.io import (
    atomic_write_bytes,
    file_lock,
    load_tensors,
    lock_is_held,
    read_json,
    save_tensors,
    sha256_file,
    write_json,
)
from vimw.io import atomic, names


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_sha256_file_is_the_digest_of_the_bytes(tmp_path):
    path = tmp_path / "x"
    atomic_write_bytes(path, b"vimw" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"vimw" * 1000).hexdigest()


def _hold(path, ready, release):
    with file_lock(path):
        ready.set()
        release.wait(10)


def test_a_held_lock_is_seen_and_a_second_writer_is_refused_without_waiting(tmp_path):
    path = tmp_path / ".lock"
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        assert lock_is_held(path)
        with pytest.raises(BusyError, match="the model"):
            with file_lock(path, wait=False, what="the model"):
                pass
    finally:
        release.set()
        holder.join(10)
    assert not lock_is_held(path)
    with file_lock(path, wait=False):
        pass


def test_tensors_round_trip_and_a_changed_file_is_caught(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    digest = save_tensors(tmp_path / "t.safetensors", tensors)
    loaded = load_tensors(tmp_path / "t.safetensors", expected_sha256=digest)
    assert set(loaded) == {"a", "b"} and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with pytest.raises(IntegrityError):
        load_tensors(tmp_path / "t.safetensors", expected_sha256="0" * 64)


def test_a_pickle_is_never_loaded_as_tensors(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    with pytest.raises(FormatError):
        load_tensors(path)
    with pytest.raises(FormatError, match="not a tensor"):
        save_tensors(tmp_path / "x.safetensors", {"a": [1, 2]})
    assert not (tmp_path / "x.safetensors").exists()


def test_json_round_trips_and_refuses_what_it_cannot_represent(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1, "b": [1.5, "x"], "c": None})
    assert read_json(tmp_path / "m.json") == {"a": 1, "b": [1.5, "x"], "c": None}
    with pytest.raises(FormatError, match="NaN"):
        write_json(tmp_path / "bad.json", {"a": math.nan})
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match="JSON object"):
        read_json(tmp_path / "list.json")
    (tmp_path / "nan.json").write_text('{"a": NaN}')
    with pytest.raises(FormatError):
        read_json(tmp_path / "nan.json")


def test_file_names_are_plain_names_and_formats_are_versions():
    values = {k: v for k, v in vars(names).items() if k.isupper()}
    files = {k: v for k, v in values.items() if k.endswith(("_FILE", "_DIR"))}
    assert files and all(isinstance(v, str) and os.sep not in v and v for v in files.values())
    assert all(isinstance(v, (int, str)) for k, v in values.items() if "FORMAT" in k)
