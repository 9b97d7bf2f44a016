"""``vimw demo``: the end-to-end demo on the built-in default (the workflow: ``vimw.workflows.demo``)."""

from __future__ import annotations


def register(commands) -> None:
    from vimw.cli.options import nonneg_int, positive_int
    from vimw.workflows.demo import DemoSettings

    d = DemoSettings()
    parser = commands.add_parser("demo", help="run the end-to-end demo (zoo, aggregation, baselines, transfer)")
    parser.add_argument("--workdir", default=d.workdir, help=f"where the zoo, models and results go (default {d.workdir})")
    parser.add_argument("--task", default=d.task, help=f"downstream task (default {d.task})")
    parser.add_argument("--shots", type=positive_int, default=d.shots, help=f"images per class (default {d.shots})")
    parser.add_argument("--seed", type=nonneg_int, default=d.seed)
    parser.add_argument("--max-test", type=positive_int, default=d.max_test, help="test images scored per method")
    parser.add_argument("--skip-transfer", action="store_true", help="stop after the aggregation step")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from vimw.workflows.demo import DemoSettings, run_demo

    run_demo(DemoSettings(workdir=args.workdir, task=args.task, shots=args.shots, seed=args.seed,
                          max_test=args.max_test, transfer=not args.skip_transfer))
    return 0
