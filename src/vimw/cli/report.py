"""``vimw report``: a static HTML page of a zoo, downstream models and benchmark results."""

from __future__ import annotations


def register(commands) -> None:
    parser = commands.add_parser("report", help="write a static HTML report (tables, gate heatmaps, plots)")
    parser.add_argument("--out", required=True, help="directory for index.html and its images")
    parser.add_argument("--zoo", help="a zoo directory: its module table and training curves")
    parser.add_argument("--models", nargs="+", default=[], help="downstream model directories (their gate heatmaps)")
    parser.add_argument("--results", help="a benchmark results folder with downstream.json / transfer.json "
                                          "(e.g. benchmarks/results): its charts and tables")
    parser.add_argument("--logs", nargs="+", default=[], help="JSON-lines training logs to plot")
    parser.add_argument("--screenshot", help="also save a PNG screenshot of the page (needs headless Chromium)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from vimw.report import build_report

    page = build_report(args.out, zoo=args.zoo, models=args.models, results=args.results, logs=args.logs)
    print(f"report: {page}")
    if args.screenshot:
        from vimw.report.browser import screenshot

        print(f"screenshot: {screenshot(page, args.screenshot)}")
    return 0
