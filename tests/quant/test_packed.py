"""Packed integer weights in ptq artifacts: int8 one per byte, int4 two per byte, strict reload, equal outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.quant import PTQConfig
from vitkit.quant.modules import pack_codes, unpack_codes

from ..conftest import make_tiny


def _x(n=8):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_pack_roundtrip(bits):
    shape = torch.Size([7, 5])  # odd numel: int4 padding
    codes = torch.randint(0, 2**bits, shape, generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (35 if bits > 4 else 18)
    assert torch.equal(unpack_codes(packed, bits, shape), codes)


@pytest.mark.parametrize("w_bits", [8, 4])
def test_artifact_stores_packed_weights_and_reloads_equal(tmp_path, w_bits):
    m = make_tiny("layerscale")
    vitkit.save_artifact(m, None, None, tmp_path / "fp32")
    layer_bits = {"blocks.0.mlp.fc1": 2}  # mixed precision: one 2-bit layer
    vitkit.apply_(m, PTQConfig(w_bits=w_bits, a_bits=8, calib_images=8, layer_bits=layer_bits), calib=_x())
    out = vitkit.save_artifact(m, None, None, tmp_path / "q")
    state = load_file(str(out / "model.safetensors"))
    assert state["blocks.0.attn.qkv.weight"].dtype == torch.uint8  # same name, integer codes
    n = m.blocks[0].attn.qkv.weight.numel()
    assert state["blocks.0.attn.qkv.weight"].numel() == (n if w_bits == 8 else (n + 1) // 2)
    assert state["blocks.0.mlp.fc1.weight"].numel() == (m.blocks[0].mlp.fc1.weight.numel() + 1) // 2
    assert "blocks.0.norm1.weight" in state  # everything else stays float
    back = vitkit.load(out)
    x = _x(6)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))
    fp32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < (0.45 if w_bits == 8 else 0.35) * fp32


def test_packed_artifact_with_wrong_shapes_refused(tmp_path):
    from safetensors.torch import save_file

    from vitkit.errors import CheckpointError

    m = make_tiny("vit")
    vitkit.apply_(m, PTQConfig(calib_images=8), calib=_x())
    out = vitkit.save_artifact(m, None, None, tmp_path / "q")
    state = load_file(str(out / "model.safetensors"))
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:-1]
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="qkv.weight"):
        vitkit.load(out)
