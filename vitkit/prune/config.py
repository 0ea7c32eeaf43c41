"""``PruneConfig``: structured pruning of heads / MLP neurons / blocks to a params or MACs target."""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import TransformConfig
from ..errors import ConfigError
from ..ops.pruning import IMPORTANCES, NORMALIZERS
from ..validate import check_bool, check_choice, check_int, is_number

GROUPS = ("heads", "mlp", "blocks")
TARGETS = ("macs", "params", "latency")
ALLOCATIONS = ("global", "uniform")


@dataclass(frozen=True)
class PruneConfig(TransformConfig):
    """Structured (shape-changing) pruning of a ViT (through the host adapter), one shot.

    ``target``: what ``ratio`` is a fraction of — ``macs`` (per image, attention counted analytically; CPU
    speed follows MACs almost 1:1) or ``params`` of the *whole* model; ``ratio`` ∈ [0, 1): the fraction to
    remove (0 = identity). ``importance``: ``l1`` / ``l2`` group magnitude, ``taylor`` (first-order,
    Σ|w·G|), ``hessian`` (NViT, Σ_batches (Σ w·g)²), ``dimap`` (data-free DIMAP weight saliency summed per
    group). ``groups``: any of ``heads``, ``mlp`` (hidden neurons), ``blocks`` (whole blocks, global
    allocation only). ``allocation``: ``global`` (one ranking over all layers after per-layer
    ``normalize``) or ``uniform`` (the same fraction of every group in every block). ``min_heads``: heads
    a block always keeps (global; uniform refuses a ratio that would empty a block). ``round_to``: neurons
    removed per block in multiples of this. ``calib_images`` / ``calib_batch_size``: images and batch size
    for the data-driven criteria (gradients of the cross-entropy to the labels if the calibration set has
    them, else to the model's own predictions). ``targets``/``skip`` globs match block names (``blocks.3``).
    ``target="latency"``: the ratio is of the whole model's seconds per image measured on this CPU at
    ``latency_batch`` (median of ``latency_repeats``); units are priced by measured per-head / per-neuron
    costs (:mod:`vitkit.prune.latency`) — valid for this machine and thread count, noisy on a busy CPU.
    ``reconstruct``: after pruning, refit each pruned block's attention-output / MLP-output Linear by least
    squares to the dense block's outputs on the calibration images (:mod:`vitkit.prune.reconstruct`; off by
    default, NViT does not; needs calibration images).
    """

    target: str = "macs"
    ratio: float = 0.5
    importance: str = "hessian"
    groups: tuple[str, ...] = ("heads", "mlp")
    allocation: str = "global"
    normalize: str = "mean"
    min_heads: int = 1
    round_to: int = 1
    calib_images: int = 32
    calib_batch_size: int = 8
    latency_batch: int = 1
    latency_repeats: int = 5
    seed: int = 0
    reconstruct: bool = False

    def validate(self) -> None:
        name = type(self).__name__
        check_choice(self.target, f"{name}.target", TARGETS)
        if not is_number(self.ratio) or not 0.0 <= self.ratio < 1.0:
            raise ConfigError(
                f"{name}.ratio must be in [0, 1) (fraction of {self.target} to remove), got {self.ratio!r}"
            )
        check_choice(self.importance, f"{name}.importance", IMPORTANCES)
        groups = (self.groups,) if isinstance(self.groups, str) else tuple(self.groups)
        object.__setattr__(self, "groups", groups)
        bad = [g for g in groups if g not in GROUPS]
        if bad or not groups or len(set(groups)) != len(groups):
            raise ConfigError(f"{name}.groups must be distinct names from {list(GROUPS)}, got {list(groups)}")
        check_choice(self.allocation, f"{name}.allocation", ALLOCATIONS)
        if self.allocation == "uniform" and "blocks" in groups:
            raise ConfigError(f"{name}: groups with 'blocks' need allocation='global' (blocks compete globally)")
        check_choice(self.normalize, f"{name}.normalize", NORMALIZERS)
        check_bool(self.reconstruct, f"{name}.reconstruct")
        positive = ("min_heads", "round_to", "calib_images", "calib_batch_size", "latency_batch", "latency_repeats")
        for field_name in positive:
            check_int(getattr(self, field_name), f"{name}.{field_name}", low=1)
