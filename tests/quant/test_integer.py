"""vitkit.quant.to_integer: the W8A8 ptq model run on integer tensors (I-ViT ops), against its fake-quant twin."""

from __future__ import annotations

import copy

import pytest
import torch

import vitkit
from vitkit.errors import DataError, UnsupportedModelError
from vitkit.ops import quant as Q
from vitkit.quant import PTQConfig, to_integer

from ..conftest import make_tiny


def _x(n=8, seed=5):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ptq(variant="vit", **cfg):
    m = make_tiny(variant)
    vitkit.apply_(m, PTQConfig(calib_images=8, **dict(dict(w_bits=8, a_bits=8), **cfg)), calib=_x())
    return m


def _fake_codes(model, x):
    """Integer codes each linear's input quantizer produces in the fake-quant model."""
    codes, hooks = {}, []
    for name, mod in model.named_modules():
        aq = getattr(mod, "a_quant", None)
        if aq is not None and hasattr(aq, "zero_point"):

            def hook(q, args, out, name=name):
                codes[name] = Q.quantize(args[0], q.scale, q.zero_point, q.bits, symmetric=q.symmetric).long()

            hooks.append(aq.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return codes


@pytest.mark.parametrize("variant", ["vit", "layerscale"])
def test_integer_codes_match_fake_quant_before_the_first_approximation(variant):
    m = _ptq(variant)
    x = _x(4, seed=9)
    fake = _fake_codes(m, x)
    taps = {}
    iv = to_integer(m)
    iv(x, taps=taps)
    pe = fake["patch_embed.proj"]  # [B,C,H,W] codes → the patch layout of the integer GEMM
    B, C, H, W = pe.shape
    pe = pe.reshape(B, C, H // 8, 8, W // 8, 8).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * 64)
    assert torch.equal(taps["patch_embed.proj"], pe)
    # integer GEMM + dyadic requant + I-LayerNorm + affine: within 1 LSB of the fake-quant codes
    assert (taps["blocks.0.attn.qkv"] - fake["blocks.0.attn.qkv"]).abs().max() <= 1


def test_integer_logits_close_to_fake_quant_and_input_untouched():
    m = _ptq("layerscale")
    before = copy.deepcopy(m.state_dict())
    iv = to_integer(m)
    x = _x(16, seed=11)
    with torch.no_grad():
        ref = m(x)
    out = iv(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.97  # Shiftmax/ShiftGELU approximations on a random tiny model
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


def test_minmax_uniform_softmax_quantizer_supported():
    m = _ptq(method="minmax")
    with torch.no_grad():
        ref = m(_x(8, seed=2))
    out = to_integer(m)(_x(8, seed=2))
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.95


def test_bad_input_named():
    with pytest.raises(UnsupportedModelError, match="ptq-calibrated"):
        to_integer(make_tiny("vit"))
    with pytest.raises(UnsupportedModelError, match="TwinUniform"):
        to_integer(_ptq(method="ptq4vit"))
    with pytest.raises(UnsupportedModelError, match="qk_norm"):
        to_integer(_ptq("qknorm"))
    iv = to_integer(_ptq())
    with pytest.raises(DataError, match="expects"):
        iv(torch.randn(2, 3, 16, 16))
    bad = _x(2)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        iv(bad)


@pytest.mark.slow
def test_reference_model_integer_agrees_with_fake_quant():
    """Reference model (98.6 % on mnist5k), W8A8 RepQ-ViT, 500 test images: integer vs fake-quant top-1."""
    from vitkit.demo import reference_artifact

    ref = vitkit.load(reference_artifact()).eval()
    train = vitkit.data.load_dataset("mnist5k", "train", model=ref)
    test = vitkit.data.load_dataset("mnist5k", "test", model=ref)
    vitkit.apply_(ref, PTQConfig(w_bits=8, a_bits=8, method="repq"), calib=vitkit.data.calibration_set(train, 32))
    xs = torch.stack([test[i][0] for i in range(500)])
    iv = to_integer(ref)
    with torch.no_grad():
        fq = torch.cat([ref(xs[i : i + 125]) for i in range(0, 500, 125)])
    it = torch.cat([iv(xs[i : i + 125]) for i in range(0, 500, 125)])
    agree = (it.argmax(1) == fq.argmax(1)).float().mean().item()
    assert agree >= 0.99  # measured 99.8 %
