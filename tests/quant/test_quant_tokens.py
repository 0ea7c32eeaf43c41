"""PTQ then token reduction in PyTorch: the quantized attention stays in charge of every block."""

from __future__ import annotations

import copy

import pytest
import torch

import vitkit
from vitkit.quant import PTQConfig, quantizers, set_quant_enabled
from vitkit.tokens import PiToMeConfig, ToMeConfig

from ..conftest import make_tiny


def _calib(n=4, seed=3):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tokens", [ToMeConfig(r=[2, 0, 2, 1]), PiToMeConfig(ratio=0.8)], ids=["tome", "pitome"])
def test_quant_attention_with_merging_matches_float_when_quantizers_are_off(tokens):
    float_model = make_tiny(depth=4, img_size=64).eval()
    quant_model = copy.deepcopy(float_model)
    vitkit.apply_(quant_model, [PTQConfig(w_bits=8, a_bits=8, method="minmax", calib_images=4)], calib=_calib())
    vitkit.apply_(quant_model, [tokens])
    vitkit.apply_(float_model, [tokens])
    set_quant_enabled(quant_model, False)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(quant_model(x), float_model(x), atol=2e-5, rtol=1e-5)


def test_every_block_quantizes_its_attention_map_after_merging():
    model = make_tiny(depth=4, img_size=64).eval()
    vitkit.apply_(model, [PTQConfig(w_bits=8, a_bits=8, method="minmax", calib_images=4)], calib=_calib())
    vitkit.apply_(model, [ToMeConfig(r=[2, 0, 2, 1])])  # merging blocks and a gap after a merge
    calls = []
    for name, q in quantizers(model).items():
        if name.endswith("attn_quant"):
            q.register_forward_hook(lambda m, i, o, name=name: calls.append((name, i[0].shape[-1])))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert len(calls) == 4  # one softmax map per block, merged token counts included
    assert [n for _, n in calls] == [65, 63, 63, 61]
