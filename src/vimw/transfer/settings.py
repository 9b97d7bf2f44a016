"""The defaults of TransMiter, in one place.

:class:`TransferSettings` is what ``vimw transfer`` (extract, apply, refine, evaluate), the
built-in recipe's ``transfer`` section, the benchmark's protocol and the demo start from. The
pair was chosen by measurement (``benchmarks/results/transfer_pairs.md``: Lite0 at 64 px is
at chance); each step's own settings keep their defaults in their config class (data sizes in
:class:`~vimw.transfer.data.DataConfig`, training in the teacher, extraction and refinement
configs), which this object bundles.

A recipe's ``transfer`` section (:meth:`TransferSettings.to_section`): top-level keys are the
options of ``extract``; the sub-sections ``apply``, ``refine`` and ``evaluate`` hold those
steps' options. Paths (``out``, ``adapter``, ``cache``) sit beside them and are not settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vimw.errors import FormatError
from vimw.io.names import TRANSFER_CACHE_DIR
from vimw.modules.registry import DEFAULT_MODULE_KIND
from vimw.transfer.data import DataConfig
from vimw.transfer.scoring import ALPHA_GRID, VALIDATION_PROTOCOLS
from vimw.transfer.steps import LAMBDA_GRID, ExtractionConfig, RefineConfig
from vimw.transfer.teacher import TeacherConfig

DEFAULT_WEAK = "efficientnet_lite0@96+invert"
DEFAULT_STRONG = "efficientnet_lite2@160"
DEFAULT_CACHE = str(Path("runs") / TRANSFER_CACHE_DIR)
STEPS = ("extract", "apply", "refine", "evaluate")
DEVELOPMENT_ONLY = ("test_from",)  # a DataConfig field for development runs, not a recipe option
PATHS = ("out", "adapter", "cache")
AUTO = "auto"  # the blend chosen on validation images


@dataclass(frozen=True)
class TransferSettings:
    """Every default of a TransMiter run: the data, the weak -> strong pair, each step's settings."""

    data: DataConfig = field(default_factory=DataConfig)
    weak: str = DEFAULT_WEAK
    strong: str = DEFAULT_STRONG
    finetuned: str = DEFAULT_MODULE_KIND  # a module kind, a zoo directory (ViM aggregation) or a saved teacher
    seed: int = 0
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    lambdas: tuple[float, ...] = LAMBDA_GRID
    alphas: tuple[float, ...] = ALPHA_GRID
    blend: float | None = 1.0  # evaluate: the adapter alone; None = alpha chosen on validation images
    # Validation images behind every choice: "all" classes (score = HM) or "base" classes only.
    # The teacher's epoch is chosen on base classes: the weak model's owner never sees novel labels.
    teacher_protocol: str = "base"
    protocol: str = "all"  # apply (lambda), refine (rate, epoch), evaluate (blend)
    cache: str = DEFAULT_CACHE

    def to_section(self) -> dict[str, Any]:
        """These settings as a recipe's ``transfer`` section (without paths but the cache)."""
        data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.data.to_dict().items()
                if k not in DEVELOPMENT_ONLY}
        if not data["base"]:
            del data["base"]  # the first half of the task's classes
        return {**data, "weak": self.weak, "finetuned": self.finetuned, "seed": self.seed,
                "epochs": self.teacher.epochs, "lr": self.teacher.lr, "consistency": self.teacher.consistency,
                "extraction_epochs": self.extraction.epochs, "protocol": self.teacher_protocol, "cache": self.cache,
                "apply": {"to": self.strong, "lambdas": list(self.lambdas), "protocol": self.protocol},
                "refine": {"lr": list(self.refine.lrs), "epochs": self.refine.epochs, "distill": self.refine.distill,
                           "protocol": self.protocol},
                "evaluate": {"blend": AUTO if self.blend is None else self.blend, "protocol": self.protocol}}

    @classmethod
    def from_section(cls, section: dict[str, Any], step: str = "extract") -> TransferSettings:
        """Settings from a recipe's ``transfer`` section, for ``step`` (its sub-section's options
        win); missing keys keep their defaults, a wrong key or type is a ``FormatError``."""
        if step not in STEPS:
            raise FormatError(f"transfer: unknown step {step!r}; steps are {STEPS}")
        check_section(section)
        base = cls()
        defaults = base.to_section()
        top = {k: v for k, v in section.items() if k not in STEPS and k not in PATHS}
        _check_types(top, {k: v for k, v in defaults.items() if k not in STEPS}, "transfer")
        own = {k: v for k, v in (section.get(step) or {}).items() if k not in PATHS} if step != "extract" else {}
        _check_types(own, defaults.get(step, {}), f"transfer.{step}")
        data = {k: top[k] for k in (f.name for f in fields(DataConfig)) if k in top}
        try:
            settings = replace(
                base, data=DataConfig.from_dict({**base.data.to_dict(), **data}),
                weak=top.get("weak", base.weak), finetuned=top.get("finetuned", base.finetuned),
                seed=top.get("seed", base.seed), teacher_protocol=top.get("protocol", base.teacher_protocol),
                teacher=replace(base.teacher, **_pick(top, {"epochs": "epochs", "lr": "lr", "consistency": "consistency"})),
                extraction=replace(base.extraction, **_pick(top, {"extraction_epochs": "epochs"})),
                cache=str(section.get("cache") or base.cache))
            return _with_step(settings, step, own)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"transfer: {exc}") from None


def check_section(section: Any, where: str = "transfer") -> None:
    """A ``transfer`` section is a mapping, and so is each step's sub-section in it."""
    if not isinstance(section, dict):
        raise FormatError(f"{where}: expected a mapping of option names to values, got {section!r}")
    for step in STEPS[1:]:
        if step in section and not isinstance(section[step], dict):
            raise FormatError(f"{where}.{step}: expected a mapping of option names to values, got {section[step]!r}")


def _pick(values: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {field_name: values[key] for key, field_name in names.items() if key in values}


def _with_step(settings: TransferSettings, step: str, own: dict[str, Any]) -> TransferSettings:
    """``settings`` with one step's own options (``apply``: target and lambdas...)."""
    protocol = own.get("protocol", settings.protocol)
    for value in (protocol, settings.teacher_protocol):
        if value not in VALIDATION_PROTOCOLS:
            raise ValueError(f"protocol must be one of {VALIDATION_PROTOCOLS}, got {value!r}")
    if step == "apply":
        lambdas = tuple(float(v) for v in own.get("lambdas", settings.lambdas))
        return replace(settings, strong=own.get("to", settings.strong), lambdas=lambdas, protocol=protocol)
    if step == "refine":
        refine = replace(settings.refine, **_pick(own, {"epochs": "epochs", "distill": "distill"}),
                         lrs=tuple(float(v) for v in own.get("lr", settings.refine.lrs)))
        return replace(settings, refine=refine, protocol=protocol)
    if step == "evaluate":
        blend = own.get("blend", settings.blend)
        if blend != AUTO and not (blend is None or 0.0 <= float(blend) <= 1.0):
            raise ValueError(f"blend must be in [0, 1] or {AUTO!r}, got {blend!r}")
        return replace(settings, blend=None if blend in (AUTO, None) else float(blend), protocol=protocol)
    return settings


def _check_types(values: dict[str, Any], defaults: dict[str, Any], where: str) -> None:
    """Each key is known and has its default's type (an int passes for a float, a list for a list)."""
    for key, value in values.items():
        if key not in defaults and key != "base":
            raise FormatError(f"{where}: unknown option {key!r}; options are {sorted({*defaults, *PATHS, 'base'})}")
        expected = list if key == "base" else type(defaults[key])
        ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "blend":
            ok = value == AUTO or (isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise FormatError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")


__all__ = ["DEFAULT_CACHE", "DEFAULT_STRONG", "DEFAULT_WEAK", "TransferSettings", "check_section"]
