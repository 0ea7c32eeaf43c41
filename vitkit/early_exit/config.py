"""``EarlyExitConfig``: LGViT-style exit heads after intermediate blocks, trained by self-distillation."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..configs import TransformConfig
from ..errors import ConfigError
from ..ops.early_exit import CRITERIA
from ..training import TrainConfig
from ..validate import check_choice, check_int, check_ints, check_number, is_number

HEADS = ("linear", "attention-pool")
#: The exit heads' training loop (``EarlyExitConfig.train``): 3 epochs, batch 64, lr 2e-3, no label smoothing.
EXIT_TRAIN = TrainConfig(epochs=3, batch_size=64, lr=2e-3, weight_decay=0.01, warmup_epochs=0.5, label_smoothing=0.0)
_FLAT_TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "shift", "seed", "threads")


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

    Training (backbone frozen, only the heads learn; :func:`vitkit.training.fit`): ``train`` is the loop's
    :class:`~vitkit.training.TrainConfig` (``train.epochs`` 0 = keep the heads at their initialisation, copied
    from the final norm/head; YAML ``train: {epochs: 20}``), ``temperature`` and ``alpha`` (weight of the
    soft-KD term against the final head; ``1 − alpha`` goes to label cross-entropy), ``data``/``split``/``limit``.
    """

    version: ClassVar[int] = 2

    exits: tuple[int, ...] | None = None
    head: str | tuple[str, ...] = "linear"
    threshold: float | tuple[float, ...] = 0.9
    criterion: str = "confidence"
    max_drop: float | None = None
    calibration: str = "single"
    cost: str = "macs"
    calib_split: str = "val"
    temperature: float = 1.0
    alpha: float = 0.5
    data: str = "mnist5k"
    split: str = "train"
    limit: int | None = None
    train: TrainConfig = dataclasses.field(default_factory=lambda: EXIT_TRAIN)

    @classmethod
    def migrate(cls, data: dict, version: int) -> dict:
        """Version 1 held the training settings flat (``epochs: 20``); they now live under ``train``."""
        flat = {k: data.pop(k) for k in _FLAT_TRAIN_KEYS if k in data}
        if flat:
            data["train"] = {**dict(data.get("train") or {}), **flat}
        return data

    def validate(self) -> None:
        n = type(self).__name__
        if self.exits is not None:
            ex = (self.exits,) if isinstance(self.exits, int) else self.exits
            ex = check_ints(ex, f"{n}.exits", why=" (block indices)")
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
        thr = (self.threshold,) if is_number(self.threshold) else tuple(self.threshold)
        for t in thr:
            why = " (exit when the score reaches it)"
            check_number(t, f"{n}.threshold", low=0, high=1, low_open=True, high_open=True, why=why)
        for field, values in (("head", heads), ("threshold", thr)):
            if len(values) > 1 and self.exits is not None and len(values) != len(self.exits):
                raise ConfigError(
                    f"{n}.{field} has {len(values)} entries for {len(self.exits)} exits: give one or one per exit"
                )
        check_choice(self.criterion, f"{n}.criterion", CRITERIA)
        check_choice(self.calibration, f"{n}.calibration", ("single", "per-exit"))
        check_choice(self.cost, f"{n}.cost", ("macs", "latency"), why=" (what per-exit calibration minimises)")
        check_number(self.max_drop, f"{n}.max_drop", low=0, optional=True, why=" accuracy points")
        check_number(self.alpha, f"{n}.alpha", low=0, high=1)
        check_number(self.temperature, f"{n}.temperature", low=0, low_open=True)
        check_int(self.limit, f"{n}.limit", low=1, optional=True)

    def resolve(self, block_names: Sequence[str]) -> tuple[list[int], list[str], list[float]]:
        """(exits, head per exit, threshold per exit) for a model with blocks ``block_names``, or ``ConfigError``."""
        n = type(self).__name__
        depth = len(block_names)
        if depth < 2:
            raise ConfigError(f"{n}: a model with {depth} block(s) has no room for an early exit")
        exits = list(self.exits) if self.exits is not None else list(range(depth // 3, depth - 1))
        if not exits:
            exits = [depth - 2]
        last = depth - 2
        bad = [e for e in exits if e > last]
        if bad:
            raise ConfigError(
                f"{n}.exits {bad} out of range: the model has {depth} blocks, so exits go after {block_names[0]} .. "
                f"{block_names[last]} ({block_names[-1]} is followed by the model's own head)"
            )
        heads = [self.head] * len(exits) if isinstance(self.head, str) else list(self.head)
        thr = [float(self.threshold)] * len(exits) if is_number(self.threshold) else [float(t) for t in self.threshold]
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
