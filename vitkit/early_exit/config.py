"""``EarlyExitConfig``: LGViT-style exit heads after intermediate blocks, trained by self-distillation."""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import TransformConfig
from ..errors import ConfigError
from ..ops.early_exit import CRITERIA

HEADS = ("linear", "attention-pool")


def _number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float)


@dataclass(frozen=True)
class EarlyExitConfig(TransformConfig):
    """Early exiting (LGViT, Xu et al., ACM MM 2023).

    ``exits``: block indices (0-based, as in ``blocks.3``) after which an exit head is placed, strictly
    increasing, each ≤ depth − 2 (the last block's exit is the model's own head); ``None`` = every block
    from ``depth // 3`` to ``depth − 2`` (LGViT puts exits on the upper two thirds). ``head``:
    ``"linear"`` (pool → LayerNorm → Linear) or ``"attention-pool"`` (a learned query attending over all
    tokens), one for all exits or one per exit (LGViT's heterogeneous heads: simple heads low, global
    aggregation high). ``threshold`` τ ∈ (0, 1), one or one per exit: a sample leaves at the first exit
    whose score reaches τ; ``criterion``: ``"confidence"`` (max softmax) or ``"entropy"`` (score
    ``1 − H/log C``), see :mod:`vitkit.ops.early_exit`. ``max_drop`` (accuracy points, e.g. 1.0): after
    training, calibrate one τ on ``data``/``calib_split`` (or the ``calib`` dataset given to ``apply_``)
    for at most that drop vs the final head, overriding ``threshold``: ``calibration="single"`` (LGViT: one τ,
    the most exits) or ``"per-exit"`` (cost-aware: one τ per exit, exits that do not pay switched off,
    minimising the mean ``cost`` — ``"macs"`` or ``"latency"`` measured at batch 1 on this machine).

    Training (backbone frozen, only the heads learn; :func:`vitkit.training.fit`): ``epochs`` (0 = keep the
    heads at their initialisation, copied from the final norm/head), ``batch_size``, ``lr``,
    ``weight_decay``, ``temperature`` and ``alpha`` (weight of the soft-KD term against the final head;
    ``1 − alpha`` goes to label cross-entropy), ``data``/``split``/``limit``/``shift``/``seed``/``threads``.
    """

    exits: tuple[int, ...] | None = None
    head: str | tuple[str, ...] = "linear"
    threshold: float | tuple[float, ...] = 0.9
    criterion: str = "confidence"
    max_drop: float | None = None
    calibration: str = "single"
    cost: str = "macs"
    calib_split: str = "val"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    temperature: float = 1.0
    alpha: float = 0.5
    data: str = "mnist5k"
    split: str = "train"
    limit: int | None = None
    shift: float = 2.0
    seed: int = 0
    threads: int | None = None

    def validate(self) -> None:
        n = type(self).__name__
        if self.exits is not None:
            ex = (self.exits,) if isinstance(self.exits, int) else tuple(self.exits)
            if not ex or not all(isinstance(e, int) and not isinstance(e, bool) for e in ex):
                raise ConfigError(f"{n}.exits must be a non-empty list of block indices, got {self.exits!r}")
            if min(ex) < 0:
                raise ConfigError(f"{n}.exits: block index {min(ex)} is negative; use 0-based indices (blocks.0 ...)")
            if any(b <= a for a, b in zip(ex, ex[1:], strict=False)):
                raise ConfigError(f"{n}.exits must be strictly increasing without repeats, got {list(ex)}")
            object.__setattr__(self, "exits", ex)
        heads = (self.head,) if isinstance(self.head, str) else tuple(self.head)
        bad = [h for h in heads if h not in HEADS]
        if bad or not heads:
            raise ConfigError(f"{n}.head must be one of {list(HEADS)} (or a list of them), got {self.head!r}")
        if not isinstance(self.head, str):
            object.__setattr__(self, "head", heads)
        thr = (self.threshold,) if _number(self.threshold) else tuple(self.threshold)
        for t in thr:
            if not _number(t) or not 0.0 < float(t) < 1.0:
                raise ConfigError(
                    f"{n}.threshold must be in the open interval (0, 1) (exit when the score reaches it), got {t!r}"
                )
        for field, values in (("head", heads), ("threshold", thr)):
            if len(values) > 1 and self.exits is not None and len(values) != len(self.exits):
                raise ConfigError(
                    f"{n}.{field} has {len(values)} entries for {len(self.exits)} exits: give one or one per exit"
                )
        if self.criterion not in CRITERIA:
            raise ConfigError(f"{n}.criterion must be one of {list(CRITERIA)}, got {self.criterion!r}")
        if self.calibration not in ("single", "per-exit"):
            raise ConfigError(f"{n}.calibration must be 'single' or 'per-exit', got {self.calibration!r}")
        if self.cost not in ("macs", "latency"):
            raise ConfigError(
                f"{n}.cost must be 'macs' or 'latency' (what per-exit calibration minimises), got {self.cost!r}"
            )
        if self.max_drop is not None and (not _number(self.max_drop) or self.max_drop < 0):
            raise ConfigError(f"{n}.max_drop must be >= 0 accuracy points (or null), got {self.max_drop!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"{n}.epochs must be an int >= 0 (0 = untrained heads), got {self.epochs!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"{n}.batch_size must be a positive int, got {self.batch_size!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ConfigError(f"{n}.alpha must be in [0, 1], got {self.alpha}")
        if float(self.temperature) <= 0 or float(self.lr) <= 0:
            raise ConfigError(f"{n}.temperature and lr must be positive")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise ConfigError(f"{n}.limit must be a positive int or null, got {self.limit!r}")

    def resolve(self, depth: int) -> tuple[list[int], list[str], list[float]]:
        """(exits, head per exit, threshold per exit) for a model with ``depth`` blocks, or ``ConfigError``."""
        n = type(self).__name__
        if depth < 2:
            raise ConfigError(f"{n}: a model with {depth} block(s) has no room for an early exit")
        exits = list(self.exits) if self.exits is not None else list(range(depth // 3, depth - 1))
        if not exits:
            exits = [depth - 2]
        last = depth - 2
        bad = [e for e in exits if e > last]
        if bad:
            raise ConfigError(
                f"{n}.exits {bad} out of range: the model has {depth} blocks, so exits go after blocks.0 .. "
                f"blocks.{last} (blocks.{depth - 1} is followed by the model's own head)"
            )
        heads = [self.head] * len(exits) if isinstance(self.head, str) else list(self.head)
        thr = [float(self.threshold)] * len(exits) if _number(self.threshold) else [float(t) for t in self.threshold]
        if len(heads) == 1:
            heads = heads * len(exits)
        if len(thr) == 1:
            thr = thr * len(exits)
        for field, values in (("head", heads), ("threshold", thr)):
            if len(values) != len(exits):
                raise ConfigError(
                    f"{n}.{field} has {len(values)} entries for {len(exits)} exits: give one or one per exit"
                )
        return exits, heads, thr
