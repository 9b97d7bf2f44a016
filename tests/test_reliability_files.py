"""Nothing unsafe is loaded, everything is checked: safetensors only, validated manifests,
checksums, backbone fingerprints, and a static scan of the sources.

Property-based tests throw random, truncated and mutated bytes at ``load_tensors``,
``read_json``, module manifests (through ``Zoo.manifest`` / ``Zoo.load`` / ``verify``)
and the zoo index: every case must end in a ``VimwError`` subclass whose message names
the file (or load fine), never an exception from deep inside torch or safetensors, and
nothing may be written.
"""

from __future__ import annotations

import ast
import json
import pickle
import struct
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.reliability import FakeBackbone, add_tiny, listing, report_counts, tiny_module
from vimw.errors import BackboneMismatchError, FormatError, IntegrityError, VimwError
from vimw.io import load_tensors, read_json, save_tensors, write_json
from vimw.zoo import Zoo
from vimw.zoo.store import INDEX_FILE, MANIFEST_FILE, WEIGHTS_FILE

SRC = Path(__file__).resolve().parents[1] / "src" / "vimw"
COUNTS = {"corrupt inputs (hypothesis)": 0, "corrupt inputs (fixed cases)": 0}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    report_counts(request.config, "files", COUNTS)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    zoo = Zoo(tmp_path_factory.mktemp("zoo") / "zoo")
    add_tiny(zoo, "good", seed=1)
    return zoo.root


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("tensors") / "x.safetensors"
    save_tensors(path, {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(4, dtype=torch.int64)})
    return path.read_bytes()


def _counted(kind: str = "corrupt inputs (hypothesis)") -> None:
    COUNTS[kind] += 1


def _random_file(tmp_path_factory, name: str, data: bytes) -> Path:
    """Count one generated example and write its bytes to a fresh file called ``name``."""
    _counted()
    path = tmp_path_factory.mktemp("random") / name
    path.write_bytes(data)
    return path


def _expect_vimw_error(call, where: str, allowed=(VimwError,)):
    """Run ``call``: it may succeed, or raise a VimwError whose message names ``where``."""
    try:
        return call()
    except allowed as exc:
        assert where in str(exc), f"message does not say where: {exc}"
        return None


# -- safetensors -----------------------------------------------------------------------
@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_are_never_loaded_as_tensors(tmp_path_factory, data):
    path = _random_file(tmp_path_factory, "w.safetensors", data)
    before = listing(path.parent)
    with pytest.raises(FormatError) as info:
        load_tensors(path)
    assert str(path) in str(info.value)
    assert listing(path.parent) == before


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_truncated_safetensors_are_refused(tmp_path_factory, valid_bytes, cut):
    _counted()
    path = tmp_path_factory.mktemp("t") / "w.safetensors"
    path.write_bytes(valid_bytes[: cut % len(valid_bytes)])
    with pytest.raises(FormatError, match="w.safetensors"):
        load_tensors(path)


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_safetensors_load_or_fail_cleanly_and_never_pass_the_checksum(tmp_path_factory, valid_bytes, edits):
    _counted()
    data = bytearray(valid_bytes)
    for position, value in edits:
        data[position % len(data)] = value
    path = tmp_path_factory.mktemp("m") / "w.safetensors"
    path.write_bytes(bytes(data))
    _expect_vimw_error(lambda: load_tensors(path), str(path), allowed=(FormatError,))
    if bytes(data) != valid_bytes:
        from hashlib import sha256

        with pytest.raises(IntegrityError, match="sha256 mismatch"):
            load_tensors(path, expected_sha256=sha256(valid_bytes).hexdigest())


_DTYPES = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "XX", "", "F8_E4M3"])
_SHAPES = st.lists(st.integers(min_value=-2, max_value=2**40), max_size=4)


@SETTINGS
@given(
    entries=st.dictionaries(
        st.text(max_size=8),
        st.fixed_dictionaries(
            {"dtype": _DTYPES, "shape": _SHAPES, "data_offsets": st.lists(st.integers(-1, 2**40), min_size=0, max_size=3)}
        ),
        max_size=3,
    ),
    payload=st.binary(max_size=64),
)
def test_hostile_safetensors_headers_fail_cleanly(tmp_path_factory, entries, payload):
    """Headers that lie about dtypes, shapes and offsets (e.g. a 2**40-element tensor)."""
    _counted()
    header = json.dumps(entries).encode()
    path = tmp_path_factory.mktemp("h") / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)
    _expect_vimw_error(lambda: load_tensors(path), str(path), allowed=(FormatError,))


def test_pickle_files_are_refused_by_name_and_by_content(tmp_path):
    tensors = {"w": torch.ones(2)}
    for suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl"):
        path = tmp_path / f"module{suffix}"
        torch.save(tensors, path)
        with pytest.raises(FormatError, match="pickle"):
            load_tensors(path)
        _counted("corrupt inputs (fixed cases)")
    disguised = tmp_path / "module.safetensors"
    for writer in (lambda p: torch.save(tensors, p), lambda p: p.write_bytes(pickle.dumps(tensors, protocol=4))):
        writer(disguised)
        with pytest.raises(FormatError, match="pickle"):
            load_tensors(disguised)
        _counted("corrupt inputs (fixed cases)")
    with pytest.raises(FormatError, match="cannot be read"):
        load_tensors(tmp_path)  # a directory
    with pytest.raises(FormatError, match="missing"):
        load_tensors(tmp_path / "absent.safetensors")
    COUNTS["corrupt inputs (fixed cases)"] += 2


def test_a_pickle_offered_as_a_module_is_refused(tmp_path):
    zoo = Zoo(tmp_path / "zoo")
    add_tiny(zoo, "m", seed=1)
    directory = zoo.module_dir("m")
    # 1. a torch.save file in place of the weights, with a manifest whose sha256 matches it.
    torch.save(tiny_module(1).state_dict(), directory / WEIGHTS_FILE)
    manifest = read_json(directory / MANIFEST_FILE)
    from vimw.io import sha256_file

    manifest["weights"]["sha256"] = sha256_file(directory / WEIGHTS_FILE)
    write_json(directory / MANIFEST_FILE, manifest)
    with pytest.raises(FormatError, match="pickle"):
        zoo.load("m", FakeBackbone())
    # 2. a manifest pointing at a .pt file.
    (directory / "module.pt").write_bytes((directory / WEIGHTS_FILE).read_bytes())
    manifest["weights"]["file"] = "module.pt"
    write_json(directory / MANIFEST_FILE, manifest)
    with pytest.raises(FormatError, match="module.safetensors"):
        zoo.load("m", FakeBackbone())
    assert any("module.safetensors" in p for p in zoo.verify())
    COUNTS["corrupt inputs (fixed cases)"] += 2


# -- JSON and manifests ----------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_random_bytes_as_json(tmp_path_factory, data):
    path = _random_file(tmp_path_factory, "manifest.json", data)
    _expect_vimw_error(lambda: read_json(path), str(path), allowed=(FormatError,))


def test_json_edge_cases(tmp_path):
    path = tmp_path / "x.json"
    for text in ("[" * 100_000, '{"a": NaN}', '{"a": -Infinity}', '{"a": ' + "9" * 5000 + "}", "", "\ufeff{}",
                 "[]", '"text"'):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(FormatError, match="x.json"):
            read_json(path)
        _counted("corrupt inputs (fixed cases)")
    with pytest.raises(FormatError, match="cannot be read"):
        read_json(tmp_path)
    with pytest.raises(FormatError, match="NaN"):
        write_json(path, {"score": float("nan")})
    assert path.read_text(encoding="utf-8") == '"text"'  # the old file is untouched
    COUNTS["corrupt inputs (fixed cases)"] += 2


def _valid_manifest(zoo_dir: Path) -> dict:
    return json.loads((zoo_dir / "modules" / "good" / MANIFEST_FILE).read_text())


def _try_zoo_with_manifest(tmp_path_factory, zoo_dir: Path, payload_text: str):
    """Write ``payload_text`` as the module's manifest in a copy of the zoo and use it every way."""
    import shutil

    root = tmp_path_factory.mktemp("z") / "zoo"
    shutil.copytree(zoo_dir, root)
    (root / "modules" / "good" / MANIFEST_FILE).write_text(payload_text, encoding="utf-8")
    zoo = Zoo(root)
    before = listing(root)
    where = str(root / "modules" / "good")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = _expect_vimw_error(lambda: zoo.load("good", FakeBackbone()), where)
        _expect_vimw_error(lambda: zoo.manifest("good"), where)
        problems = zoo.verify()
        _expect_vimw_error(lambda: zoo.load_head("good"), where)
    assert listing(root) == before
    return loaded, problems


@SETTINGS
@given(payload=JSON)
def test_random_json_as_a_manifest(tmp_path_factory, zoo_dir, payload):
    _counted()
    loaded, problems = _try_zoo_with_manifest(tmp_path_factory, zoo_dir, json.dumps(payload))
    assert loaded is None and problems  # nothing random is a valid manifest


MANIFEST_KEYS = ["format", "name", "module", "backbone", "task", "weights", "num_parameters", "metrics",
                 "training", "head", "created", "vimw_version"]


@SETTINGS
@given(
    drop=st.lists(st.sampled_from(MANIFEST_KEYS), max_size=2, unique=True),
    replace=st.dictionaries(st.sampled_from(MANIFEST_KEYS), JSON, max_size=2),
    module=st.dictionaries(st.sampled_from(["kind", "hidden_dim", "sites", "first_block", "dropout", "new_opt"]),
                           JSON | st.sampled_from(["convpass", "lora", "adapter", "gru", 0, 1, 3, 10**6, 10**12, -1]),
                           max_size=3),
    extra=st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda k: k not in MANIFEST_KEYS), JSON, max_size=2),
)
def test_mutated_manifests(tmp_path_factory, zoo_dir, drop, replace, module, extra):
    """Missing keys, wrong types, unknown kinds, wrong or huge shapes, unknown keys."""
    _counted()
    payload = _valid_manifest(zoo_dir)
    for key in drop:
        payload.pop(key)
    payload.update(replace)
    if isinstance(payload.get("module"), dict):
        payload["module"].update(module)
    payload.update(extra)
    loaded, problems = _try_zoo_with_manifest(tmp_path_factory, zoo_dir, json.dumps(payload))
    if loaded is not None:  # loadable: then the config is the one the weights were made with
        assert loaded.config.hidden_dim == 2


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.__setitem__("format", 2), "newer than this vimw supports"),
        (lambda p: p.__setitem__("format", True), "invalid format version"),
        (lambda p: p.pop("weights"), "missing required keys \\['weights'\\]"),
        (lambda p: p["module"].__setitem__("kind", "gru"), "unknown module kind 'gru'"),
        (lambda p: p["module"].__setitem__("hidden_dim", 3), "has shape"),
        (lambda p: p["module"].__setitem__("hidden_dim", 10**9), "cannot be built|has shape"),
        (lambda p: p["module"].__setitem__("hidden_dim", "8"), "hidden_dim"),
        (lambda p: p.__setitem__("metrics", [1]), "'metrics' must be an object"),
        (lambda p: p.__setitem__("name", "other"), "names the module 'other'"),
        (lambda p: p.__setitem__("name", "../../etc"), "invalid module name"),
        (lambda p: p["weights"].__setitem__("sha256", "0" * 64), "sha256 mismatch"),
    ],
)
def test_manifest_errors_say_what_and_where(tmp_path_factory, zoo_dir, change, message):
    payload = _valid_manifest(zoo_dir)
    change(payload)
    import shutil

    root = tmp_path_factory.mktemp("e") / "zoo"
    shutil.copytree(zoo_dir, root)
    write_json(root / "modules" / "good" / MANIFEST_FILE, payload)
    before = listing(root)
    with pytest.raises(VimwError, match=message) as info:
        Zoo(root).load("good", FakeBackbone())
    assert listing(root) == before
    assert "good" in str(info.value)
    _counted("corrupt inputs (fixed cases)")


def test_unknown_keys_load_with_a_warning(tmp_path, zoo_dir):
    import shutil

    root = tmp_path / "zoo"
    shutil.copytree(zoo_dir, root)
    payload = _valid_manifest(zoo_dir)
    payload["licence"] = "cc-by"
    payload["module"]["future_option"] = 1
    write_json(root / "modules" / "good" / MANIFEST_FILE, payload)
    with pytest.warns(UserWarning, match="licence") as record:
        module = Zoo(root).load("good", FakeBackbone())
    assert any("future_option" in str(w.message) for w in record)
    assert module.num_parameters() > 0 and Zoo(root).verify() == []
    _counted("corrupt inputs (fixed cases)")


@SETTINGS
@given(payload=JSON, raw=st.binary(max_size=100), use_raw=st.booleans())
def test_random_index(tmp_path_factory, zoo_dir, payload, raw, use_raw):
    _counted()
    import shutil

    root = tmp_path_factory.mktemp("i") / "zoo"
    shutil.copytree(zoo_dir, root)
    index = root / INDEX_FILE
    if use_raw:
        index.write_bytes(raw)
    else:
        write_json(index, {"format": 1, "modules": payload} if isinstance(payload, dict) else {"x": payload})
    before = listing(root)
    zoo = Zoo(root)
    _expect_vimw_error(zoo.list, str(index))
    assert isinstance(zoo.verify(), list)
    assert listing(root) == before


# -- integrity ---------------------------------------------------------------------------
def test_checksums_and_fingerprints_are_checked_before_plugging_in(tmp_path):
    zoo = Zoo(tmp_path / "zoo")
    add_tiny(zoo, "m", seed=1)
    with pytest.raises(BackboneMismatchError, match="'m' was trained on backbone"):
        zoo.load("m", FakeBackbone(fingerprint="0" * 64))
    weights = zoo.module_dir("m") / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of one weight: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        zoo.load("m", FakeBackbone())
    head = zoo.module_dir("m") / "head.safetensors"
    head.write_bytes(head.read_bytes()[:-4])
    with pytest.raises(IntegrityError, match="head.safetensors"):
        zoo.load_head("m")
    problems = zoo.verify()
    assert len(problems) == 2 and all("m: " in p and "sha256" in p for p in problems)
    COUNTS["corrupt inputs (fixed cases)"] += 3


# -- static checks of the sources --------------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            yield node, owner, name


def _keyword(node: ast.Call, name: str):
    for keyword in node.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return "<absent>"


# Writers outside vimw.io that are not vimw state: each with its reason.
ALLOWED_RAW_WRITERS = {
    ("training/run_log.py", "open"): "the training log (log.jsonl) is append-only text, never read back as state",
    ("backbones/hf_clip.py", "write_text"): "save_tiny_clip: a test fixture written next to transformers' save_pretrained",
    ("zoo/store.py", "open"): "the empty owner-lock file of a staging directory (flock only, no content)",
}


def test_sources_load_nothing_unsafe_and_write_only_through_vimw_io():
    """An honest static scan of src/vimw: every torch.load / np.load / pickle / raw write."""
    torch_loads, np_loads, raw_writers = [], [], []
    for path in sorted(SRC.rglob("*.py")):
        relative = str(path.relative_to(SRC))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for module in modules:
                    assert module.split(".")[0] not in {"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}, (
                        f"{relative}: imports {module}"
                    )
        for node, owner, name in _calls(tree):
            if owner == "torch" and name == "load":
                torch_loads.append((relative, _keyword(node, "weights_only")))
            if owner in ("np", "numpy") and name == "load":
                np_loads.append((relative, _keyword(node, "allow_pickle")))
            assert not (owner == "torch" and name == "save"), f"{relative}:{node.lineno}: torch.save (pickle)"
            assert not (owner in ("np", "numpy") and name in ("save", "savez")), f"{relative}:{node.lineno}: np.save"
            if relative.startswith("io/"):
                continue
            writes = name in ("write_text", "write_bytes", "savefig") or (
                name == "open" and any(
                    isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & set("wax")
                    for a in list(node.args[1:2]) + [k.value for k in node.keywords if k.arg == "mode"]
                )
            )
            if name == "savefig" and node.args and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "buffer"):
                raw_writers.append((relative, name, node.lineno))
            elif writes and name != "savefig":
                raw_writers.append((relative, name, node.lineno))
    assert torch_loads == [("backbones/efficientnet_lite.py", True)], torch_loads
    assert np_loads and all(flag is False for _, flag in np_loads), np_loads
    unexpected = [w for w in raw_writers if (w[0], w[1]) not in ALLOWED_RAW_WRITERS]
    assert not unexpected, f"files written without vimw.io (not atomic): {unexpected}"
