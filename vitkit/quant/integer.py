"""Integer-only inference of a ``ptq`` model (I-ViT, Li & Gu, ICCV 2023): :func:`to_integer`.

The calibrated fake-quant model (uniform per-channel weights, per-tensor activations — what RepQ-ViT's
reparameterization leaves) is turned into :class:`IntegerViT`, whose forward runs on int64 tensors holding
integer codes from the quantized input image to the head's int32 accumulator:

* every Linear / the patch embedding: ``(a − z_a)·(w − z_w)ᵀ + round(bias/(s_a·s_w))`` — int8 codes, exact
  integer accumulation (int64 here, int32 range), bias in int32;
* every change of scale: a dyadic requantization ``(q·m + b + 2^(c−1)) >> c`` (I-ViT §3.1) with integer
  constants computed once at conversion (LayerNorm affine, LayerScale, zero points folded in);
* LayerNorm: I-LayerNorm (integer mean, variance, Newton integer sqrt); softmax: Shiftmax; GELU: ShiftGELU
  (or λ-ShiftGELU with ``gelu_lambda``), all from :mod:`vitkit.ops.quant_int`;
* the log√2 / log2 post-softmax quantizer: integer thresholds on Shiftmax's codes, and ``attn·v`` as bit shifts
  (``2^(F − ⌈q/2⌉)`` weights, the odd codes' √2 as one dyadic multiply), as RepQ-ViT §4.3 describes;
* only the input image (quantized by the patch embedding's input quantizer) and the logits (head accumulator ×
  its scale) are real numbers.

Where it deviates from the fake-quant model it is converted from (measured in ``tests/quant/test_integer.py``
and BENCHMARKS.md): Shiftmax and ShiftGELU are *approximations* of softmax and GELU (max abs error ≈ 0.02 on the
probabilities and ≈ 0.025 on GELU), which the fake-quant model computes exactly in float — I-ViT trains them
in with QAT, vitkit does not; the residual stream, the values the fake-quant model keeps in float (LayerNorm
in/out, residual adds, GELU input), are int codes with a fixed binary scale ``2^−res_frac_bits`` (int32 range
checked); log√2 levels below ``2^−attn_frac_bits·δ`` become 0.

Supported: plain ViT/DeiT with a class token and token pooling, LayerScale allowed, ``ptq`` methods
repq / dopq / minmax / percentile (uniform or log post-softmax quantizer). PTQ4ViT's twin-uniform quantizers,
qk-norm, registers, distillation tokens and average pooling raise ``UnsupportedModelError`` naming the feature.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn

from ..adapters import adapter_for
from ..adapters.protocol import AttentionCore
from ..errors import DataError, NumericsError, UnsupportedModelError
from ..ops import quant as Q
from ..ops import quant_int as I
from .modules import QuantAttention, quantizers
from .quantizer import LogQuantizer, UniformQuantizer

_log = logging.getLogger(__name__)

_UNSUPPORTED = ("qk_norm", "scale_norm", "dist_token", "reg_tokens", "no_class_token", "avg_pool", "conv_stem")


class _Act:
    """A per-tensor uniform activation quantizer's constants: real scale, integer zero point and code range."""

    def __init__(self, q: nn.Module, where: str) -> None:
        if not isinstance(q, UniformQuantizer):
            raise UnsupportedModelError(
                f"to_integer handles uniform activation quantizers, but {where} is {type(q).__name__}: "
                "quantize with ptq method repq, dopq, minmax or percentile"
            )
        if q.channels:
            raise UnsupportedModelError(
                f"{where} is per-channel: to_integer needs per-tensor activations (RepQ-reparameterized ptq)"
            )
        self.scale = float(q.scale.reshape(-1)[0])
        self.zero = int(round(float(q.zero_point.reshape(-1)[0])))
        self.qmin, self.qmax = Q.qrange(q.bits, q.symmetric)


class _Linear:
    """Integer GEMM of one quantized Linear/Conv: weight codes minus zero point, int32 bias, accumulator scale."""

    def __init__(self, mod: nn.Module, name: str) -> None:
        a_q, w_q = getattr(mod, "a_quant", None), getattr(mod, "w_quant", None)
        if a_q is None or not isinstance(w_q, UniformQuantizer):
            raise UnsupportedModelError(f"{name} is not quantized (input and weight): to_integer needs full ptq")
        if getattr(a_q, "float_channels", None):
            raise UnsupportedModelError(
                f"{name} keeps input channels {a_q.float_channels} in float (PTQConfig.outlier_ratio): the "
                "integer-only path has no float part; quantize without outlier_ratio or deploy with deploy_int8"
            )
        self.act = _Act(a_q, f"{name}.a_quant")
        w = mod.weight.detach().double().reshape(mod.weight.shape[0], -1)  # [out, in]
        s_w, z_w = w_q.scale.double(), w_q.zero_point.double()
        codes = Q.quantize(w, s_w, z_w, w_q.bits, symmetric=w_q.symmetric, axis=0)
        self.w = (codes - z_w.unsqueeze(1)).long().t().contiguous()  # [in, out], centred codes
        self.acc_scale = self.act.scale * s_w  # [out] float64
        bias = mod.bias.detach().double() if mod.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        self.b = torch.round(bias / self.acc_scale).long()  # int32 bias
        self.bits = w_q.bits

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.act.zero) @ self.w + self.b  # [..., out] int accumulator


class _Requant:
    """``clamp(round(q·mult + add), lo, hi)`` in integer arithmetic (constants from :func:`make_requant`)."""

    def __init__(self, mult, add=0.0, lo=None, hi=None, q_bits: int = 34) -> None:
        self.m, self.b, self.c = I.make_requant(mult, add, q_bits=q_bits)
        self.lo, self.hi = lo, hi

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        y = I.apply_requant(q, self.m, self.b, self.c)
        return y.clamp(self.lo, self.hi) if self.lo is not None else y


def _ln_requant(norm: nn.LayerNorm, act: _Act, ln_shift: int) -> _Requant:
    """I-LayerNorm codes (scale ``√C/2^(30−ln_shift)``) → the next input quantizer's codes, affine folded in."""
    c = norm.normalized_shape[-1]
    sc = math.sqrt(c) / 2 ** (30 - ln_shift)
    gamma = norm.weight.detach().double() if norm.weight is not None else torch.ones(c, dtype=torch.float64)
    beta = norm.bias.detach().double() if norm.bias is not None else torch.zeros(c, dtype=torch.float64)
    return _Requant(gamma * sc / act.scale, beta / act.scale + act.zero, act.qmin, act.qmax, q_bits=24)


def _gamma(gamma: torch.Tensor | None, dim: int) -> torch.Tensor:
    """A block's layer-scale vector (the adapter gives None for no layer scale) in float64."""
    return torch.ones(dim, dtype=torch.float64) if gamma is None else gamma.detach().double()


class IntegerViT(nn.Module):
    """Integer-only twin of a calibrated ``ptq`` ViT; ``forward(images) -> logits`` (see module docstring).
    CPU emulation: the integer constants are plain tensors (not buffers), so ``.to(device)`` does not move them.

    ``taps``: pass a dict to :meth:`forward` to receive the integer input codes of every quantized linear
    (keyed by module name), for comparisons with the fake-quant model's codes."""

    def __init__(
        self,
        model: nn.Module,
        *,
        res_frac_bits: int = 16,
        gelu_frac_bits: int = 12,
        softmax_bits: int = 16,
        attn_frac_bits: int = 20,
        gelu_lambda: float = 1.702,
    ) -> None:
        super().__init__()
        host = adapter_for(model)
        info = host.describe(model)
        bad = sorted(set(info.features) & set(_UNSUPPORTED)) + sorted(info.features & {"gated_attn", "glu_mlp"})
        if bad:
            raise UnsupportedModelError(f"to_integer does not handle the model feature(s) {bad}: use a plain ViT/DeiT")
        if info.global_pool != "token":
            raise UnsupportedModelError(
                f"to_integer handles class-token pooling only, got global_pool={info.global_pool!r}"
            )
        if not quantizers(model):
            raise UnsupportedModelError("to_integer needs a ptq-calibrated model: apply PTQConfig(...) first")
        outer = host.outer_layers(model)
        for where, norm in (("before the first block", outer.pre_norm), ("after pooling", outer.pool_norm)):
            if not isinstance(norm, nn.Identity):
                raise UnsupportedModelError(f"to_integer does not handle a norm {where} ({type(norm)})")
        pe = outer.patch_proj
        if tuple(pe.stride) != tuple(pe.kernel_size) or any(pe.padding):
            raise UnsupportedModelError("to_integer needs a non-overlapping patch embedding (stride = kernel)")
        self.in_size = host.input_size(model)
        self.patch = tuple(pe.kernel_size)
        self.R = int(res_frac_bits)
        self.G = int(gelu_frac_bits)
        self.SB = int(softmax_bits)
        self.F = int(attn_frac_bits)
        self.lam = float(gelu_lambda)
        self.ln_shift = 8
        R = 2.0**self.R
        d = info.embed_dim
        self.embed_name = outer.patch_proj_name
        self.embed = _Linear(pe, self.embed_name)
        self.embed_out = _Requant(self.embed.acc_scale * R)
        self.cls = torch.round(outer.prefix_tokens[0].detach().double() * R).long()  # [1,1,D] class token
        self.pos = torch.round(outer.positions.detach().double() * R).long()  # [1,N,D]
        linears = {(r.block, r.role): name for name, r in host.linear_roles(model).items()}
        cores = host.attention_cores(model)
        self.layers = []
        for i, (block_name, blk) in enumerate(host.blocks(model)):
            names = {role: linears[(i, role)] for role in ("qkv", "attn_out", "mlp_in", "mlp_out")}
            self.layers.append(self._convert_block(host.block_layers(blk, index=i), cores[i], block_name, names, d))
        self.head_name, head = host.heads(model)[0]
        self.head = _Linear(head, self.head_name)
        self.norm_out = _ln_requant(outer.final_norm, self.head.act, self.ln_shift)

    def _convert_block(self, p, core: AttentionCore, pre: str, names: dict[str, str], d: int) -> dict:
        """Integer constants of one block: ``p`` its layers by role (:meth:`HostAdapter.block_layers`), ``core``
        its attention core, ``pre`` its name, ``names`` its linears' names by role."""
        attn = p.attention
        if not isinstance(attn, QuantAttention):
            raise UnsupportedModelError(f"{core.name} is not quantized: to_integer needs a full ptq model")
        if not isinstance(p.act, nn.GELU):
            raise UnsupportedModelError(f"{pre}'s MLP activation is {type(p.act).__name__}: to_integer handles GELU")
        if not isinstance(p.mlp_inner_norm, nn.Identity):
            raise UnsupportedModelError(f"{pre} has a norm inside its MLP: to_integer does not handle it")
        R = 2.0**self.R
        qkv, proj, fc1, fc2 = (_Linear(p.linears[r], names[r]) for r in ("qkv", "attn_out", "mlp_in", "mlp_out"))
        aq, ak, av = (_Act(getattr(attn, n), f"{core.name}.{n}") for n in ("q_quant", "k_quant", "v_quant"))
        s = qkv.acc_scale
        b = {
            "name": pre,
            "taps": names,
            "qkv": qkv,
            "proj": proj,
            "fc1": fc1,
            "fc2": fc2,
            "ln1": _ln_requant(p.norms["attn"], qkv.act, self.ln_shift),
            "ln2": _ln_requant(p.norms["mlp"], fc1.act, self.ln_shift),
            "q": _Requant(s[:d] * core.scale / aq.scale, aq.zero, aq.qmin, aq.qmax),
            "k": _Requant(s[d : 2 * d] / ak.scale, ak.zero, ak.qmin, ak.qmax),
            "v": _Requant(s[2 * d :] / av.scale, av.zero, av.qmin, av.qmax),
            "aq": aq,
            "ak": ak,
            "av": av,
            "heads": core.num_heads,
            "head_dim": core.head_dim,
            "res1": _Requant(proj.acc_scale * _gamma(p.gammas["attn"], d) * R),
            "res2": _Requant(fc2.acc_scale * _gamma(p.gammas["mlp"], d) * R),
            "gelu_in": _Requant(fc1.acc_scale * 2.0**self.G),
        }
        # GELU codes (scale 2^-G · 2^-15 from shift_gelu) → fc2 input codes
        b["gelu_out"] = _Requant(2.0 ** -(self.G + 15) / fc2.act.scale, fc2.act.zero, fc2.act.qmin, fc2.act.qmax, 44)
        pin = 2.0 ** -(self.SB - 1)  # Shiftmax output scale
        attn_q = attn.attn_quant
        if isinstance(attn_q, LogQuantizer):
            delta = float(attn_q.delta.reshape(-1)[0])
            b["attn"] = ("log", I.log2_thresholds(delta, attn_q.bits, pin, sqrt2=attn_q.sqrt2), attn_q.sqrt2)
            b["sqrt2"] = I.dyadic(math.sqrt(2.0), bits=20)
            b["attn_out"] = _Requant(
                delta * av.scale * 2.0**-self.F / proj.act.scale, proj.act.zero, proj.act.qmin, proj.act.qmax, 44
            )
        elif isinstance(attn_q, UniformQuantizer) and not attn_q.channels:
            at = _Act(attn_q, f"{core.name}.attn_quant")
            b["attn"] = ("uniform", _Requant(pin / at.scale, at.zero, at.qmin, at.qmax), at)
            b["attn_out"] = _Requant(at.scale * av.scale / proj.act.scale, proj.act.zero, proj.act.qmin, proj.act.qmax)
        else:
            raise UnsupportedModelError(
                f"{core.name}.attn_quant is {type(attn_q).__name__}: to_integer handles log2/log√2 or uniform "
                "post-softmax quantizers (ptq method repq, dopq, minmax or percentile)"
            )
        return b

    # -- forward ------------------------------------------------------------------------------------------
    def _check_res(self, r: torch.Tensor, where: str) -> torch.Tensor:
        if r.abs().max() >= 2**31:
            raise NumericsError(f"residual stream exceeds int32 at {where} with scale 2^-{self.R}: lower res_frac_bits")
        return r

    def _attention(self, b: dict, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        H, hd = b["heads"], b["head_dim"]
        acc = b["qkv"](x)  # [B,N,3D]
        d = H * hd
        q, k, v = b["q"](acc[..., :d]), b["k"](acc[..., d : 2 * d]), b["v"](acc[..., 2 * d :])

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, N, H, hd).transpose(1, 2)  # [B,H,N,hd]

        q, k, v = heads(q - b["aq"].zero), heads(k - b["ak"].zero), heads(v - b["av"].zero)
        s = q @ k.transpose(-2, -1)  # [B,H,N,N], scale s_q·s_k
        p = I.shiftmax(s, b["aq"].scale * b["ak"].scale, out_bits=self.SB)  # scale 2^-(SB-1)
        kind = b["attn"][0]
        if kind == "log":
            _, thr, sqrt2 = b["attn"]
            codes, under = I.log2_codes_int(p, thr)
            e = (codes + 1) >> 1 if sqrt2 else codes  # exponent: ceil(q/2) for log√2
            w = torch.where(under | (e > self.F), torch.zeros_like(e), torch.ones_like(e) << (self.F - e).clamp(min=0))
            if sqrt2:
                odd = (codes & 1).bool()
                out = torch.where(odd, 0, w) @ v + I.requantize(torch.where(odd, w, 0) @ v, *b["sqrt2"])
            else:
                out = w @ v
        else:
            _, req, at = b["attn"]
            out = (req(p) - at.zero) @ v
        out = out.transpose(1, 2).reshape(B, N, d)
        return b["attn_out"](out)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_size:
            raise DataError(f"images have shape {tuple(x.shape[1:])} but the model expects {self.in_size}")
        if not torch.isfinite(x).all():
            raise DataError("input images contain NaN/Inf values")
        B, C, Hh, Ww = x.shape
        ph, pw = self.patch
        a = self.embed.act
        xq = torch.clamp(torch.round(x.double() / a.scale) + a.zero, a.qmin, a.qmax).long()  # the float → int entry
        patches = xq.reshape(B, C, Hh // ph, ph, Ww // pw, pw).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * ph * pw)
        if taps is not None:
            taps[self.embed_name] = patches
        r = self.embed_out(self.embed(patches))  # [B,L,D] at scale 2^-R
        r = torch.cat([self.cls.expand(B, -1, -1), r], dim=1) + self.pos
        for b in self.layers:
            tap = b["taps"] if taps is not None else {}
            n = I.i_layernorm(r)[0] >> self.ln_shift
            a = b["ln1"](n)
            if taps is not None:
                taps[tap["qkv"]] = a
            att = self._attention(b, a)
            if taps is not None:
                taps[tap["attn_out"]] = att
            r = self._check_res(r + b["res1"](b["proj"](att)), f"{b['name']} (attention)")
            a = b["ln2"](I.i_layernorm(r)[0] >> self.ln_shift)
            if taps is not None:
                taps[tap["mlp_in"]] = a
            h = b["gelu_in"](b["fc1"](a))
            g, _ = I.shift_gelu(h, 2.0**-self.G, lam=self.lam)
            a = b["gelu_out"](g)
            if taps is not None:
                taps[tap["mlp_out"]] = a
            r = self._check_res(r + b["res2"](b["fc2"](a)), f"{b['name']} (mlp)")
        a = self.norm_out(I.i_layernorm(r[:, 0])[0] >> self.ln_shift)  # token pooling: class token
        if taps is not None:
            taps[self.head_name] = a
        return (self.head(a).double() * self.head.acc_scale).float()  # the int → float exit


def to_integer(model: nn.Module, **kw) -> IntegerViT:
    """Integer-only version of a ``ptq``-calibrated ViT (see :class:`IntegerViT` for the options:
    ``res_frac_bits=16``, ``gelu_frac_bits=12``, ``softmax_bits=16``, ``attn_frac_bits=20``,
    ``gelu_lambda=1.702`` — other values give λ-ShiftGELU). The input model is not modified."""
    return IntegerViT(model, **kw).eval()
