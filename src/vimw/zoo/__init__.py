"""The module zoo: independently trained modules on one backbone, stored with metadata."""

from importlib import import_module

# Loaded on first use (PEP 562): listing a zoo (``index``) needs neither torch nor
# the module kinds that ``store`` imports.
_EXPORTS = {
    "MODULE_FORMAT": "manifest",
    "ModuleManifest": "manifest",
    "check_module_name": "manifest",
    "Zoo": "store",
    "check_backbone": "store",
    "verify_or_raise": "store",
    "ZooError": "index",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"vimw.zoo.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'vimw.zoo' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
