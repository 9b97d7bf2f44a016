"""The base-to-novel protocol: TransMiter's steps and its baselines on one task, seed by seed.

What the benchmark (``benchmarks/transfer.py``) and the demo's transfer step run; the image
sets and the cached zero-shot passes are :mod:`vimw.transfer.data`'s, the defaults
:mod:`vimw.transfer.settings`'. One seed (:func:`run_seed`) runs, in this order:

1. the teacher: the weak model fine-tuned on the base shots (its epoch on base-class
   validation images: the weak model's owner never sees novel labels), and without its
   consistency term for the ablation;
2. extraction, no labels: the teacher's logits on the unlabeled images and their views;
3. the strong model's passes over the alignment and validation images, timed in the seed's
   run as the cost TransMiter pays on the target side;
4. per validation protocol: transfer (lambda), TransMiter+ (refinement), their blends with
   the strong zero-shot model, and the logit-arithmetic baselines (proxy, ensemble);
5. the costly upper reference: the strong model fine-tuned with the teacher's recipe.

Two validation protocols choose every knob - teacher epochs, Procrustes lambda, the blends'
alpha, refinement settings - by the one selection rule (``vimw.evaluation.selection``):
``"all"`` (validation images of base and novel classes, score = HM) and ``"base"`` (base
classes only: novel labels are never seen). Test images are only ever scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vimw.errors import DataError
from vimw.modules.registry import DEFAULT_MODULE_KIND
from vimw.transfer.adapter import TransMiterAdapter
from vimw.transfer.cache import LogitCache
from vimw.transfer.data import (DataConfig, ImageSets, SeedSplit, alignment_names, alignment_rows, calibrate,
                                make_sets, model_logits, seed_split, stack_views, view_names, zero_shot_logits)
from vimw.transfer.scoring import (ALPHA_GRID, base_novel_scores, blend_logits, ensemble_logits, json_safe, proxy_logits,
                                   select_alpha, validation_metrics)
from vimw.transfer.settings import DEFAULT_STRONG, DEFAULT_WEAK
from vimw.transfer.steps import (LAMBDA_GRID, ExtractionConfig, RefineConfig, adapter_logits, apply_adapter,
                                 extract_adapter, refine_adapter, select_lambda)
from vimw.transfer.teacher import FineTunedZeroShot, TeacherConfig, finetune_teacher, make_plugin
from vimw.transfer.zeroshot import load_zero_shot

FIXED_ALPHA = {"transferred": 1.0, "transmiter_plus": 1.0, "proxy": 1.0, "ensemble": 0.5}


@dataclass(frozen=True)
class ProtocolConfig:
    """Everything one run of the protocol depends on (defaults: ``vimw.transfer.settings``)."""

    data: DataConfig = field(default_factory=DataConfig)
    weak: str = DEFAULT_WEAK
    strong: str = DEFAULT_STRONG
    plugin: str = DEFAULT_MODULE_KIND  # a module kind, or a zoo directory (ViM aggregation) for the teacher
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    lambdas: tuple[float, ...] = LAMBDA_GRID
    alphas: tuple[float, ...] = ALPHA_GRID
    protocols: tuple[str, ...] = ("all", "base")
    strong_ft: bool = True
    teacher_ablation: bool = True  # also fine-tune the teacher without the consistency term
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- what every seed shares -----------------------------------------------------------------------------
@dataclass
class Shared:
    """What every seed shares: the image sets, the two models and their cached logits per role."""

    sets: ImageSets
    weak: Any
    strong: Any
    logits: dict[str, dict[str, torch.Tensor]] = field(default_factory=lambda: {"weak": {}, "strong": {}})
    seconds: dict[str, float] = field(default_factory=dict)


def prepare(cfg: ProtocolConfig, cache_dir: str | Path, log: Callable[[str], None] = print) -> Shared:
    """Image sets, calibrated zero-shot models and every zero-shot pass (cached)."""
    cache = LogitCache(cache_dir)
    sets = make_sets(cfg.data)
    shared = Shared(sets, load_zero_shot(cfg.weak, device=cfg.device), load_zero_shot(cfg.strong, device=cfg.device))
    v = cfg.data.views
    wanted = {"weak": view_names("pool", v) + view_names("unlabeled", v) + ["test"],
              "strong": view_names("pool", v) + alignment_names(cfg.data) + ["test"]}
    for role in ("weak", "strong"):
        model, logits = getattr(shared, role), shared.logits[role]
        started = time.perf_counter()
        calibrate(model, sets, cache)
        for name in wanted[role]:
            logits[name] = zero_shot_logits(model, sets, cache, name)
        shared.seconds[f"{role}_zero_shot_passes"] = time.perf_counter() - started
        if role == "weak":  # the alignment images are the first unlabeled ones
            for name in alignment_names(cfg.data):
                logits[name] = logits[name.replace("align", "unlabeled", 1)][: cfg.data.num_align]
        log(f"  {role} zero-shot logits ({model.name}): {shared.seconds[f'{role}_zero_shot_passes']:.1f} s (0 when cached)")
    # warm up, so that the first seed's timed strong passes do not pay for first-call set-up
    shared.strong.encode_images(sets.pool_images[:4], batch_size=4, progress=False)
    return shared


# -- one seed -------------------------------------------------------------------------------------------
@dataclass
class SeedRun:
    """One seed's split of the pool, the shared logits, and the rows, choices and seconds it records."""

    cfg: ProtocolConfig
    shared: Shared
    seed: int
    split: SeedSplit
    log: Callable[[str], None]
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in (*self.cfg.protocols, "fixed"):
            self.results.setdefault(p, {})
            self.choices.setdefault(p, {})

    @property
    def sets(self) -> ImageSets:
        return self.shared.sets

    @property
    def c(self) -> int:
        return len(self.sets.class_names)

    def logits(self, role: str, name: str, rows: torch.Tensor | None = None) -> torch.Tensor:
        z = self.shared.logits[role][name]
        return z if rows is None else z[rows]

    def labels(self, rows: torch.Tensor) -> torch.Tensor:
        return self.sets.pool_labels[rows]

    def score(self, protocol: str, name: str, test_logits: torch.Tensor, secs: float) -> None:
        """Test base / novel / HM of ``name`` under ``protocol`` (scored, never chosen on)."""
        s = self.sets
        row = {**base_novel_scores(test_logits[:, : self.c], s.test_labels, s.base, s.novel), "seconds": round(secs, 2)}
        self.results[protocol][name] = row
        self.log(f"  seed {self.seed} [{protocol:5s}] {name:24s} base {row['base']:.3f} novel {row['novel']:.3f} "
                 f"HM {row['hm']:.3f} ({secs:.1f} s)")

    def score_all(self, name: str, test_logits: torch.Tensor, secs: float) -> None:
        for p in self.results:
            self.score(p, name, test_logits, secs)

    def fine_tune(self, role: str, config: TeacherConfig, protocol: str, val: torch.Tensor,
                  extra: Sequence[str] = ()) -> tuple[FineTunedZeroShot, dict[str, Any]]:
        """The ``role`` model fine-tuned on the base shots (the weak one with ``cfg.plugin``)."""
        head, cfg = getattr(self.shared, role), self.cfg
        plugin, _ = make_plugin(head.backbone, cfg.plugin if role == "weak" else DEFAULT_MODULE_KIND, seed=self.seed)
        model = FineTunedZeroShot(head, self.sets.class_names, plugin.to(cfg.device), cfg.data.template).to(cfg.device)
        train = self.split.train
        return finetune_teacher(model, self.sets.pool_images[train], self.labels(train), self.sets.pool_images[val],
                                self.labels(val), base=self.sets.base, novel=self.sets.novel, protocol=protocol,
                                config=config, extra_protocols=extra)

    def validation(self, logits: torch.Tensor, protocol: str) -> dict[str, Any]:
        return validation_metrics(logits, self.labels(self.split.val), self.sets.base, self.sets.novel, protocol)


@dataclass(frozen=True)
class TeacherLogits:
    """The teacher's logits on the validation and test images (the baselines need them)."""

    val: torch.Tensor
    test: torch.Tensor


def _teacher(run: SeedRun) -> FineTunedZeroShot:
    """Step 1: the weak model fine-tuned on the base classes, epoch on base-class validation."""
    teacher_cfg = replace(run.cfg.teacher, seed=run.seed)
    started = time.perf_counter()
    teacher, info = run.fine_tune("weak", teacher_cfg, "base", run.split.base_val)
    run.seconds["teacher"] = time.perf_counter() - started
    run.choices["teacher"] = {"epoch": info["best_epoch"], "val": info["best_metrics"], "config": teacher_cfg.to_dict()}
    run.score_all("teacher", teacher.predict(run.sets.test_images), run.seconds["teacher"])
    if run.cfg.teacher_ablation and teacher_cfg.consistency > 0:
        plain, p_info = run.fine_tune("weak", replace(teacher_cfg, consistency=0.0), "base", run.split.base_val)
        run.choices["teacher_no_consistency"] = {"epoch": p_info["best_epoch"], "val": p_info["best_metrics"]}
        run.score_all("teacher_no_consistency", plain.predict(run.sets.test_images), p_info["seconds"])
    return teacher


def _extract(run: SeedRun, teacher: FineTunedZeroShot) -> tuple[TransMiterAdapter, TeacherLogits]:
    """Step 2, no labels: distil the teacher's logits on the unlabeled images and their views."""
    sets, val = run.sets, run.split.val
    started = time.perf_counter()
    unl_views = view_names("unlabeled", run.cfg.data.views)
    teacher_unl = torch.cat([teacher.predict(sets.images(n)) for n in unl_views])
    teacher_pass = time.perf_counter() - started
    adapter, _ = extract_adapter(stack_views(run.shared.logits["weak"], unl_views), teacher_unl,
                                 config=replace(run.cfg.extraction, seed=run.seed))
    run.seconds["extraction"] = time.perf_counter() - started
    teacher_val = teacher.predict(sets.pool_images[val])
    src_val = adapter_logits(adapter, run.logits("weak", "pool", val))
    run.choices["extraction"] = {"teacher_val": run.validation(teacher_val, "all"),
                                 "source_adapter_val": run.validation(src_val, "all"),
                                 "teacher_pass_seconds": teacher_pass, "rows": len(teacher_unl)}
    run.score_all("source_adapter", adapter_logits(adapter, run.logits("weak", "test")), run.seconds["extraction"])
    return adapter, TeacherLogits(teacher_val, teacher.predict(sets.test_images))


def _strong_passes(run: SeedRun) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3: the alignment rows of both models (from the cache), and the strong model's passes
    over the alignment and validation images timed here, as the cost on the target side."""
    data, sets, train = run.cfg.data, run.sets, run.split.train
    align_src = alignment_rows(run.shared.logits["weak"], data, train)
    align_tgt = alignment_rows(run.shared.logits["strong"], data, train)
    strong_inputs = ([sets.images(n)[train] for n in view_names("pool", data.views)] + [sets.pool_images[run.split.val]]
                     + [sets.images(n) for n in alignment_names(data)])
    started = time.perf_counter()
    for images in strong_inputs:
        run.shared.strong.encode_images(images, batch_size=64, progress=False)
    run.seconds["strong_passes"] = time.perf_counter() - started
    strong_images = sum(len(images) for images in strong_inputs)  # alignment rows + validation images
    run.choices["alignment"] = {"rows": len(align_tgt), "strong_images_passed": strong_images}
    return align_src, align_tgt


def _score_blend(run: SeedRun, protocol: str, method: str, val_logits: torch.Tensor, test_logits: torch.Tensor,
                 method_secs: float) -> None:
    """Score ``method`` blended with the strong zero-shot logits, alpha chosen on validation;
    the blend's time is the method's plus the alpha search."""
    c, val = run.c, run.split.val
    sz_val, sz_test = run.logits("strong", "pool", val)[:, :c], run.logits("strong", "test")[:, :c]
    started = time.perf_counter()
    alpha, cands = select_alpha(lambda a: blend_logits(val_logits, sz_val, a), run.labels(val), run.sets.base,
                                run.sets.novel, protocol=protocol, grid=run.cfg.alphas)
    run.choices[protocol][f"{method}_alpha"] = {"chosen": alpha, "candidates": cands}
    run.score(protocol, f"{method}_blend", blend_logits(test_logits, sz_test, alpha),
              method_secs + time.perf_counter() - started)


def _adapter_rows(run: SeedRun, protocol: str, method: str, adapter: TransMiterAdapter, secs: float) -> torch.Tensor:
    """An adapter on the strong model's logits: its row, its blended row; returns its test logits."""
    val_logits = adapter_logits(adapter, run.logits("strong", "pool", run.split.val))
    test_logits = adapter_logits(adapter, run.logits("strong", "test"))
    run.score(protocol, method, test_logits, secs)
    _score_blend(run, protocol, method, val_logits, test_logits, secs)
    return test_logits


def _transferred(run: SeedRun, protocol: str, adapter: TransMiterAdapter, align: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[TransMiterAdapter, torch.Tensor, float]:
    """Step 4a: the adapter moved to the strong model, lambda chosen on validation."""
    val = run.split.val
    started = time.perf_counter()
    lam, candidates = select_lambda(adapter, *align, run.logits("strong", "pool", val), run.labels(val),
                                    base=run.sets.base, novel=run.sets.novel, protocol=protocol, grid=run.cfg.lambdas)
    moved = apply_adapter(adapter, *align, lam)
    run.choices[protocol]["lambda"] = {"chosen": lam, "candidates": candidates}
    secs = run.seconds["extraction"] + run.seconds["strong_passes"] + time.perf_counter() - started
    return moved, _adapter_rows(run, protocol, "transferred", moved, secs), secs


def _refined(run: SeedRun, protocol: str, moved: TransMiterAdapter, transfer_secs: float) -> tuple[torch.Tensor, float]:
    """Step 4b, TransMiter+: refine on the training shots' strong logits (every view)."""
    train, val = run.split.train, run.split.val
    pool_views = view_names("pool", run.cfg.data.views)
    started = time.perf_counter()
    plus, info = refine_adapter(moved, stack_views(run.shared.logits["strong"], pool_views, train),
                                run.labels(train).repeat(len(pool_views)), run.logits("strong", "pool", val),
                                run.labels(val), base=run.sets.base, novel=run.sets.novel, protocol=protocol,
                                config=replace(run.cfg.refine, seed=run.seed))
    run.choices[protocol]["refine"] = {k: v for k, v in info.items() if k != "config"}
    secs = transfer_secs + time.perf_counter() - started
    run.seconds[f"transmiter_plus/{protocol}"] = secs
    return _adapter_rows(run, protocol, "transmiter_plus", plus, secs), secs


def _logit_arithmetic(run: SeedRun, protocol: str, teacher: TeacherLogits) -> None:
    """Step 4c: proxy and ensemble, which need the fine-tuned weak model on every image."""
    c, val = run.c, run.split.val
    sz_val, wz_val = run.logits("strong", "pool", val)[:, :c], run.logits("weak", "pool", val)[:, :c]
    sz_test, wz_test = run.logits("strong", "test")[:, :c], run.logits("weak", "test")[:, :c]
    for name, fn in (("proxy", lambda a, s, f, w: proxy_logits(s, f, w, a)),
                     ("ensemble", lambda a, s, f, w: ensemble_logits(f, s, a))):
        started = time.perf_counter()
        alpha, cands = select_alpha(lambda a: fn(a, sz_val, teacher.val, wz_val), run.labels(val), run.sets.base,
                                    run.sets.novel, protocol=protocol, grid=run.cfg.alphas)
        run.choices[protocol][f"{name}_alpha"] = {"chosen": alpha, "candidates": cands}
        run.score(protocol, name, fn(alpha, sz_test, teacher.test, wz_test), time.perf_counter() - started)


def _fixed_rows(run: SeedRun, rows: dict[str, tuple[torch.Tensor, float]], teacher: TeacherLogits) -> None:
    """The fixed-alpha rows, reusing the choices that never saw a novel label (protocol b's)."""
    c = run.c
    sz_test, wz_test = run.logits("strong", "test")[:, :c], run.logits("weak", "test")[:, :c]
    for method, (test_logits, secs) in rows.items():
        run.score("fixed", method, test_logits, secs)
    run.score("fixed", "proxy", proxy_logits(sz_test, teacher.test, wz_test, FIXED_ALPHA["proxy"]), 0.0)
    run.score("fixed", "ensemble", ensemble_logits(teacher.test, sz_test, FIXED_ALPHA["ensemble"]), 0.0)
    run.choices["fixed"] = {"alpha": FIXED_ALPHA, "lambda_and_refine_from": "base"}


def _strong_fine_tuned(run: SeedRun) -> None:
    """Step 5: the strong model fine-tuned with the teacher's recipe; one run keeps the epoch
    each protocol's rule prefers."""
    first, *others = run.cfg.protocols
    started = time.perf_counter()
    model, info = run.fine_tune("strong", replace(run.cfg.teacher, seed=run.seed), first, run.split.val,
                                extra=tuple(others))
    secs = run.seconds["strong_fine_tuning"] = time.perf_counter() - started
    test_first = model.predict(run.sets.test_images)
    run.score(first, "strong_fine_tuned", test_first, secs)
    run.choices[first]["strong_fine_tuning"] = {"epoch": info["best_epoch"], "val": info["best_metrics"]}
    for p in others:
        kept = info["states"][p]
        run.choices[p]["strong_fine_tuning"] = {"epoch": kept["epoch"], "val": kept["metrics"]}
        if kept["epoch"] != info["best_epoch"]:
            model.plugin.load_state_dict(kept["state"])
            run.score(p, "strong_fine_tuned", model.predict(run.sets.test_images), secs)
        else:
            run.score(p, "strong_fine_tuned", test_first, secs)
    if "base" in run.cfg.protocols:
        run.results["fixed"]["strong_fine_tuned"] = run.results["base"]["strong_fine_tuned"]


def run_seed(cfg: ProtocolConfig, shared: Shared, seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every method for one seed under each validation protocol and with fixed alphas."""
    run = SeedRun(cfg, shared, seed, seed_split(shared.sets, seed), log)
    c = run.c
    run.score_all("weak_zero_shot", run.logits("weak", "test")[:, :c], 0.0)
    run.score_all("strong_zero_shot", run.logits("strong", "test")[:, :c], 0.0)
    teacher = _teacher(run)
    adapter, teacher_logits = _extract(run, teacher)
    del teacher
    align = _strong_passes(run)
    for protocol in cfg.protocols:
        moved, moved_test, transfer_secs = _transferred(run, protocol, adapter, align)
        plus_test, plus_secs = _refined(run, protocol, moved, transfer_secs)
        _logit_arithmetic(run, protocol, teacher_logits)
        if protocol == "base":
            _fixed_rows(run, {"transferred": (moved_test, transfer_secs), "transmiter_plus": (plus_test, plus_secs)},
                        teacher_logits)
    if cfg.strong_ft:
        _strong_fine_tuned(run)
    return {"seed": seed, "rows": run.results, "choices": run.choices, "seconds": run.seconds,
            "counts": {"train": len(run.split.train), "val": len(run.split.val)}}


# -- many seeds, summaries, tables ------------------------------------------------------------------------
METHODS = ("weak_zero_shot", "teacher_no_consistency", "teacher", "strong_zero_shot", "source_adapter", "transferred",
           "transferred_blend", "transmiter_plus", "transmiter_plus_blend", "proxy", "ensemble", "strong_fine_tuned")
LABELS = {
    "weak_zero_shot": "weak zero-shot", "teacher_no_consistency": "weak fine-tuned, no consistency term",
    "teacher": "weak fine-tuned (the teacher)", "strong_zero_shot": "strong zero-shot",
    "source_adapter": "weak + extracted adapter", "transferred": "TransMiter transferred (no backprop), alpha = 1",
    "transferred_blend": "TransMiter transferred + blend", "transmiter_plus": "TransMiter+ (base shots), alpha = 1",
    "transmiter_plus_blend": "TransMiter+ + blend", "proxy": "proxy (logit arithmetic)",
    "ensemble": "ensemble (logit arithmetic)", "strong_fine_tuned": "strong fine-tuned (upper reference)",
}


def summarise(per_seed: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and std over seeds of base, novel, HM and seconds, per protocol and method."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for protocol in per_seed[0]["rows"]:
        table: dict[str, dict[str, float]] = {}
        for method in METHODS:
            runs = [r["rows"][protocol][method] for r in per_seed if method in r["rows"][protocol]]
            if not runs:
                continue
            row: dict[str, float] = {"seeds": len(runs)}
            for key in ("base", "novel", "hm", "seconds"):
                values = np.array([r[key] for r in runs], dtype=float)
                row[key], row[f"{key}_std"] = float(values.mean()), float(values.std())
            row["hm_per_seed"] = [r["hm"] for r in runs]
            table[method] = row
        out[protocol] = table
    return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| method | base | novel | HM | HM per seed | seconds |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for method, row in summary.items():
        def pm(k: str) -> str:
            return f"{100 * row[k]:.1f} ± {100 * row[k + '_std']:.1f}" if row["seeds"] > 1 else f"{100 * row[k]:.1f}"

        per_seed = " / ".join(f"{100 * v:.1f}" for v in row["hm_per_seed"])
        lines.append(f"| {LABELS.get(method, method)} | {pm('base')} | {pm('novel')} | {pm('hm')} | {per_seed} | "
                     f"{row['seconds']:.1f} |")
    return "\n".join(lines)


def headline_protocol(protocols: Sequence[str]) -> str:
    """The row set a single summary shows: base-class validation (the stricter) when it ran."""
    return "base" if "base" in protocols else protocols[0]


def _cost_ratios(per_seed: Sequence[dict[str, Any]], protocols: Sequence[str]) -> dict[str, float]:
    """TransMiter+'s seconds over strong fine-tuning's, with and without the extraction."""
    ratios: dict[str, list[float]] = {}
    for r in per_seed:
        if "strong_fine_tuning" in r["seconds"]:
            for p in protocols:
                plus, ft = r["seconds"][f"transmiter_plus/{p}"], r["seconds"]["strong_fine_tuning"]
                ratios.setdefault(p, []).append(plus / ft)
                # extraction is done once per weak adaptation, whatever the target: without it
                ratios.setdefault(f"{p} (target side)", []).append((plus - r["seconds"]["extraction"]) / ft)
    return {p: float(np.mean(v)) for p, v in ratios.items()}


def run_protocol(cfg: ProtocolConfig, cache_dir: str | Path, seeds: Sequence[int] = (0,),
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepare the shared logits once, run every seed, return the per-seed runs and the summary."""
    if not seeds:
        raise DataError("no seeds given")
    started = time.perf_counter()
    shared = prepare(cfg, cache_dir, log)
    per_seed = [run_seed(cfg, shared, seed, log) for seed in seeds]
    summaries = summarise(per_seed)
    return json_safe({
        "config": {**cfg.to_dict(), "task": cfg.data.task}, "seeds": list(seeds), "per_seed": per_seed,
        "summaries": summaries, "summary": summaries[headline_protocol(cfg.protocols)],
        "split": shared.sets.split_names(), "models": {"weak": shared.weak.name, "strong": shared.strong.name},
        "shared_seconds": shared.seconds,
        "strong_seconds_per_image": float(np.mean([r["seconds"]["strong_passes"] / r["choices"]["alignment"]
                                                   ["strong_images_passed"] for r in per_seed])),
        "plus_over_strong_ft": _cost_ratios(per_seed, cfg.protocols),
        "seconds": time.perf_counter() - started,
    })


def measure_pairs(cfg: DataConfig, weak: Sequence[str], strong: Sequence[str], cache_dir: str | Path,
                  *, device: str = "cpu", log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Zero-shot base / novel / HM of candidate models on the *validation pool* (never test
    images), with the seconds per image of one pass, to choose a weak / strong pair."""
    cache = LogitCache(cache_dir)
    sets = make_sets(cfg)
    rows = []
    for role, specs in (("weak", weak), ("strong", strong)):
        for spec in specs:
            model, logits = model_logits(spec, sets, cache, ["pool"], device)
            scores = base_novel_scores(logits["pool"][:, : len(sets.class_names)], sets.pool_labels, sets.base,
                                       sets.novel)
            probe = sets.pool_images[:16]
            started = time.perf_counter()
            model.encode_images(probe, batch_size=16, progress=False)
            per_image = (time.perf_counter() - started) / len(probe)
            rows.append({"role": role, "model": spec, "name": model.name, **scores, "seconds_per_image": per_image})
            log(f"  {role:6s} {spec:32s} base {scores['base']:.3f} novel {scores['novel']:.3f} HM {scores['hm']:.3f} "
                f"({1000 * per_image:.0f} ms / image)")
    return rows


__all__ = ["FIXED_ALPHA", "LABELS", "METHODS", "ProtocolConfig", "Shared", "format_table", "headline_protocol",
           "measure_pairs", "prepare", "run_protocol", "run_seed", "summarise"]
