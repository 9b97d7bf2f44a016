"""The module zoo: independently trained modules on one backbone, stored with metadata."""

from vimw.zoo.manifest import MODULE_FORMAT, ModuleManifest, check_module_name
from vimw.zoo.store import Zoo, ZooError, check_backbone, verify_or_raise

__all__ = ["MODULE_FORMAT", "ModuleManifest", "Zoo", "ZooError", "check_backbone", "check_module_name", "verify_or_raise"]
