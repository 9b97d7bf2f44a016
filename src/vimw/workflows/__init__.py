"""Workflows: what the commands do, built on the library's parts. Each holds its own settings.

- ``midstream``: train zoo modules (``train_module``, ``build_zoo``) and record them;
- ``compare``: downstream methods side by side by one recipe (``SearchSettings``), settings
  chosen on validation or, true few-shot, by cross-validation inside the shots; ``run_auto``
  (``vimw aggregate --method auto``) and its estimate of what the zoo gives;
- ``aggregate``: one aggregation run end to end, and the one place a downstream model is
  written (``AggregateSettings``, ``aggregate``, ``save_model``);
- ``predict``: top-k classes of image files (``vimw predict``, the demo, the server);
- ``rank``: which zoo modules suit a task, before training (LogME);
- ``demo``: the end-to-end demo (``DemoSettings``, ``run_demo``).

The downstream methods themselves are ``vimw.methods``. Nothing here is imported by the parts
below it; the command line, recipes and the server call in.
"""
