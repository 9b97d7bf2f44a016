"""``vimw data list``: the built-in tasks and datasets."""

from __future__ import annotations


def register(commands) -> None:
    parser = commands.add_parser("data", help="built-in datasets and tasks")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    listing = sub.add_parser("list", help="list the built-in tasks")
    listing.set_defaults(handler=run_list)


def run_list(args) -> int:
    from vimw.data import get_task_spec, list_tasks

    print(f"{'task':24s} {'kind':15s} {'dataset':22s} classes")
    for spec in map(get_task_spec, list_tasks()):
        classes = "all" if spec.classes is None else ", ".join(spec.classes)
        print(f"{spec.name:24s} {spec.kind:15s} {spec.dataset:22s} {classes}")
    print("\nYour own data: --task folder:DIR (one sub-folder per class) or --task npz:FILE (images, labels)")
    return 0
