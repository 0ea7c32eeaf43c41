"""The early-exit runtime patch: per-sample exiting inside a batch, exit histogram.

What changes (``__class__`` swap of the model only; blocks and weights untouched, the exit heads are a new
``exit_heads`` ModuleList, so their weights live in ``model.safetensors``):

* ``EarlyExit<HostClass>.forward`` in eval mode runs the blocks one by one; after each exit block it
  scores the exit head's prediction, writes the logits of samples that pass into the output, drops them
  from the batch (row gather) and goes on with the rest; samples passing no exit get the model's own head.
  In training mode, while tracing/exporting, or when disabled it is the host's own ``forward``.
* The block loop is the adapter's :func:`~vitkit.adapters.runtime.host_run`, so a token-reduction patch
  applied *before* early exit is honoured (token sizes and masks follow the samples); patching token
  reduction *after* early exit is refused (it would silently bypass the exits).

Counting: ``exit_histogram(model)`` (samples per exit, since the last reset), ``last_exits(model)``
(exit index of each sample of the last forward; ``len(exits)`` = the model's own head).

Export: per-sample exiting is data-dependent control flow, which a traced ONNX graph cannot hold, so
``vitkit export`` traces :class:`ExitSelectGraph` instead: every exit head and the final head are computed
and, per sample, the logits of the first exit whose score passes its threshold are selected — the same
decisions and outputs as :func:`exiting_forward`, so the export parity check compares like with like. It does
*not* save compute in ONNX Runtime (every block runs); the saving is PyTorch-side (or a segmented export, not
written yet).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..adapters import adapter_for
from ..adapters.runtime import HostRun, host_run
from ..errors import ConfigError
from ..history import drop_steps, steps_named
from ..ops.early_exit import effective_thresholds, exit_score_row, exit_scores
from ..patching import mixin_class

_log = logging.getLogger(__name__)

STATE = "_vitkit_exit"
HEADS = "exit_heads"
ORIG_CLASS = "_vitkit_exit_orig_class"


@dataclass
class ExitState:
    """Plain (non-tensor) settings of a patched model; not part of the state dict."""

    exits: list[int]
    heads: list[str]
    thresholds: list[float]
    criterion: str
    active: list[bool] = field(default_factory=list)  # False: exit switched off (head never evaluated)
    enabled: bool = True
    counts: list[int] = field(default_factory=list)
    last: torch.Tensor | int | None = None

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.exits) + 1)
        if not self.active:
            self.active = [True] * len(self.exits)

    def checked(self) -> dict[int, int]:
        """Block index → exit index, for the exits that are evaluated (switched-off exits left out)."""
        return {b: k for k, b in enumerate(self.exits) if self.active[k]}


def state(model: nn.Module) -> ExitState:
    st = getattr(model, STATE, None)
    if st is None:
        raise ConfigError("model has no early exits: apply vitkit.early_exit.EarlyExitConfig first")
    return st


def all_exit_logits(
    model: nn.Module, x: torch.Tensor, *, with_features: bool = False
) -> list[torch.Tensor] | tuple[list, torch.Tensor]:
    """Logits of every exit head and the final head for every sample (no exiting): ``E+1`` × ``[B, classes]``.

    ``with_features=True`` returns ``(features, final_logits)`` instead, ``features`` = one ``(x [B, N, C],
    size [B, N, 1] | None)`` per exit (what the heads read) — used to train the heads on a frozen backbone.
    """
    st = state(model)
    run = host_run(model)
    h = run.embed(x)
    at = {b: k for k, b in enumerate(st.exits)}
    heads = getattr(model, HEADS)
    outs, feats = [], []
    for i in range(run.depth):
        h = run.block(i, h)
        if i in at:
            if with_features:
                feats.append((h, run.size))
            else:
                outs.append(heads[at[i]](h, run.size))
    final = run.logits(h)
    return (feats, final) if with_features else outs + [final]


def exiting_forward(model: nn.Module, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    """Per-sample early exiting (see module docstring) → ``[B, classes]``; updates the histogram."""
    st = state(model)
    heads = getattr(model, HEADS)
    run = host_run(model, attn_mask, is_causal)
    h = run.embed(x)
    B = h.shape[0]
    if B == 1:
        return _exit_single(st, run, h, heads)
    alive = torch.arange(B, device=h.device)  # original row of each surviving sample
    exit_of = torch.full((B,), len(st.exits), dtype=torch.long, device=h.device)
    out: torch.Tensor | None = None
    at = st.checked()
    for i in range(run.depth):
        h = run.block(i, h)
        k = at.get(i)
        if k is None:
            continue
        logits = heads[k](h, run.size)  # [b, classes]
        done = exit_scores(logits, st.criterion) >= st.thresholds[k]  # [b]
        n_done, b = int(done.sum()), h.shape[0]
        if n_done == 0:
            continue
        if out is None:
            out = logits.new_empty(B, logits.shape[-1])
        if n_done == b:  # everyone left
            out[alive] = logits
            exit_of[alive] = k
            return _record(st, exit_of, out)
        gone = done.nonzero().squeeze(1)
        out[alive[gone]] = logits[gone]
        exit_of[alive[gone]] = k
        keep = (~done).nonzero().squeeze(1)
        h, alive = h.index_select(0, keep), alive.index_select(0, keep)
        run.take(keep, b)
    final = run.logits(h)
    if out is None:  # nobody exited: exactly the host model's output
        return _record(st, exit_of, final)
    out[alive] = final.to(out.dtype)
    return _record(st, exit_of, out)


def _exit_single(st: ExitState, run: HostRun, h: torch.Tensor, heads: nn.ModuleList):
    """Batch-1 fast path: the same decisions with the score computed on Python floats (no gathers, one sync
    per exit) — per-exit overhead matters most at batch 1."""
    at = st.checked()
    for i in range(run.depth):
        h = run.block(i, h)
        k = at.get(i)
        if k is None:
            continue
        logits = heads[k](h, run.size)  # [1, classes]
        if exit_score_row(logits[0].tolist(), st.criterion) >= st.thresholds[k]:
            return _record_one(st, k, logits)
    return _record_one(st, len(st.exits), run.logits(h))


def _record_one(st: ExitState, k: int, out: torch.Tensor) -> torch.Tensor:
    st.last = k  # an int; last_exits() makes the tensor only when asked
    st.counts[k] += 1
    return out


def _record(st: ExitState, exit_of: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    st.last = exit_of
    for k, c in enumerate(torch.bincount(exit_of, minlength=len(st.counts)).tolist()):
        st.counts[k] += int(c)
    return out


class ExitSelectGraph(nn.Module):
    """``forward(x)`` = the logits per-sample early exiting would return, computed without control flow."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        st = state(model)
        self.criterion = st.criterion
        self.register_buffer("thresholds", effective_thresholds(st.thresholds, st.active), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = all_exit_logits(self.model, x)  # E+1 × [B, C], the final head last
        logits = torch.stack(outs)  # [E+1, B, C]
        scores = torch.stack([exit_scores(o, self.criterion) for o in outs[:-1]])  # [E, B]
        passed = scores >= self.thresholds.view(-1, 1)  # [E, B]
        passed = torch.cat([passed, torch.ones_like(passed[:1])], dim=0).float()  # final head always passes
        first = passed.argmax(dim=0)  # [B]: first exit passed (argmax returns the first maximum)
        idx = first.view(1, -1, 1).expand(1, logits.shape[1], logits.shape[2])
        return logits.gather(0, idx).squeeze(0)  # [B, C]


class EarlyExitVisionTransformer(nn.Module):
    """Mixin placed before the model's own class: ``forward`` exits per sample in eval mode."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        st = getattr(self, STATE, None)
        if self.training or st is None or not st.enabled or _tracing():
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        return exiting_forward(self, x, attn_mask, is_causal)

    def vitkit_onnx_module(self) -> nn.Module:
        """What ``vitkit export`` traces: the exit decisions as a static graph (:class:`ExitSelectGraph`)."""
        return ExitSelectGraph(self)

    def vitkit_lift(self):
        """Take the early-exit class off (heads, state and the recorded step stay); returns what puts it back
        — for a caller that changes the class underneath (``vitkit.tokens.remove``)."""
        st = detach_class(self)
        return None if st is None else (lambda: patch(self, st))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # token reduction patches build subclasses of the model's current class: after early exit they
        # would route every forward around the exits — refuse, naming the fix.
        if not cls.__name__.startswith("EarlyExit"):
            raise ConfigError(
                "token reduction cannot be applied after early exit (it would bypass the exits): "
                "apply the token step before early_exit, or call vitkit.early_exit.remove(model) first"
            )


def _tracing() -> bool:
    tracing = torch.jit.is_tracing() or torch.jit.is_scripting()
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_exporting"):
        tracing = tracing or compiler.is_exporting()
    if tracing:
        _log.warning("early exit is data-dependent: the traced/exported graph is the full model without exits")
    return tracing


def patch(model: nn.Module, st: ExitState) -> None:
    """Swap the model's class for ``EarlyExit<Class>`` and attach ``st`` (the heads must already be attached)."""
    if getattr(model, STATE, None) is not None:
        raise ConfigError("model already has early exits: call vitkit.early_exit.remove(model) first")
    base = type(model)
    doc = f"{base.__name__} patched by vitkit for early exit. {EarlyExitVisionTransformer.__doc__}"
    model.__dict__[ORIG_CLASS] = base
    model.__class__ = mixin_class(
        EarlyExitVisionTransformer, base, f"EarlyExit{base.__name__}", module=__name__, doc=doc
    )
    setattr(model, STATE, st)


def remove(model: nn.Module) -> nn.Module:
    """Undo early exit: original class back, exit heads and the early_exit step dropped."""
    orig = model.__dict__.pop(ORIG_CLASS, None)
    if orig is not None:
        model.__class__ = orig
    model.__dict__.pop(STATE, None)
    if HEADS in model._modules:
        del model._modules[HEADS]
    drop_steps(model, lambda s: s.name == "early_exit")
    return model


def detach_class(model: nn.Module) -> ExitState | None:
    """Take the ``EarlyExit<Class>`` off (heads and the recorded step stay) and return the state to hand back to
    :func:`patch` — for a caller that changes the class underneath (``vitkit.tokens.remove``)."""
    st = model.__dict__.pop(STATE, None)
    if st is None:
        return None
    orig = model.__dict__.pop(ORIG_CLASS, None)
    if orig is not None:
        model.__class__ = orig
    return st


def exit_names(model: nn.Module) -> list[str]:
    """The name of each exit — the block it follows — and ``"final"`` for the model's own head."""
    names = adapter_for(model).describe(model).block_names
    return [names[b] for b in state(model).exits] + ["final"]


def exit_histogram(model: nn.Module) -> dict[str, int]:
    """Samples that left at each exit since the last reset: ``{<block name>: n, ..., "final": n}``."""
    return dict(zip(exit_names(model), state(model).counts, strict=True))


def reset_histogram(model: nn.Module) -> None:
    st = state(model)
    st.counts = [0] * (len(st.exits) + 1)
    st.last = None


def last_exits(model: nn.Module) -> torch.Tensor | None:
    """Exit index per sample of the last exiting forward (``len(exits)`` = the model's own head)."""
    last = state(model).last
    return torch.tensor([last]) if isinstance(last, int) else last


def set_threshold(model: nn.Module, threshold: float | list[float], *, active: list[bool] | None = None) -> None:
    """Change the exit threshold(s) in place (and in the recorded step, so a saved artifact keeps it).

    ``active`` (one bool per exit, default: unchanged) switches exits off: an inactive exit's head is not
    evaluated and no sample leaves there."""
    st = state(model)
    thr = [float(threshold)] * len(st.exits) if isinstance(threshold, int | float) else [float(t) for t in threshold]
    if len(thr) != len(st.exits) or not all(0.0 < t < 1.0 for t in thr):
        raise ConfigError(f"threshold must be one value or {len(st.exits)} values in (0, 1), got {threshold!r}")
    act = list(st.active) if active is None else [bool(a) for a in active]
    if len(act) != len(st.exits):
        raise ConfigError(f"active must have one entry per exit ({len(st.exits)}), got {len(act)}")
    st.thresholds, st.active = thr, act
    _update_step(model, thresholds=thr, active=act)


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch exiting off (the host's forward, exits ignored) or back on."""
    state(model).enabled = bool(enabled)


def _update_step(model: nn.Module, **decisions) -> None:
    for step in reversed(steps_named(model, "early_exit")):
        step.decisions.update(decisions)
        return
