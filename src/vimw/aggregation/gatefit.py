"""Gates fitted to a held-out objective, before (and instead of) training them with the head.

Trained jointly with a head on 20-100 images, gate logits get almost no signal: the head
reaches zero training loss within a few steps, and a kept epoch inside the warm-up has
gates uniform to within a few hundredths. Here the gates are fitted to a number that
does not vanish when the head fits its data: the *held-out* loss of a closed-form ridge
head on the gated features.

- :func:`ridge_loo_loss`: leave-one-out squared error of a ridge classifier (one-hot
  targets) on features ``F``. In the dual, with ``K = F F^T`` and ``H = K (K + lam I)^-1``,
  the leave-one-out residuals are ``(y - H y) / (1 - H_ii)`` (Allen's PRESS; with the
  intercept, ``H_ii`` includes its ``1/n``), so every image is predicted exactly as by a
  head refitted without it, and the loss is differentiable in ``F``, hence in the gates.
  ``lam`` is relative to the mean feature energy, so scaling every feature alike changes
  nothing; the best of a few ``lam`` is used.
- :class:`ScaledZooAggregate`: ViM gates times a learned positive per-site scale, so
  the combination can amplify (or damp) the zoo, which softmax gates alone cannot.
- :func:`fit_gates_gradient`: gate logits and log-scales fitted on the fitting engine
  against the ridge leave-one-out loss, with a pull toward uniform gates and unit scale.
- :func:`fit_gates_cma`: gradient-free CMA-ES (the ``cma`` package) over one logit per
  module (shared by all sites) and one global log-scale on the same objective, penalised
  toward uniform, as LoraHub searches its combination weights.

Both strategies work on any callable that returns features for the current gates, so
they are tested on synthetic zoos as well as on the real backbone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from vimw.aggregation.aggregate import ZooAggregate
from vimw.errors import MissingExtraError, VimwError

# Ridge strength relative to the mean squared feature norm (scale-free).
RIDGE_LAMBDAS = (1e-2, 1e-1, 1.0)
# Largest per-site amplification: exp(MAX_LOG_SCALE).
MAX_LOG_SCALE = math.log(4.0)
# What CMA-ES is told for a candidate whose objective is not finite (it needs a number).
WORST_OBJECTIVE = 1e9


class ScaledZooAggregate(ZooAggregate):
    """ViM aggregation whose site ``s`` output is multiplied by ``exp(log_scale[s])``.

    The gates the backbone uses are ``exp(log_scale)[:, None] * softmax(a)``, so every
    execution path (grouped, loop, top-k) applies the scale without change. The scale
    is frozen unless ``log_scale.requires_grad_(True)``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log_scale = nn.Parameter(torch.zeros(len(self.site_names)), requires_grad=False)

    def gates(self) -> torch.Tensor:
        scale = self.log_scale.clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE).exp()
        return super().gates() * scale[:, None].to(self.gate_logits.dtype)

    def _current_gates(self) -> torch.Tensor:
        # The base class may reuse its gates while the logits are unchanged; the scales
        # change on their own, so the gates are computed afresh (16 x N numbers).
        return self.gates()

    def site_scales(self) -> torch.Tensor:
        return self.log_scale.detach().clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE).exp()

    def num_trainable(self) -> int:
        return super().num_trainable() + (self.log_scale.numel() if self.log_scale.requires_grad else 0)


# -- the held-out objective ------------------------------------------------------------------
def one_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    return nn.functional.one_hot(targets.long(), num_classes).to(torch.float64)


def centred_dual(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrix of the centred features (float64) and its mean diagonal, the lambda unit."""
    f = features.to(torch.float64)
    f = f - f.mean(0, keepdim=True)
    gram = f @ f.T
    return gram, gram.diagonal().mean().clamp_min(1e-12)


def loo_residuals(gram: torch.Tensor, energy: torch.Tensor, centred_targets: torch.Tensor, lam: float) -> torch.Tensor:
    """Exact leave-one-out residuals ``y_i - f_{-i}(x_i)`` of ridge with an unpenalised intercept.

    With ``A = (K_c + a I)^-1`` on the centred Gram ``K_c`` and ``C = I - 11^T/n``, the hat
    matrix is ``11^T/n + K_c A``, so ``I - H = a C A C`` and Allen's PRESS residual
    ``e_i / (1 - H_ii)`` (denominator ``1 - 1/n - (K_c A)_ii``) equals ``(B y_c)_i / B_ii``
    with ``B = C A C``: the same number without the cancellation near ``h_ii = 1 - 1/n``.
    """
    n = gram.shape[0]
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    centring = eye - 1.0 / n
    inner = centring @ torch.linalg.solve(gram + lam * energy * eye, centring)
    return (inner @ centred_targets) / inner.diagonal().clamp_min(1e-300)[:, None]


def ridge_loo_loss(
    features: torch.Tensor, targets: torch.Tensor, num_classes: int, lambdas: Sequence[float] = RIDGE_LAMBDAS
) -> tuple[torch.Tensor, float]:
    """Leave-one-out mean squared error of a ridge head (with intercept) and the ``lam`` used.

    ``features``: ``n x D``; ``targets``: ``n`` class indices. Computed in float64 in the
    dual (``n x n``), which is small at few shots, and exact: each image's residual is the
    one a head refitted without it (intercept included) would leave.
    """
    n = features.shape[0]
    if n < 3:
        raise VimwError(f"a leave-one-out gate fit needs at least 3 images, got {n}")
    gram, energy = centred_dual(features)
    y = one_hot(targets, num_classes).to(gram.device)
    y = y - y.mean(0, keepdim=True)
    best, best_lam = None, lambdas[0]
    for lam in lambdas:
        loss = loo_residuals(gram, energy, y, lam).pow(2).sum(1).mean()
        if best is None or loss.item() < best.item():
            best, best_lam = loss, lam
    return best, float(best_lam)


def ridge_loo_accuracy(features: torch.Tensor, targets: torch.Tensor, num_classes: int, lam: float) -> float:
    """Leave-one-out accuracy of the same ridge head (for reports)."""
    with torch.no_grad():
        gram, energy = centred_dual(features)
        y = one_hot(targets, num_classes).to(gram.device)
        predicted = (y - loo_residuals(gram, energy, y - y.mean(0, keepdim=True), lam)).argmax(1)
        return float((predicted == targets.to(predicted.device)).double().mean())


def uniform_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared deviation of each row of logits from its own mean (0 for uniform gates)."""
    return (logits - logits.mean(-1, keepdim=True)).pow(2).mean()


# -- strategy 1: gradient on logits and scales ------------------------------------------------
@dataclass
class GateFit:
    """What a gate fit found and how: logits (sites x N), log-scales (sites), the objective."""

    strategy: str
    gate_logits: torch.Tensor
    log_scale: torch.Tensor
    objective: float  # penalised held-out loss at the kept point
    start_objective: float  # the same at uniform gates, unit scale
    loo_accuracy: float
    evaluations: int
    seconds: float
    history: list[float] = field(default_factory=list)
    non_finite: int = 0  # candidates whose objective was not finite (CMA-ES scores them as the worst)

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "non_finite": self.non_finite,
            "objective": round(self.objective, 6),
            "start_objective": round(self.start_objective, 6),
            "loo_accuracy": round(self.loo_accuracy, 4),
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 2),
            "mean_gates": [round(v, 4) for v in torch.softmax(self.gate_logits, -1).mean(0).tolist()],
            "site_scales": [round(v, 4) for v in self.log_scale.clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE).exp().tolist()],
        }


FeatureFn = Callable[[], torch.Tensor]


def fit_gates_gradient(
    logits: nn.Parameter,
    log_scale: nn.Parameter | None,
    features: FeatureFn,
    targets: torch.Tensor,
    num_classes: int,
    *,
    steps: int = 25,
    lr: float = 0.2,
    penalty: float = 1e-2,
    scale_penalty: float = 1e-2,
) -> GateFit:
    """Gradient steps on ``logits`` (and ``log_scale``) minimising ridge LOO loss + pulls to uniform / unit.

    ``features()`` must compute features from the current parameters (with autograd).
    Runs on the fitting engine (``training.engine.run_fit``: one full-batch step per
    epoch, its schedule, gradient clip and non-finite guard, which raises ``TrainingError``);
    each point is scored by the same objective without autograd, and the parameters are
    left at the best one (the start included) by the selection rule on that loss.
    """
    from vimw.training.config import FitConfig
    from vimw.training.engine import RunOutputs, Trainable, run_fit

    started = time.perf_counter()
    params = {"logits": logits, **({"log_scale": log_scale} if log_scale is not None else {})}
    flags = {k: p.requires_grad for k, p in params.items()}

    def objective() -> tuple[torch.Tensor, float]:
        loss, lam = ridge_loo_loss(features(), targets, num_classes)
        total = loss + penalty * uniform_penalty(logits)
        return (total + scale_penalty * log_scale.pow(2).mean() if log_scale is not None else total), lam

    def held_out() -> dict[str, float]:
        with torch.no_grad():
            value, lam = objective()
        return {"score": -float(value), "loss": float(value), "lam": lam}

    def restore(state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value)

    trainable = Trainable([{"params": list(params.values()), "lr": lr, "weight_decay": 0.0}],
                          snapshot=lambda: {k: p.detach().clone() for k, p in params.items()}, restore=restore)
    # The pulls toward uniform gates and unit scale are the regulariser: no weight decay.
    config = FitConfig(epochs=steps, batch_size=len(targets), lr=lr, weight_decay=0.0)
    for p in params.values():
        p.requires_grad_(True)
    try:
        fit = run_fit(trainable, lambda epoch: [None], lambda batch: objective()[0], config=config, steps_per_epoch=1,
                      validate=held_out, include_start=True, criterion="loss",
                      outputs=RunOutputs(progress=False, desc="gate fit"))
    finally:
        for key, p in params.items():
            p.requires_grad_(flags[key])
    history = [float(r["val_loss"]) for r in fit.history]
    with torch.no_grad():
        accuracy = ridge_loo_accuracy(features(), targets, num_classes, fit.best_metrics["lam"])
    kept = fit.best_state
    return GateFit("ridge_loo_gradient", kept["logits"].cpu(),
                   kept["log_scale"].cpu() if log_scale is not None else torch.zeros(len(logits)),
                   float(fit.best_metrics["loss"]), history[0], accuracy, len(history), time.perf_counter() - started,
                   history)


# -- strategy 2: CMA-ES over per-module logits and a global scale --------------------------------
def fit_gates_cma(
    logits: nn.Parameter,
    log_scale: nn.Parameter | None,
    features: FeatureFn,
    targets: torch.Tensor,
    num_classes: int,
    *,
    evaluations: int = 48,
    sigma: float = 0.7,
    penalty: float = 1e-2,
    seed: int = 0,
) -> GateFit:
    """CMA-ES over ``N`` module logits (the same at every site) and one log-scale.

    Gradient-free: each candidate costs one forward pass without autograd. The kept
    point is the best penalised objective seen; the parameters are left there. A
    non-finite candidate is scored as the worst and counted in ``GateFit.non_finite``.
    """
    # Not on training.engine.run_fit: the engine takes gradient steps, CMA-ES takes none.
    try:
        import cma
    except ImportError as exc:  # pragma: no cover - cma is a dependency
        raise MissingExtraError("gate search with CMA-ES needs the package 'cma' (pip install cma)") from exc
    started = time.perf_counter()
    sites, n = logits.shape
    dims = n + (1 if log_scale is not None else 0)

    def apply(z) -> None:
        with torch.no_grad():
            logits.copy_(torch.as_tensor(z[:n], dtype=logits.dtype).expand(sites, n))
            if log_scale is not None:
                log_scale.fill_(float(z[n]))

    history: list[float] = []
    cache: dict[tuple, tuple[float, float]] = {}
    non_finite = 0

    def objective(z) -> float:
        nonlocal non_finite
        key = tuple(round(float(v), 10) for v in z)
        if key in cache:
            return cache[key][0]
        apply(z)
        with torch.no_grad():
            loss, lam = ridge_loo_loss(features(), targets, num_classes)
        zt = torch.as_tensor(z[:n], dtype=torch.float64)
        value = float(loss) + penalty * float(uniform_penalty(zt))
        if log_scale is not None:
            value += penalty * float(z[n]) ** 2
        if not math.isfinite(value):
            non_finite += 1
            value = WORST_OBJECTIVE
        cache[key] = (value, lam)
        history.append(value)
        return value

    start = [0.0] * dims
    start_value = objective(start)
    best_z, best_value = list(start), start_value
    options = {"seed": int(seed) + 1, "maxfevals": evaluations, "verbose": -9, "verb_log": 0, "verb_disp": 0,
               "bounds": [[-4.0] * n + ([-MAX_LOG_SCALE] if log_scale is not None else []),
                          [4.0] * n + ([MAX_LOG_SCALE] if log_scale is not None else [])],
               "popsize": max(4, 4 + int(3 * math.log(dims)))}
    strategy = cma.CMAEvolutionStrategy(start, sigma, options)
    while not strategy.stop() and len(history) < evaluations:
        candidates = strategy.ask()
        values = [objective(z) for z in candidates]
        strategy.tell(candidates, values)
        for z, v in zip(candidates, values):
            if v < best_value:
                best_z, best_value = [float(x) for x in z], v
    apply(best_z)
    lam = cache[tuple(round(float(v), 10) for v in best_z)][1]
    with torch.no_grad():
        accuracy = ridge_loo_accuracy(features(), targets, num_classes, lam)
    return GateFit("cma_es", logits.detach().clone().cpu(),
                   (log_scale.detach().clone().cpu() if log_scale is not None else torch.zeros(sites)),
                   best_value, start_value, accuracy, len(history), time.perf_counter() - started, history,
                   non_finite)


STRATEGIES = {"ridge": fit_gates_gradient, "cma": fit_gates_cma}


def fit_aggregate_gates(
    model,
    images: torch.Tensor,
    targets: torch.Tensor,
    strategy: str = "ridge",
    *,
    scale: bool = True,
    seed: int = 0,
    **options,
) -> GateFit:
    """Fit the gates (and per-site scales) of a ``TaskModel`` whose plug-in is a ``ScaledZooAggregate``.

    Features are the backbone's pooled features on ``images`` (the training images,
    un-augmented: leave-one-out needs each image once). The backbone, zoo and head
    are untouched; the plug-in's gates are left frozen at the fitted values.
    """
    plugin = model.plugin
    if not isinstance(plugin, ScaledZooAggregate):
        raise VimwError("gate fitting needs a ScaledZooAggregate plug-in")
    if strategy not in STRATEGIES:
        raise VimwError(f"unknown gate-fitting strategy {strategy!r}; choose from {sorted(STRATEGIES)}")
    backbone = model.backbone
    device = next(backbone.parameters()).device
    was_training = model.training
    model.eval()
    pixels = backbone.preprocess(images.to(device))
    # The frozen prefix before the first site is computed once.
    start = backbone.first_block_with(plugin.site_names)
    with torch.no_grad():
        prefix = backbone.forward_blocks(backbone.stem(pixels), None, 0, start)

    def features() -> torch.Tensor:
        return backbone.pool(backbone.forward_blocks(prefix, plugin.bypass, start=start))

    torch.manual_seed(seed)
    try:
        fitter = STRATEGIES[strategy]
        extra = {"seed": seed} if strategy == "cma" else {}
        result = fitter(plugin.gate_logits, plugin.log_scale if scale else None, features, targets.to(device),
                        model.head_config.num_classes, **extra, **options)
    finally:
        plugin.gate_logits.requires_grad_(False)
        plugin.log_scale.requires_grad_(False)
        model.train(was_training)
    return result


__all__ = [
    "GateFit",
    "RIDGE_LAMBDAS",
    "STRATEGIES",
    "ScaledZooAggregate",
    "centred_dual",
    "fit_aggregate_gates",
    "fit_gates_cma",
    "fit_gates_gradient",
    "loo_residuals",
    "one_hot",
    "ridge_loo_accuracy",
    "ridge_loo_loss",
    "uniform_penalty",
]
