"""Module cards: a ``README.md`` beside each module, generated from its manifest.

A zoo directory is already something anyone can version with git or upload to a model
hub as it is; the card is what a hub shows for each module: the midstream task and its
data, the metrics, the backbone it plugs into, its size and how it was trained.
Torch-free: it reads the manifest only.
"""

from __future__ import annotations

from vimw.zoo.manifest import ModuleManifest



def _number(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def module_card(manifest: ModuleManifest) -> str:
    """Markdown (with a model-hub style YAML header) describing one zoo module."""
    task, backbone, training = manifest.task, manifest.backbone, manifest.training
    kind = manifest.kind
    arch = backbone.get("arch", "?")
    classes = task.get("classes") or task.get("class_names") or []
    shown = ", ".join(map(str, classes[:12])) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")
    lines = [
        "---",
        "library_name: vimw",
        f"tags: [vimw, vision-middleware, {kind}, {arch}, {task.get('kind', 'classification')}]",
        "---",
        "",
        f"# {manifest.name}",
        "",
        f"A vimw zoo module: a `{kind}` plug-in ({manifest.num_parameters:,} parameters) for the frozen "
        f"`{arch}` backbone at {backbone.get('image_size', '?')} px, trained on the midstream task "
        f"`{task.get('name')}`. It only loads into the backbone whose weights have the fingerprint below.",
        "",
        "| | |",
        "|---|---|",
        f"| task | `{task.get('name')}` ({task.get('kind', 'classification')}): {task.get('description', '')} |",
        f"| data | dataset `{task.get('dataset')}`"
        + (f", classes: {shown}" if shown else "")
        + f"; {_number(task.get('train_images'))} train / {_number(task.get('val_images'))} val / "
        f"{_number(task.get('test_images'))} test images |",
    ]
    if task.get("origins"):
        lines.append("| image sources | " + ", ".join(f"{k}: `{v}`" for k, v in task["origins"].items()) + " |")
    if task.get("teacher"):
        teacher = task["teacher"]
        lines.append(f"| teacher | `{teacher.get('arch')}` at {teacher.get('image_size')} px: {teacher.get('targets')}"
                     f" (labelling took {teacher.get('seconds')} s) |")
    metrics = ", ".join(f"{k} {_number(v)}" for k, v in manifest.metrics.items() if not isinstance(v, (dict, list)))
    lines += [
        f"| metrics | {metrics} |",
        f"| backbone | `{arch}` (source `{backbone.get('source', arch)}`), {backbone.get('image_size', '?')} px, "
        f"fingerprint `{manifest.fingerprint}` |",
        f"| module | {manifest.module} |",
        f"| size | {manifest.num_parameters:,} parameters; weights `{manifest.weights.get('file')}` "
        f"sha256 `{manifest.weights.get('sha256')}` |",
        f"| training | {_number(training.get('epochs'))} epochs, lr {training.get('lr')}, batch "
        f"{training.get('batch_size')}, seed {training.get('seed')}; {training.get('seconds')} s "
        f"({training.get('images_per_second')} images/s, {training.get('world_size', 1)} process(es)) |",
        f"| created | {manifest.created} with vimw {manifest.vimw_version} |",
        "",
        "## Use",
        "",
        "```bash",
        f"vimw zoo show {manifest.name} --zoo ZOO",
        f"vimw aggregate --zoo ZOO --modules {manifest.name} --task TASK --shots 10 --out MODEL_DIR",
        f"vimw zoo import ZOO --zoo MY_ZOO --modules {manifest.name}",
        "```",
        "",
    ]
    return "\n".join(lines)
