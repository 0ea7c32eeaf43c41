"""The interface every PTQ method implements: :class:`Calibrator`, looked up by ``PTQConfig.method``.

A calibrator holds one method's choices: its default post-softmax and post-GELU quantizers, its activation and
weight scale searches (:func:`vitkit.ops.quant.search_uniform`), and two hooks —

* :meth:`Calibrator.plan` — ``{module name: {quantizer slot: quantizer spec}}`` for the quantization sites
  ``ptq`` selected (the patch projection, every block linear, each attention core, the heads);
* :meth:`Calibrator.calibrate` — the calibration passes over the images once the planned (uncalibrated)
  quantizers are installed; the base runs one forward, in which every quantizer fits itself in forward order
  with the upstream ones already active (sequential calibration).

A method is one file in this package that registers an instance with :func:`register_calibrator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

#: post-softmax quantizers ``PTQConfig.softmax`` may name
SOFTMAX_QUANTIZERS = ("log_sqrt2", "log2", "twin", "uniform")
#: quantizers of the post-GELU (``mlp_out``) inputs ``PTQConfig.post_gelu`` may name
POST_GELU_QUANTIZERS = ("uniform", "twin")
#: linear roles inside a block (outlier channels are only kept in float there)
BLOCK_ROLES = ("qkv", "attn_out", "mlp_in", "mlp_out")


@dataclass(frozen=True)
class Calibration:
    """What a calibrator's passes changed besides the quantizers: linears whose weights were reparameterized
    and linears that gained a bias doing so (a reload rebuilds that bias before the state-dict load)."""

    reparameterized: list[str]
    added_bias: list[str]


@dataclass(frozen=True)
class Calibrator:
    """One PTQ method. ``softmax`` / ``post_gelu``: its default quantizer for the post-softmax map and the
    post-GELU inputs (``PTQConfig.softmax`` / ``post_gelu`` override them); ``act_search`` / ``weight_search``:
    its activation / weight scale search; ``paper``: where it comes from."""

    name: str
    paper: str
    softmax: str = "uniform"
    post_gelu: str = "uniform"
    act_search: str = "minmax"
    weight_search: str = "minmax"

    # -- planning ------------------------------------------------------------------------------------------
    def uniform(self, cfg: Any, bits: int, search: str, channels: int | None = None, axis: int = -1) -> dict:
        """An asymmetric uniform quantizer spec (per tensor, or per channel along ``axis``)."""
        return {
            "kind": "uniform",
            "bits": bits,
            "symmetric": False,
            "channels": channels,
            "axis": axis,
            "search": search,
            "percentile": float(cfg.percentile),
        }

    def attention_specs(self, cfg: Any) -> dict[str, dict]:
        """Quantizers of both matmuls' inputs in an attention core: ``q``, ``k``, ``v`` uniform, the post-softmax
        map with ``cfg.softmax`` or the method's own (log√2 / log2, twin uniform, uniform)."""
        sm = cfg.softmax or self.softmax
        if sm in ("log_sqrt2", "log2"):
            attn_q = {"kind": "log", "bits": cfg.a_bits, "sqrt2": sm == "log_sqrt2"}
        elif sm == "twin":
            attn_q = {"kind": "twin", "bits": cfg.a_bits, "mode": "softmax"}
        else:
            attn_q = self.uniform(cfg, cfg.a_bits, self.act_search)
        return {
            "q_quant": self.uniform(cfg, cfg.a_bits, self.act_search),
            "k_quant": self.uniform(cfg, cfg.a_bits, self.act_search),
            "attn_quant": attn_q,
            "v_quant": self.uniform(cfg, cfg.a_bits, self.act_search),
        }

    def input_spec(self, role: str, cfg: Any) -> dict:
        """The input quantizer of a layer with ``role`` (``embed`` for the patch projection, else a linear role):
        the patch projection at ``first_input_bits``, post-GELU inputs twin uniform when asked, else uniform."""
        if role == "embed":
            return self.uniform(cfg, cfg.first_input_bits, self.act_search)
        if role == "mlp_out" and (cfg.post_gelu or self.post_gelu) == "twin":
            return {"kind": "twin", "bits": cfg.a_bits, "mode": "gelu"}
        return self.uniform(cfg, cfg.a_bits, self.act_search)

    def plan(self, model: nn.Module, sites: dict[str, str], cfg: Any) -> dict[str, dict[str, dict]]:
        """``{name: {slot: spec}}`` for ``sites`` (``{module name: role}``, role ``attention`` for an attention
        core): per-output-channel weight quantizers at ``cfg.w_bits`` (or ``cfg.layer_bits[name]``), input
        quantizers from :meth:`input_spec`, with ``cfg.outlier_ratio`` on the uniform inputs of block linears."""
        modules = dict(model.named_modules())
        overrides = dict(cfg.layer_bits or {})
        plan: dict[str, dict[str, dict]] = {}
        for name, role in sites.items():
            if role == "attention":
                plan[name] = self.attention_specs(cfg)
                continue
            mod = modules[name]
            wb = int(overrides.get(name, first_weight_bits(cfg, mod) if role == "embed" else cfg.w_bits))
            w_spec = self.uniform(cfg, wb, self.weight_search, channels=mod.weight.shape[0], axis=0)
            a_spec = self.input_spec(role, cfg)
            if cfg.outlier_ratio is not None and role in BLOCK_ROLES and a_spec["kind"] == "uniform":
                a_spec["outlier_ratio"] = float(cfg.outlier_ratio)
            plan[name] = {"a_quant": a_spec, "w_quant": w_spec}
        return plan

    # -- calibration -----------------------------------------------------------------------------------------
    def calibrate(self, model: nn.Module, x: torch.Tensor, plan: dict[str, dict[str, dict]]) -> Calibration:
        """Fit every installed quantizer: one forward over ``x`` (sequential: upstream quantizers already active).
        May update ``plan`` in place when it changes a quantizer's spec."""
        with torch.no_grad():
            model(x)
        return Calibration([], [])


def first_weight_bits(cfg: Any, first: nn.Module) -> int:
    """Weight bits of the first layer: ``cfg.first_weight_bits``, else ``cfg.w_bits`` for a patchify projection
    (kernel = stride) and 8 for a convolution stem (see :class:`vitkit.quant.ptq.PTQConfig`)."""
    if cfg.first_weight_bits is not None:
        return int(cfg.first_weight_bits)
    conv_stem = isinstance(first, nn.Conv2d) and tuple(first.kernel_size) != tuple(first.stride)
    return 8 if conv_stem else int(cfg.w_bits)


#: ``{method name: calibrator}`` in registration order (the order ``PTQConfig.method``'s error lists them in)
CALIBRATORS: dict[str, Calibrator] = {}


def register_calibrator(calibrator: Calibrator) -> Calibrator:
    if calibrator.name in CALIBRATORS:
        raise ValueError(f"a calibrator named {calibrator.name!r} is already registered")
    CALIBRATORS[calibrator.name] = calibrator
    return calibrator


def calibrator_for(method: str) -> Calibrator:
    """The calibrator registered as ``method`` (``PTQConfig.validate`` has already checked the name)."""
    return CALIBRATORS[method]
