"""The module zoo: independently trained modules on one backbone, stored with metadata."""

from vimw._lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
