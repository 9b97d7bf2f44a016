"""The base-to-novel protocol: TransMiter's steps and its baselines on one task, seed by seed.

What the benchmarks (``benchmarks/transfer.py``, ``benchmarks/transfer_splits.py``) and the
demo's transfer step run; the image sets and the cached zero-shot passes are
:mod:`vimw.transfer.data`'s, the defaults :mod:`vimw.transfer.settings`'. One seed
(:func:`run_seed`) runs, in this order:

1. the teacher: the weak model fine-tuned on the base shots in the training views (its epoch
   on base-class validation images: the weak model's owner never sees novel labels), and
   without its consistency term for the ablation;
2. per image use (:class:`ImageUse`: the few-shot base set only, as the reference, or with
   extra unlabeled images): extraction, no labels, on the teacher's logits; the zero-shot
   passes of both models over the alignment images and of the strong one over the validation
   images, timed in the seed's run as the cost TransMiter pays;
3. per validation protocol: transfer (lambda), TransMiter+ (refinement, with its pull toward
   the transferred adapter, and without it for the ablation), their blends with the strong
   zero-shot model, and the logit-arithmetic baselines (proxy, ensemble) on the teacher's logits;
4. the costly upper reference: the strong model fine-tuned with the teacher's recipe (the same
   training views), over a grid of learning rates chosen like refinement's.

Two validation protocols choose every knob - teacher epochs, Procrustes lambda, the blends'
alpha, refinement and fine-tuning rates and epochs - by the one selection rule
(``vimw.evaluation.selection``): ``"all"`` (validation images of base and novel classes,
score = HM) and ``"base"`` (base classes only: novel labels are never seen). Test images are
only ever scored.
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
from vimw.evaluation.selection import best_candidate
from vimw.modules.registry import DEFAULT_MODULE_KIND
from vimw.transfer.adapter import TransMiterAdapter
from vimw.transfer.cache import LogitCache
from vimw.transfer.data import (EXTRACTION_SETS, DataConfig, ImageSets, SeedSplit, alignment_names, alignment_rows,
                                calibrate, extraction_names, gather, gather_images, make_sets, model_logits,
                                seed_split, stack_views, view_names, with_image_use, zero_shot_logits)
from vimw.transfer.scoring import (ALPHA_GRID, base_novel_scores, blend_logits, ensemble_logits, json_safe, proxy_logits,
                                   select_alpha, validation_metrics)
from vimw.transfer.settings import DEFAULT_STRONG, DEFAULT_WEAK
from vimw.transfer.standardize import standardize
from vimw.transfer.steps import (LAMBDA_GRID, ExtractionConfig, RefineConfig, adapter_logits, apply_adapter,
                                 extract_adapter, refine_adapter, select_lambda)
from vimw.transfer.teacher import FineTunedZeroShot, TeacherConfig, finetune_teacher, make_plugin
from vimw.transfer.zeroshot import load_zero_shot

FIXED_ALPHA = {"transferred": 1.0, "transmiter_plus": 1.0, "proxy": 1.0, "ensemble": 0.5}


@dataclass(frozen=True)
class ImageUse:
    """One configuration of TransMiter's images: what extraction distils on (``"shots"``: the
    base shots' images, as the reference; ``"unlabeled"``: plus the unlabeled images) and how
    many unlabeled images alignment adds to the shots'. ``name`` suffixes its rows
    (``transferred+NAME``); the headline configuration has none."""

    name: str = ""
    extraction: str = "shots"
    num_align: int = 0

    def __post_init__(self) -> None:
        if self.extraction not in EXTRACTION_SETS:
            raise DataError(f"extraction must be one of {EXTRACTION_SETS}, got {self.extraction!r}")
        if self.num_align < 0:
            raise DataError(f"num_align must be >= 0, got {self.num_align}")

    @property
    def suffix(self) -> str:
        return f"+{self.name}" if self.name else ""


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
    strong_lrs: tuple[float, ...] = ()  # the strong fine-tuning's rates, chosen on validation; () = the teacher's
    strong_consistency: float | None = None  # the strong fine-tuning's consistency weight; None = the teacher's
    teacher_ablation: bool = True  # also fine-tune the teacher without the consistency term
    refine_ablation: bool = False  # also refine with cross-entropy alone (rows transmiter_plus_ce)
    uses: tuple[ImageUse, ...] = ()  # () = the data config's own extraction and alignment images
    device: str = "cpu"

    def __post_init__(self) -> None:
        uses = self.image_uses()
        if len({u.name for u in uses}) != len(uses) or uses[0].name:
            raise DataError(f"image uses need distinct names and an unnamed first (headline) one, got {uses}")
        if len({u.num_align for u in uses if u.num_align}) > 1:
            raise DataError("image uses may add one number of unlabeled alignment images (or none)")

    def image_uses(self) -> tuple[ImageUse, ...]:
        return self.uses or (ImageUse("", self.data.extraction, self.data.num_align),)

    def data_for(self, use: ImageUse) -> DataConfig:
        return replace(self.data, extraction=use.extraction, num_align=use.num_align)

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


def _wanted(cfg: ProtocolConfig) -> dict[str, list[str]]:
    """The zero-shot logits each role needs, over every image use."""
    wanted: dict[str, dict[str, None]] = {"weak": {}, "strong": {}}
    for use in cfg.image_uses():
        data = cfg.data_for(use)
        common = view_names("pool", data.views) + alignment_names(data) + ["test"]
        wanted["weak"].update(dict.fromkeys(common + extraction_names(data)))
        wanted["strong"].update(dict.fromkeys(common))
    return {role: list(names) for role, names in wanted.items()}


def prepare(cfg: ProtocolConfig, cache_dir: str | Path, log: Callable[[str], None] = print) -> Shared:
    """Image sets, calibrated zero-shot models and every zero-shot pass (cached)."""
    cache = LogitCache(cache_dir)
    sets = make_sets(cfg.data)
    shared = Shared(sets, load_zero_shot(cfg.weak, device=cfg.device), load_zero_shot(cfg.strong, device=cfg.device))
    num_align = max(u.num_align for u in cfg.image_uses())
    with_align = with_image_use(sets, cfg.data.extraction, num_align)  # the "align" images of the use that has some
    for role, names in _wanted(cfg).items():
        model, logits = getattr(shared, role), shared.logits[role]
        started = time.perf_counter()
        calibrate(model, sets, cache)
        for name in names:
            logits[name] = zero_shot_logits(model, with_align, cache, name)
        shared.seconds[f"{role}_zero_shot_passes"] = time.perf_counter() - started
        log(f"  {role} zero-shot logits ({model.name}): {shared.seconds[f'{role}_zero_shot_passes']:.1f} s (0 when cached)")
    # warm up, so that the first seed's timed passes do not pay for first-call set-up
    for model in (shared.weak, shared.strong):
        model.encode_images(sets.pool_images[:4], batch_size=4, progress=False)
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
    pass_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    timed: bool = True  # False: the zero-shot passes are not repeated to be timed (development sweeps)

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

    def train_views(self) -> list[str]:
        return view_names("pool", self.cfg.data.views)

    def score(self, protocol: str, name: str, test_logits: torch.Tensor, secs: float) -> None:
        """Test base / novel / HM of ``name`` under ``protocol`` (scored, never chosen on)."""
        s = self.sets
        row = {**base_novel_scores(test_logits[:, : self.c], s.test_labels, s.base, s.novel), "seconds": round(secs, 2)}
        self.results[protocol][name] = row
        self.log(f"  seed {self.seed} [{protocol:5s}] {name:30s} base {row['base']:.3f} novel {row['novel']:.3f} "
                 f"HM {row['hm']:.3f} ({secs:.1f} s)")

    def score_all(self, name: str, test_logits: torch.Tensor, secs: float) -> None:
        for p in self.results:
            self.score(p, name, test_logits, secs)

    def fine_tune(self, role: str, config: TeacherConfig, protocol: str, val: torch.Tensor,
                  extra: Sequence[str] = ()) -> tuple[FineTunedZeroShot, dict[str, Any]]:
        """The ``role`` model fine-tuned on the base shots in the training views (the weak one
        with ``cfg.plugin``): the same views refinement trains on."""
        head, cfg = getattr(self.shared, role), self.cfg
        plugin, _ = make_plugin(head.backbone, cfg.plugin if role == "weak" else DEFAULT_MODULE_KIND, seed=self.seed)
        model = FineTunedZeroShot(head, self.sets.class_names, plugin.to(cfg.device), cfg.data.template).to(cfg.device)
        views = self.train_views()
        images = torch.cat(gather_images(self.sets, views, self.split.train))
        labels = self.labels(self.split.train).repeat(len(views))
        return finetune_teacher(model, images, labels, self.sets.pool_images[val], self.labels(val),
                                base=self.sets.base, novel=self.sets.novel, protocol=protocol, config=config,
                                extra_protocols=extra)

    def validation(self, logits: torch.Tensor, protocol: str) -> dict[str, Any]:
        return validation_metrics(logits, self.labels(self.split.val), self.sets.base, self.sets.novel, protocol)

    def zero_shot_pass_seconds(self, role: str, names: Sequence[str], sets: ImageSets | None = None) -> float:
        """Seconds of ``role``'s zero-shot passes over these image sets of ``sets`` (default the
        shared ones; the shots' rows of a pool set), each set timed once per seed: the logits
        come from the cache, the cost is measured."""
        model, total = getattr(self.shared, role), 0.0
        if not self.timed:
            return total
        for name, images in zip(names, gather_images(sets or self.sets, names, self.split.train)):
            if (role, name) not in self.pass_seconds:
                started = time.perf_counter()
                model.encode_images(images, batch_size=64, progress=False)
                self.pass_seconds[(role, name)] = time.perf_counter() - started
            total += self.pass_seconds[(role, name)]
        return total


@dataclass
class Teacher:
    """The fine-tuned weak model, its logits on the validation and test images (the baselines
    need them) and its passes over extraction images, each set passed once and timed."""

    model: FineTunedZeroShot
    val: torch.Tensor
    test: torch.Tensor
    passes: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)

    def logits(self, run: SeedRun, names: Sequence[str]) -> tuple[torch.Tensor, float]:
        """The teacher's logits on these image sets (training shots' rows of pool sets) and the
        seconds its passes took."""
        for name, images in zip(names, gather_images(run.sets, names, run.split.train)):
            if name not in self.passes:
                started = time.perf_counter()
                self.passes[name] = (self.model.predict(images), time.perf_counter() - started)
        return torch.cat([self.passes[n][0] for n in names]), sum(self.passes[n][1] for n in names)


def train_teacher(run: SeedRun, config: TeacherConfig | None = None, *, row: str = "teacher") -> Teacher:
    """Step 1: the weak model fine-tuned on the base classes, epoch on base-class validation;
    scored as ``row``, its seconds (training with its validation passes) recorded under ``row``."""
    teacher_cfg = replace(config or run.cfg.teacher, seed=run.seed)
    teacher, info = run.fine_tune("weak", teacher_cfg, "base", run.split.base_val)
    run.seconds[row], run.seconds[f"{row}_validation"] = info["seconds"], info["validation_seconds"]
    run.choices[row] = {"epoch": info["best_epoch"], "val": info["best_metrics"], "config": teacher_cfg.to_dict()}
    out = Teacher(teacher, teacher.predict(run.sets.pool_images[run.split.val]), teacher.predict(run.sets.test_images))
    run.score_all(row, out.test, info["seconds"])
    return out


def extract(run: SeedRun, teacher: Teacher, use: ImageUse, *, logits: dict[str, torch.Tensor] | None = None,
            record: bool = True) -> tuple[TransMiterAdapter, float]:
    """Step 2, no labels: distil the teacher's logits on the extraction images of ``use`` into
    an adapter on the weak model's zero-shot logits (``logits``: another K's; default the
    shared ones). Returns the adapter and its seconds: the teacher's and the weak model's
    passes over the extraction images, and the distillation."""
    names = extraction_names(run.cfg.data_for(use))
    target, teacher_secs = teacher.logits(run, names)
    source = gather(names, (logits or run.shared.logits["weak"]).__getitem__, run.split.train)
    started = time.perf_counter()
    adapter, _ = extract_adapter(source, target, config=replace(run.cfg.extraction, seed=run.seed))
    secs = teacher_secs + run.zero_shot_pass_seconds("weak", names) + time.perf_counter() - started
    if record:
        src_val = adapter_logits(adapter, run.logits("weak", "pool", run.split.val))
        run.seconds[f"extraction{use.suffix}"] = secs
        run.choices[f"extraction{use.suffix}"] = {"teacher_val": run.validation(teacher.val, "all"),
                                                  "source_adapter_val": run.validation(src_val, "all"),
                                                  "teacher_pass_seconds": teacher_secs, "rows": len(target)}
        run.score_all(f"source_adapter{use.suffix}", adapter_logits(adapter, run.logits("weak", "test")), secs)
    return adapter, secs


def alignment_rank(source: torch.Tensor, target: torch.Tensor) -> dict[str, int]:
    """Rows, K and the ranks of the standardised alignment matrices and of ``T^T S`` (what the
    rotation is fitted on: directions beyond its rank are set by lambda's pull alone)."""
    s, t = standardize(source)[0].double(), standardize(target)[0].double()
    rank = torch.linalg.matrix_rank
    return {"rows": int(s.shape[0]), "K": int(s.shape[1]), "rank_source": int(rank(s)), "rank_target": int(rank(t)),
            "rank_cross": int(rank(t.T @ s))}


@dataclass(frozen=True)
class Alignment:
    """One image use's alignment rows of both models, and the seconds of the passes TransMiter
    pays on the target side (both models over the alignment images, the strong one over the
    training views and the validation images)."""

    source: torch.Tensor
    target: torch.Tensor
    seconds: float


def align(run: SeedRun, use: ImageUse, *, weak: dict[str, torch.Tensor] | None = None,
          strong: dict[str, torch.Tensor] | None = None, record: bool = True) -> Alignment:
    """Step 2b: the alignment rows of ``use`` (from the cache), the passes timed."""
    data = run.cfg.data_for(use)
    src = alignment_rows(weak or run.shared.logits["weak"], data, run.split.train)
    tgt = alignment_rows(strong or run.shared.logits["strong"], data, run.split.train)
    names, sets = alignment_names(data), with_image_use(run.sets, use.extraction, use.num_align)
    strong_names = list(dict.fromkeys(names + run.train_views()))
    secs = run.zero_shot_pass_seconds("weak", names, sets) + run.zero_shot_pass_seconds("strong", strong_names, sets)
    if run.timed and ("strong", "validation") not in run.pass_seconds:  # the validation images, once per seed
        started = time.perf_counter()
        run.shared.strong.encode_images(run.sets.pool_images[run.split.val], batch_size=64, progress=False)
        run.pass_seconds[("strong", "validation")] = time.perf_counter() - started
    secs += run.pass_seconds.get(("strong", "validation"), 0.0)
    if record:
        run.seconds[f"passes{use.suffix}"] = secs
        run.choices[f"alignment{use.suffix}"] = alignment_rank(src, tgt)
    return Alignment(src, tgt, secs)


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


def transfer(run: SeedRun, protocol: str, adapter: TransMiterAdapter, alignment: Alignment, *,
             val_logits: torch.Tensor | None = None) -> tuple[TransMiterAdapter, float, dict[str, Any]]:
    """Step 3a: the adapter moved to the strong model, lambda chosen on validation (on
    ``val_logits``: another K's; default the shared ones). Returns it, the seconds of the
    lambda choice and the choice."""
    val = run.split.val
    zv = run.logits("strong", "pool", val) if val_logits is None else val_logits
    started = time.perf_counter()
    lam, candidates = select_lambda(adapter, alignment.source, alignment.target, zv, run.labels(val),
                                    base=run.sets.base, novel=run.sets.novel, protocol=protocol, grid=run.cfg.lambdas)
    moved = apply_adapter(adapter, alignment.source, alignment.target, lam)
    return moved, time.perf_counter() - started, {"chosen": lam, "candidates": candidates}


def refine(run: SeedRun, protocol: str, moved: TransMiterAdapter, alignment: Alignment, config: RefineConfig, *,
           strong: dict[str, torch.Tensor] | None = None) -> tuple[TransMiterAdapter, float, dict[str, Any]]:
    """Step 3b, TransMiter+: refine on the training shots' strong logits in the training views,
    pulled toward ``moved`` on the alignment rows (no labels there). Returns the refined
    adapter, its seconds and the choices."""
    views, train = run.train_views(), run.split.train
    logits = strong or run.shared.logits["strong"]
    started = time.perf_counter()
    plus, info = refine_adapter(moved, stack_views(logits, views, train), run.labels(train).repeat(len(views)),
                                logits["pool"][run.split.val], run.labels(run.split.val), base=run.sets.base,
                                novel=run.sets.novel, protocol=protocol, config=replace(config, seed=run.seed),
                                distill_logits=alignment.target)
    return plus, time.perf_counter() - started, {k: v for k, v in info.items() if k != "config"}


def _transmiter(run: SeedRun, teacher: Teacher, use: ImageUse, headline: bool) -> None:
    """Steps 2-3 for one image use: extraction, alignment, then per protocol transfer and
    refinement (and the refinement ablation), rows suffixed with the use's name."""
    sfx, cfg = use.suffix, run.cfg
    adapter, extraction_secs = extract(run, teacher, use)
    alignment = align(run, use)
    base_secs = extraction_secs + alignment.seconds
    refinements = [("transmiter_plus", cfg.refine)]
    if cfg.refine_ablation and (cfg.refine.distill > 0 or cfg.refine.zero_shot > 0):
        refinements.append(("transmiter_plus_ce", replace(cfg.refine, distill=0.0, zero_shot=0.0)))
    for protocol in cfg.protocols:
        moved, lambda_secs, lam = transfer(run, protocol, adapter, alignment)
        run.choices[protocol][f"lambda{sfx}"] = lam
        secs = base_secs + lambda_secs
        run.seconds[f"transferred{sfx}/{protocol}"] = secs
        moved_test = _adapter_rows(run, protocol, f"transferred{sfx}", moved, secs)
        kept = {"transferred": (moved_test, secs)}
        for method, config in refinements:
            plus, refine_secs, info = refine(run, protocol, moved, alignment, config)
            run.choices[protocol][f"refine{sfx}" if method == "transmiter_plus" else f"refine_ce{sfx}"] = info
            run.seconds[f"{method}{sfx}/{protocol}"] = secs + refine_secs
            kept[method] = (_adapter_rows(run, protocol, f"{method}{sfx}", plus, secs + refine_secs), secs + refine_secs)
        if headline and protocol == "base":
            for method, (test_logits, method_secs) in kept.items():
                run.score("fixed", method, test_logits, method_secs)


def _logit_arithmetic(run: SeedRun, protocol: str, teacher: Teacher) -> None:
    """Step 3c: proxy and ensemble, which need the fine-tuned weak model on every image."""
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


def _fixed_baselines(run: SeedRun, teacher: Teacher) -> None:
    """The fixed-alpha baselines; TransMiter's fixed rows reuse the choices that never saw a
    novel label (protocol b's)."""
    c = run.c
    sz_test, wz_test = run.logits("strong", "test")[:, :c], run.logits("weak", "test")[:, :c]
    run.score("fixed", "proxy", proxy_logits(sz_test, teacher.test, wz_test, FIXED_ALPHA["proxy"]), 0.0)
    run.score("fixed", "ensemble", ensemble_logits(teacher.test, sz_test, FIXED_ALPHA["ensemble"]), 0.0)
    run.choices["fixed"] = {"alpha": FIXED_ALPHA, "lambda_and_refine_from": "base"}


def fine_tune_strong(run: SeedRun) -> None:
    """Step 4: the strong model fine-tuned with the teacher's recipe and training views, once
    per learning rate of ``strong_lrs``; each protocol's rule picks the (rate, epoch) it
    prefers, as refinement's does. Its seconds: all runs, and their validation passes apart."""
    first, *others = run.cfg.protocols
    candidates: dict[str, list[dict[str, Any]]] = {p: [] for p in run.cfg.protocols}
    total = validation = 0.0
    model = None
    recipe = run.cfg.teacher
    if run.cfg.strong_consistency is not None:
        recipe = replace(recipe, consistency=run.cfg.strong_consistency)
    for lr in run.cfg.strong_lrs or (recipe.lr,):
        model, info = run.fine_tune("strong", replace(recipe, seed=run.seed, lr=lr), first, run.split.val,
                                    extra=tuple(others))
        total, validation = total + info["seconds"], validation + info["validation_seconds"]
        state = {k: v.detach().clone() for k, v in model.plugin.state_dict().items()}
        candidates[first].append({"lr": lr, "epoch": info["best_epoch"], **info["best_metrics"], "state": state})
        for p in others:
            kept = info["states"][p]
            candidates[p].append({"lr": lr, "epoch": kept["epoch"], **kept["metrics"], "state": kept["state"]})
    run.seconds["strong_fine_tuning"], run.seconds["strong_fine_tuning_validation"] = total, validation
    for p, cands in candidates.items():
        best = cands[best_candidate(cands)]
        model.plugin.load_state_dict(best["state"])
        run.choices[p]["strong_fine_tuning"] = {"lr": best["lr"], "epoch": best["epoch"],
                                                "candidates": [{k: v for k, v in c.items() if k != "state"}
                                                               for c in cands]}
        run.score(p, "strong_fine_tuned", model.predict(run.sets.test_images), total)
    if "base" in run.cfg.protocols:
        run.results["fixed"]["strong_fine_tuned"] = run.results["base"]["strong_fine_tuned"]


def run_seed(cfg: ProtocolConfig, shared: Shared, seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every method for one seed under each validation protocol and with fixed alphas."""
    run = SeedRun(cfg, shared, seed, seed_split(shared.sets, seed), log)
    c = run.c
    run.score_all("weak_zero_shot", run.logits("weak", "test")[:, :c], 0.0)
    run.score_all("strong_zero_shot", run.logits("strong", "test")[:, :c], 0.0)
    teacher = train_teacher(run)
    if cfg.teacher_ablation and cfg.teacher.consistency > 0:
        train_teacher(run, replace(cfg.teacher, consistency=0.0), row="teacher_no_consistency")
    for i, use in enumerate(cfg.image_uses()):
        _transmiter(run, teacher, use, headline=i == 0)
    for protocol in cfg.protocols:
        _logit_arithmetic(run, protocol, teacher)
    if "base" in cfg.protocols:
        _fixed_baselines(run, teacher)
    del teacher
    if cfg.strong_ft:
        fine_tune_strong(run)
    return {"seed": seed, "rows": run.results, "choices": run.choices, "seconds": run.seconds,
            "counts": {"train": len(run.split.train), "val": len(run.split.val)}}


# -- many seeds, summaries, tables ------------------------------------------------------------------------
LABELS = {
    "weak_zero_shot": "weak zero-shot", "teacher_no_consistency": "weak fine-tuned, no consistency term",
    "teacher": "weak fine-tuned (the teacher)", "strong_zero_shot": "strong zero-shot",
    "source_adapter": "weak + extracted adapter", "transferred": "TransMiter transferred (no backprop), alpha = 1",
    "transferred_blend": "TransMiter transferred + blend", "transmiter_plus": "TransMiter+ (base shots), alpha = 1",
    "transmiter_plus_blend": "TransMiter+ + blend",
    "transmiter_plus_ce": "TransMiter+, cross-entropy alone (no pull)",
    "transmiter_plus_v2": "TransMiter+, protocol v2's recipe (pull toward transferred only)",
    "transmiter_plus_ce_blend": "TransMiter+, cross-entropy alone + blend", "proxy": "proxy (logit arithmetic)",
    "ensemble": "ensemble (logit arithmetic)", "strong_fine_tuned": "strong fine-tuned (upper reference)",
}


def label(method: str) -> str:
    """A row's name for people: ``transferred+unlabeled`` is the transferred row of that image use."""
    name, _, use = method.partition("+")
    return LABELS.get(name, name) + (f" [{use}]" if use else "")


def summarise(per_seed: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and std over seeds of base, novel, HM and seconds, per protocol and method (in the
    order the runs scored them)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for protocol in per_seed[0]["rows"]:
        table: dict[str, dict[str, float]] = {}
        for method in dict.fromkeys(m for r in per_seed for m in r["rows"][protocol]):
            runs = [r["rows"][protocol][method] for r in per_seed if method in r["rows"][protocol]]
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
        lines.append(f"| {label(method)} | {pm('base')} | {pm('novel')} | {pm('hm')} | {per_seed} | "
                     f"{row['seconds']:.1f} |")
    return "\n".join(lines)


def headline_protocol(protocols: Sequence[str]) -> str:
    """The row set a single summary shows: base-class validation (the stricter) when it ran."""
    return "base" if "base" in protocols else protocols[0]


def cost_ratios(seconds: dict[str, float], protocol: str, suffix: str = "") -> dict[str, float]:
    """TransMiter+'s seconds over strong fine-tuning's, for one seed: with the teacher's
    fine-tuning counted, without it, and on the target side alone (without the extraction,
    done once per weak adaptation whatever the target); and over strong fine-tuning without
    its validation passes."""
    plus, ft = seconds[f"transmiter_plus{suffix}/{protocol}"], seconds["strong_fine_tuning"]
    ft_train = ft - seconds["strong_fine_tuning_validation"]
    with_teacher = plus + seconds["teacher"]
    return {"with_teacher": with_teacher / ft, "without_teacher": plus / ft,
            "target_side": (plus - seconds[f"extraction{suffix}"]) / ft,
            "with_teacher_over_training_only": with_teacher / ft_train}


def _cost_ratios(per_seed: Sequence[dict[str, Any]], protocols: Sequence[str]) -> dict[str, dict[str, float]]:
    """:func:`cost_ratios`, averaged over the seeds that fine-tuned the strong model."""
    out: dict[str, dict[str, float]] = {}
    for p in protocols:
        runs = [cost_ratios(r["seconds"], p) for r in per_seed if "strong_fine_tuning" in r["seconds"]]
        if runs:
            out[p] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    return out


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
        "shared_seconds": shared.seconds, "plus_over_strong_ft": _cost_ratios(per_seed, cfg.protocols),
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


__all__ = ["FIXED_ALPHA", "LABELS", "Alignment", "ImageUse", "ProtocolConfig", "SeedRun", "Shared", "Teacher", "align",
           "alignment_rank", "cost_ratios", "extract", "fine_tune_strong", "format_table", "headline_protocol", "label", "measure_pairs",
           "prepare", "refine", "run_protocol", "run_seed", "summarise", "train_teacher", "transfer"]
