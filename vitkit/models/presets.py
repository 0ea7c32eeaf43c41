"""Named model presets: a timm architecture plus the kwargs that shape it.

``vitkit_mnist_tiny`` is the reference model: a plain timm ViT (cls token, pre-norm blocks, fused
attention) at MNIST's native 28×28 with patch 4 (49 patches + cls = 50 tokens, enough for token
reduction to matter), sized so that it trains to ≥ 97 % on MNIST-5k in minutes on two CPU cores.
Chosen by measurement on 2 cores (see BENCHMARKS.md): width 96 / depth 6 / MLP ratio 2 with AdamW lr 1e-3,
batch 32, 36 epochs → 98.6 % test in 278 s; batch 64 / lr 2e-3 runs of the same model landed at 95.6–97.8 %;
MLP ratio 4 at 32×32 and patch 7 trained slower or worse.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "vitkit_mnist_tiny": {
        "arch": "vit_tiny_patch16_224",
        "kwargs": {
            "img_size": 28,
            "patch_size": 4,
            "in_chans": 1,
            "num_classes": 10,
            "embed_dim": 96,
            "depth": 6,
            "num_heads": 3,
            "mlp_ratio": 2.0,
            "pretrained_cfg_overlay": {
                "input_size": [1, 28, 28],
                "mean": [0.5],
                "std": [0.5],
                "num_classes": 10,
                "crop_pct": 1.0,
                "interpolation": "bilinear",
            },
        },
        "doc": "reference ViT for MNIST-5k: 28x28, patch 4 (49 patches + cls), width 96, depth 6, 3 heads, MLP x2",
    },
}
