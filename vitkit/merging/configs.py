"""One frozen config per merge method. ``targets``/``skip`` are globs over *tensor names* (state-dict keys):
tensors outside them are copied from the base (or the first model when there is no base)."""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import TransformConfig
from ..errors import ConfigError


def _check_unit(cls: str, name: str, value: float, *, low_open: bool = True, high_open: bool = False) -> None:
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    if not (lo_ok and hi_ok):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"{cls}.{name} must be in {lo}0, 1{hi}, got {value}")


@dataclass(frozen=True)
class AverageConfig(TransformConfig):
    """Uniform (or weighted) soup: θ = Σ w_i θ_i / Σ w_i (Wortsman et al. 2022). ``weights=None`` = uniform.

    Weights are *normalised* to sum to 1 (documented choice); negative weights or a zero sum are errors.
    No base is needed (a given base is ignored except for tensors outside ``targets``).
    """

    weights: tuple[float, ...] | None = None

    def validate(self) -> None:
        if self.weights is not None:
            if any(float(w) < 0 for w in self.weights):
                raise ConfigError(f"AverageConfig.weights must be >= 0, got {list(self.weights)}")
            if sum(float(w) for w in self.weights) <= 0:
                raise ConfigError("AverageConfig.weights sum to 0: give at least one model a positive weight")


@dataclass(frozen=True)
class GreedySoupConfig(TransformConfig):
    """Greedy soup (Wortsman et al. 2022, Recipe 1): needs ``evaluate=`` (model → held-out score, higher better)."""

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class TaskArithmeticConfig(TransformConfig):
    """θ = θ0 + scaling · Σ_t w_t τ_t (Ilharco et al. 2023). ``weights`` (default all 1) are per-model multipliers
    and are *not* normalised; ``scaling=1/T`` with unit weights is the simple average."""

    scaling: float = 0.3
    weights: tuple[float, ...] | None = None

    def validate(self) -> None:
        if not isinstance(self.scaling, int | float) or self.scaling != self.scaling:
            raise ConfigError(f"TaskArithmeticConfig.scaling must be a number, got {self.scaling!r}")


@dataclass(frozen=True)
class TIESConfig(TransformConfig):
    """TIES-Merging (Yadav et al. 2023): trim to ``density`` per tensor, elect sign, disjoint ``aggregate``,
    θ = θ0 + scaling · τ_m. The paper's disjoint mean works with scaling ≈ 1; FusionBench uses sum + 0.3."""

    density: float = 0.2
    scaling: float = 1.0
    aggregate: str = "mean"

    def validate(self) -> None:
        _check_unit("TIESConfig", "density", self.density)
        if self.aggregate not in ("mean", "sum"):
            raise ConfigError(f"TIESConfig.aggregate must be 'mean' or 'sum', got {self.aggregate!r}")


@dataclass(frozen=True)
class DAREConfig(TransformConfig):
    """DARE (Yu et al. 2024): drop each task-vector entry with prob. ``drop``, rescale by 1/(1−drop), then
    task arithmetic (``combine="task_arithmetic"``) or TIES sign election + disjoint mean (``"ties"``).
    Seeded per (seed, model index, tensor name): the same inputs give the same merge."""

    drop: float = 0.5
    scaling: float = 0.3
    combine: str = "task_arithmetic"
    rescale: bool = True
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.drop < 1.0:
            raise ConfigError(f"DAREConfig.drop must be in [0, 1), got {self.drop}")
        if self.combine not in ("task_arithmetic", "ties"):
            raise ConfigError(f"DAREConfig.combine must be 'task_arithmetic' or 'ties', got {self.combine!r}")


@dataclass(frozen=True)
class OPCMConfig(TransformConfig):
    """OPCM (Tang et al. 2025): continual merging by orthogonal projection + adaptive scaling; ``alpha`` is the
    fraction of the merged update's singular-value mass whose subspace is protected (paper default 0.5)."""

    alpha: float = 0.5

    def validate(self) -> None:
        _check_unit("OPCMConfig", "alpha", self.alpha, low_open=False)


@dataclass(frozen=True)
class FWMergingConfig(TransformConfig):
    """FW-Merging (Chen et al. 2025), hard variant: ``max_iters`` Frank-Wolfe steps over the pool's vertices
    θ0 + vertex_scaling·τ_i, chosen by the gradient of ``objective=`` (a calibration loss). γ_k = step_size·2/(k+2).
    ``granularity="layer"`` picks a vertex per tensor; ``init_scaling`` > 0 starts at task arithmetic."""

    max_iters: int = 10
    step_size: float = 1.0
    vertex_scaling: float = 1.0
    granularity: str = "task"
    init_scaling: float = 0.0

    def validate(self) -> None:
        if int(self.max_iters) < 1:
            raise ConfigError(f"FWMergingConfig.max_iters must be >= 1, got {self.max_iters}")
        _check_unit("FWMergingConfig", "step_size", self.step_size)
        if self.vertex_scaling <= 0:
            raise ConfigError(f"FWMergingConfig.vertex_scaling must be > 0, got {self.vertex_scaling}")
        if self.granularity not in ("task", "layer"):
            raise ConfigError(f"FWMergingConfig.granularity must be 'task' or 'layer', got {self.granularity!r}")
        if self.init_scaling < 0:
            raise ConfigError(f"FWMergingConfig.init_scaling must be >= 0, got {self.init_scaling}")


@dataclass(frozen=True)
class RegMeanConfig(TransformConfig):
    """RegMean (Jin et al. 2023): closed-form per-Linear merge from input Gram matrices on ``calib=`` data
    (one batch of inputs per model); ``alpha`` scales the Gram matrices' off-diagonal. Other tensors averaged
    (``others="average"``, the paper) or task arithmetic with ``scaling`` (needs a base)."""

    alpha: float = 0.95
    max_batch: int = 256
    others: str = "average"
    scaling: float = 0.3
    linear_scaling: float = 1.0

    def validate(self) -> None:
        _check_unit("RegMeanConfig", "alpha", self.alpha, low_open=False)
        if self.others not in ("average", "task_arithmetic"):
            raise ConfigError(f"RegMeanConfig.others must be 'average' or 'task_arithmetic', got {self.others!r}")


@dataclass(frozen=True)
class PLeaSConfig(TransformConfig):
    """PLeaS (Nasery et al. 2025) for N ≥ 2 timm ViTs of one architecture, possibly from different bases: align
    every model onto the first (Hungarian on activation correlations over ``calib=``: residual stream, attention
    heads as units + dims within heads, MLP neurons), merge matched units (``weights``: per-model, normalised;
    default uniform), then refit every block linear by layer-wise least squares on the merged model's own
    inputs. ``mlp_width`` (default: unchanged) sets the merged MLP hidden width, up to N × the models' width;
    build the module with :func:`vitkit.merging.pleas.model_for`. ``ridge`` is relative to the mean Gram diagonal."""

    weights: tuple[float, ...] | None = None
    mlp_width: int | None = None
    refit: bool = True
    ridge: float = 1e-4
    batch: int = 256

    def validate(self) -> None:
        if self.weights is not None and (any(float(w) < 0 for w in self.weights) or sum(self.weights) <= 0):
            raise ConfigError(f"PLeaSConfig.weights must be >= 0 with a positive sum, got {list(self.weights)}")
        if self.mlp_width is not None and int(self.mlp_width) < 1:
            raise ConfigError(f"PLeaSConfig.mlp_width must be >= 1 (or None to keep the width), got {self.mlp_width}")
        if self.ridge < 0:
            raise ConfigError(f"PLeaSConfig.ridge must be >= 0, got {self.ridge}")
        if int(self.batch) < 1:
            raise ConfigError(f"PLeaSConfig.batch must be >= 1, got {self.batch}")
