"""Which zoo modules overlap a downstream task, derived from their manifests, never typed by hand.

A module overlaps a task when either holds something the other was trained or scored on:

- **images**: both can draw on the same source images (a built-in dataset's original
  file and class; for a user's folder or ``.npz``, an image with the same content);
- **classes**: the module's images show classes of the task's label space: the same
  class names from the same dataset, or from another dataset declared to share the label
  space (MNIST's and scikit-learn's digits 0-9). This holds for every module kind, not
  only classifiers: a digit segmenter has seen every digit, though not its label;
- **unknown**: the module's images cannot be traced (its dataset declares no origins,
  its user folder is gone), so it may overlap anything.

Both sides are read as ``vimw.data.provenance.SourceRecord``. Classes a task keeps are
honoured for built-in datasets (footwear shares nothing with apparel of the same file);
a user dataset's images count whole. ``leave_overlap_out`` gives a zoo minus everything
that overlaps: the zoo a benchmark of unseen tasks may use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from vimw.data.provenance import SourceRecord, source_record
from vimw.data.specs import TaskSpec, resolve_task
from vimw.errors import DataError

OVERLAP_KINDS = ("images", "classes", "unknown")


@dataclass(frozen=True)
class Overlap:
    """One reason a module overlaps a task: ``kind`` (one of ``OVERLAP_KINDS``) and what is shared."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


class ManifestSource(Protocol):
    """What ``leave_overlap_out`` needs of a zoo: its module names and their manifests."""

    def names(self) -> list[str]: ...

    def manifest(self, name: str): ...


def _listed(names) -> str:
    names = sorted(map(str, names))
    return ", ".join(names[:6]) + (f" ... ({len(names)} in all)" if len(names) > 6 else "")


def _shared_images(module: SourceRecord, task: SourceRecord) -> list[Overlap]:
    shared = module.images & task.images
    if not shared:
        return []
    pairs = [item for item in shared if isinstance(item, tuple)]
    if pairs:
        by_file: dict[str, list[str]] = {}
        for origin, name in pairs:
            by_file.setdefault(origin, []).append(name)
        detail = "; ".join(f"{origin} ({_listed(names)})" for origin, names in sorted(by_file.items()))
        return [Overlap("images", detail)]
    return [Overlap("images", f"{len(shared)} image(s) with identical content")]


def _shared_classes(module: SourceRecord, task: SourceRecord) -> list[Overlap]:
    if module.label_space != task.label_space:
        return []
    if module.classes is None or task.classes is None:
        shared = module.classes or task.classes or ()
    else:
        shared = set(module.classes) & set(task.classes)
        if not shared:
            return []
    where = (f"dataset {module.dataset}" if module.dataset == task.dataset
             else f"label space {module.label_space!r} of {module.dataset} and {task.dataset}")
    if module.kind == "classification":
        return [Overlap("classes", f"learned {_listed(shared) or 'every class'} ({where})")]
    return [Overlap("classes", f"saw images of {_listed(shared) or 'every class'} in a {module.kind} task ({where})")]


def _traced(task: TaskSpec | SourceRecord) -> SourceRecord:
    record = task if isinstance(task, SourceRecord) else source_record(task)
    if not record.known:
        raise DataError(f"cannot tell which modules overlap a task on dataset {record.dataset!r}: its images "
                        "cannot be traced (declare its origins in vimw.data.sources.DATASET_ORIGINS)")
    return record


def overlap_reasons(module_task: Mapping, task: TaskSpec | SourceRecord) -> list[Overlap]:
    """Why a module (its manifest's ``task`` entry) overlaps ``task``; empty if it does not.

    Pure for built-in datasets; a user's folder or archive is read to hash its images.
    """
    module, target = source_record(module_task), _traced(task)
    if not module.known:
        return [Overlap("unknown", f"the images of dataset {module.dataset!r} cannot be traced")]
    return _shared_images(module, target) + _shared_classes(module, target)


def zoo_overlaps(module_tasks: Mapping[str, Mapping], task: TaskSpec | SourceRecord) -> dict[str, list[Overlap]]:
    """Module name -> reasons it overlaps ``task`` (an empty list: it does not), for every module given."""
    target = _traced(task)
    return {name: overlap_reasons(entry, target) for name, entry in sorted(module_tasks.items())}


def module_tasks(zoo: ManifestSource) -> dict[str, dict]:
    """Every module's manifest ``task`` entry, by module name."""
    return {name: dict(zoo.manifest(name).task) for name in zoo.names()}


def leave_overlap_out(zoo: ManifestSource, task: str | TaskSpec | SourceRecord) -> list[str]:
    """The names of the zoo's modules that do not overlap ``task`` (a task name, path, spec or record), sorted."""
    target = task if isinstance(task, (TaskSpec, SourceRecord)) else resolve_task(task)
    return [name for name, reasons in zoo_overlaps(module_tasks(zoo), target).items() if not reasons]
