"""An offline multi-task merging testbed mirroring the 8-task CLIP-ViT benchmark, on bundled data only.

A tiny timm ViT (28×28 input, patch 7, width 96, depth 6, avg-pool, no head) is "pretrained" on upright MNIST,
then fine-tuned once per derived task — rot90, rot180, invert, hflip, patchperm (fixed shuffle of the 16 patches),
digits8x8 (scikit-learn digits upscaled), noise, transpose — each with its own *fixed random orthonormal head*,
frozen during fine-tuning like CLIP's text heads, so only backbones are merged and every merge is scored with
each task's head. Deterministic for a given seed and thread count; no downloads.

A benchmark fixture, not part of the library: ``benchmarks/merge.py`` and ``tests/merging/test_testbed.py`` use it
(``from benchmarks import merge_testbed`` with the repository root on ``sys.path``).

```python
bed = build_testbed(TestbedConfig())            # ~3 CPU minutes (quick_config(): 4 tasks, ~1 minute)
bed.average_accuracy(vitkit.merge(list(bed.finetuned.values()), TaskArithmeticConfig(0.3), base=bed.base))
```
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitkit.data import TensorImageDataset, bundled, input_spec
from vitkit.training import TrainConfig, train_classifier

_log = logging.getLogger(__name__)

TASKS = ("rot90", "rot180", "invert", "hflip", "patchperm", "digits8x8", "noise", "transpose")
QUICK_TASKS = ("rot90", "invert", "patchperm", "digits8x8")
ARCH = dict(
    img_size=28,
    patch_size=7,
    in_chans=1,
    embed_dim=96,
    depth=6,
    num_heads=3,
    mlp_ratio=2,
    class_token=False,
    global_pool="avg",
    num_classes=0,
)


@dataclass(frozen=True)
class TestbedConfig:
    tasks: tuple[str, ...] = TASKS
    pretrain_epochs: int = 30
    finetune_epochs: int = 6
    n_pretrain: int = 2000
    n_task_train: int = 1800
    n_val: int = 200
    n_test: int = 1000
    pretrain_lr: float = 2e-3
    finetune_lr: float = 3e-4
    head_scale: float = 2.0
    seed: int = 0
    threads: int = 2


def quick_config() -> TestbedConfig:
    """The CI-sized testbed: 4 tasks, shorter training (about a minute on 2 cores)."""
    return TestbedConfig(tasks=QUICK_TASKS, pretrain_epochs=15, finetune_epochs=4, n_task_train=1200, n_test=500)


def make_backbone(seed: int = 0) -> nn.Module:
    from vitkit.models import load

    torch.manual_seed(seed)
    return load("vit_tiny_patch16_224", **ARCH)


class HeadModel(nn.Module):
    """backbone → fixed linear head (the head is a frozen buffer-like parameter)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def random_head(dim: int, classes: int, seed: int, scale: float) -> nn.Linear:
    g = torch.Generator().manual_seed(10_000 + seed)
    q, _ = torch.linalg.qr(torch.randn(dim, classes, generator=g))  # [dim, classes] orthonormal columns
    head = nn.Linear(dim, classes)
    with torch.no_grad():
        head.weight.copy_(scale * q.T)
        head.bias.zero_()
    head.requires_grad_(False)
    return head


def _patch_perm(x: torch.Tensor, perm: torch.Tensor, p: int = 7) -> torch.Tensor:
    n, c, h, w = x.shape
    g = h // p
    patches = x.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c, p, p)  # [N, 16, c, p, p]
    patches = patches[:, perm]
    return patches.reshape(n, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def task_images(task: str, mnist: torch.Tensor, digits: torch.Tensor, seed: int) -> torch.Tensor:
    """Derived task images [N, 1, 28, 28] in [0, 1] (``digits`` [N, 1, 8, 8] only for ``digits8x8``)."""
    if task == "rot90":
        return torch.rot90(mnist, 1, (2, 3)).contiguous()
    if task == "rot180":
        return torch.rot90(mnist, 2, (2, 3)).contiguous()
    if task == "invert":
        return 1.0 - mnist
    if task == "hflip":
        return mnist.flip(3).contiguous()
    if task == "transpose":
        return mnist.transpose(2, 3).contiguous()
    if task == "patchperm":
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(seed + 7))
        return _patch_perm(mnist, perm)
    if task == "noise":
        g = torch.Generator().manual_seed(seed + 11 + mnist.shape[0])
        return (mnist + 0.35 * torch.randn(mnist.shape, generator=g)).clamp(0, 1)
    if task == "digits8x8":
        up = F.interpolate(digits, size=(20, 20), mode="bilinear", align_corners=False)  # [N, 1, 20, 20]
        return F.pad(up, (4, 4, 4, 4))
    raise ValueError(f"unknown testbed task {task!r}; tasks: {TASKS}")


@dataclass
class Testbed:
    cfg: TestbedConfig
    base: dict[str, torch.Tensor]
    finetuned: dict[str, dict[str, torch.Tensor]]
    heads: dict[str, nn.Linear]
    train: dict[str, TensorImageDataset]
    val: dict[str, TensorImageDataset]
    test: dict[str, TensorImageDataset]
    seconds: dict[str, float] = field(default_factory=dict)
    _model: nn.Module | None = None

    @property
    def model(self) -> nn.Module:
        """A backbone template (weights arbitrary) to load merged state dicts into."""
        if self._model is None:
            self._model = make_backbone()
        return self._model

    def accuracy(self, state: dict[str, torch.Tensor], task: str, split: str = "test") -> float:
        from vitkit.models.load import load_state_dict_strict

        model = self.model
        load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, source="merged backbone")
        data = (self.test if split == "test" else self.val)[task]
        model.eval()
        with torch.inference_mode():
            logits = self.heads[task](model(data.transform(data.images)))
        return float((logits.argmax(-1) == data.labels).float().mean())

    def accuracies(self, state: dict[str, torch.Tensor], split: str = "test") -> dict[str, float]:
        return {t: self.accuracy(state, t, split) for t in self.cfg.tasks}

    def average_accuracy(self, state: dict[str, torch.Tensor], split: str = "test") -> float:
        accs = self.accuracies(state, split)
        return sum(accs.values()) / len(accs)

    def individual_accuracy(self, split: str = "test") -> float:
        return sum(self.accuracy(self.finetuned[t], t, split) for t in self.cfg.tasks) / len(self.cfg.tasks)

    def head_model(self, task: str) -> HeadModel:
        return HeadModel(self.model, self.heads[task])

    def objective(self, n: int = 64, split: str = "val"):
        """A calibration loss for FW-Merging: Σ_t CE(head_t(f(x_t))) over ``n`` images per task."""
        sets = self.val if split == "val" else self.train
        batches = {t: (sets[t].transform(sets[t].images[:n]), sets[t].labels[:n]) for t in self.cfg.tasks}

        def loss(model: nn.Module) -> torch.Tensor:
            return sum(F.cross_entropy(self.heads[t](model(x)), y) for t, (x, y) in batches.items()) / len(batches)

        return loss

    def calib(self, n: int = 64) -> list[torch.Tensor]:
        """One batch of training inputs per task, in task order (RegMean's per-model data)."""
        return [self.train[t].transform(self.train[t].images[:n]) for t in self.cfg.tasks]


def _cache_name(cfg: TestbedConfig) -> str:
    import hashlib
    import json
    from dataclasses import asdict

    return "testbed-" + hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def build_testbed(cfg: TestbedConfig = TestbedConfig(), *, progress=None, cache_dir=None) -> Testbed:
    """Pretrain, then fine-tune one backbone per task. Deterministic for ``cfg.seed`` and ``cfg.threads``.

    ``cache_dir``: the trained weights are saved there (safetensors, keyed by a hash of ``cfg``) and reused on
    the next call with the same config; data splits and heads are always rebuilt (they are deterministic).
    """
    from pathlib import Path

    from safetensors.torch import load_file

    cached = Path(cache_dir) / f"{_cache_name(cfg)}.safetensors" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        flat = load_file(str(cached))
        base = {k[5:]: v for k, v in flat.items() if k.startswith("base/")}
        fts = {t: {k[len(t) + 4 :]: v for k, v in flat.items() if k.startswith(f"ft/{t}/")} for t in cfg.tasks}
        bed = _build(cfg, progress, trained=(base, fts))
        bed.seconds.update(pretrain=float("nan"), finetune=float("nan"))
        return bed
    bed = _build(cfg, progress)
    if cached is not None:
        from safetensors.torch import save

        from vitkit._io import atomic_write_bytes

        flat = {f"base/{k}": v.contiguous() for k, v in bed.base.items()}
        for t, sd in bed.finetuned.items():
            flat.update({f"ft/{t}/{k}": v.contiguous() for k, v in sd.items()})
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, save(flat))
    return bed


def _build(cfg: TestbedConfig, progress=None, trained=None) -> Testbed:
    torch.set_num_threads(cfg.threads)
    spec = input_spec(None)  # 1×28×28, mean 0.5, std 0.5
    mx, my = bundled.split("mnist5k", "all")
    dx, dy = bundled.split("digits", "all")
    a, b = cfg.n_pretrain, cfg.n_pretrain + cfg.n_task_train
    c, d = 4000, 4000 + cfg.n_test
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    backbone = make_backbone(cfg.seed)
    if trained is None:
        pre = HeadModel(backbone, nn.Linear(ARCH["embed_dim"], 10))
        pre_set = TensorImageDataset(mx[:a], my[:a], spec, name="testbed/pretrain")
        train_classifier(
            pre,
            pre_set,
            TrainConfig(epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, weight_decay=0.05, seed=cfg.seed),
        )
    else:
        backbone.load_state_dict(trained[0])
    base = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    seconds["pretrain"] = time.perf_counter() - t0
    train, val, test, heads, finetuned = {}, {}, {}, {}, {}
    t0 = time.perf_counter()
    for i, task in enumerate(cfg.tasks):
        if task == "digits8x8":
            n_val = cfg.n_val
            parts = {"train": (dx[:1000], dy[:1000]), "val": (dx[1000 : 1000 + n_val], dy[1000 : 1000 + n_val])}
            parts["test"] = (dx[1000 + n_val :], dy[1000 + n_val :])
            imgs = {s: (task_images(task, mx[:0], x, cfg.seed), y) for s, (x, y) in parts.items()}
        else:
            parts = {"train": (a, b), "val": (3800, 3800 + cfg.n_val), "test": (c, d)}
            imgs = {s: (task_images(task, mx[lo:hi], dx[:0], cfg.seed), my[lo:hi]) for s, (lo, hi) in parts.items()}
        train[task] = TensorImageDataset(*imgs["train"], spec, name=f"{task}/train")
        val[task] = TensorImageDataset(*imgs["val"], spec, name=f"{task}/val")
        test[task] = TensorImageDataset(*imgs["test"], spec, name=f"{task}/test")
        heads[task] = random_head(ARCH["embed_dim"], 10, i, cfg.head_scale)
        if trained is not None:
            finetuned[task] = trained[1][task]
            continue
        model = HeadModel(copy.deepcopy(backbone), heads[task])
        train_classifier(
            model,
            train[task],
            TrainConfig(
                epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, weight_decay=0.0, warmup_epochs=0.5, seed=cfg.seed + i
            ),
        )
        finetuned[task] = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
        if progress:
            progress(i + 1, len(cfg.tasks), task)
    seconds["finetune"] = time.perf_counter() - t0
    return Testbed(cfg, base, finetuned, heads, train, val, test, seconds)
