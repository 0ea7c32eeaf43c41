"""PLeaS: permutation symmetries of a timm ViT (residual, heads, dims within heads, MLP neurons), re-alignment of
permuted copies, chosen MLP width, and a real merge of two models trained from different seeds."""

import pytest
import torch
import torch.nn as nn

import vitkit
from vitkit.adapters import adapter_for
from vitkit.adapters.timm_vit_keys import BLOCK_LINEARS, block_keys, permutation_axes
from vitkit.errors import ConfigError, UnsupportedModelError
from vitkit.merging.pleas import model_for, permute_state_dict

from ..conftest import make_tiny


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many small forwards: one thread is much faster than two on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sd(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def random_perms(model, seed, *, within_heads=True):
    """Random residual, head (+ within-head) and MLP permutations for ``model``."""
    g = torch.Generator().manual_seed(seed)
    dim = model.embed_dim
    res = torch.randperm(dim, generator=g)
    hidden, attn = [], []
    for blk in model.blocks:
        n_h, hd = blk.attn.num_heads, blk.attn.head_dim
        a = n_h * hd
        ph = torch.randperm(n_h, generator=g)
        pqk = [torch.randperm(hd, generator=g) if within_heads else torch.arange(hd) for _ in range(n_h)]
        pv = [torch.randperm(hd, generator=g) for _ in range(n_h)]
        q = [ph[h] * hd + pqk[h] for h in range(n_h)]
        v = torch.cat([ph[h] * hd + pv[h] for h in range(n_h)])
        attn.append((torch.cat(q + [a + t for t in q] + [2 * a + v]), v))
        hidden.append(torch.randperm(blk.mlp.fc1.out_features, generator=g))
    return res, hidden, attn


@pytest.mark.parametrize("variant", ["vit", "layerscale", "qknorm", "registers"])
def test_head_and_neuron_permutations_preserve_function(variant):
    m = make_tiny(variant, seed=5)
    res, hidden, attn = random_perms(m, 0, within_heads=variant != "qknorm")
    m2 = make_tiny(variant, seed=5)
    m2.load_state_dict(permute_state_dict(sd(m), res, hidden, attn))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), m2(x), atol=1e-5)
        assert not torch.allclose(m.blocks[0].attn.qkv.weight, m2.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("variant", ["vit", "layerscale", "qknorm", "registers", "avgpool", "distilled"])
def test_every_key_has_a_role_and_a_permutation_rule(variant):
    m = make_tiny(variant)
    roles = adapter_for(m).key_roles(m.state_dict())
    assert [r.part for r in roles.values() if r.part == "other"] == []
    assert set(permutation_axes(roles)) == set(roles)
    blocks = block_keys(roles)
    assert len(blocks) == len(m.blocks)
    assert all(set(b.linears) == set(BLOCK_LINEARS) for b in blocks)
    assert blocks[1].linears["mlp_out"] == "blocks.1.mlp.fc2"
    assert all(b.qk_norm == (variant == "qknorm") for b in blocks)
    want_ls = {"attn_out": "blocks.0.ls1.gamma", "mlp_out": "blocks.0.ls2.gamma"} if variant == "layerscale" else {}
    assert blocks[0].layer_scale == want_ls
    assert roles["head.weight"].part == "head" and roles["head.weight"].block is None


def test_pleas_refuses_what_it_cannot_permute():
    a, b = make_tiny("vit", seed=6), make_tiny("vit", seed=7)
    calib = torch.randn(8, 3, 32, 32)
    extra = [{**sd(m), "blocks.0.mlp.scale.weight": torch.ones(4)} for m in (a, b)]
    with pytest.raises(UnsupportedModelError, match="blocks.0.mlp.scale.weight"):
        vitkit.merge(extra, vitkit.PLeaSConfig(), model=a, calib=calib)
    lin = nn.Linear(4, 4)
    with pytest.raises(UnsupportedModelError, match="Linear"):
        vitkit.merge([sd(lin), sd(lin)], vitkit.PLeaSConfig(), model=lin, calib=torch.randn(4, 4))


def test_pleas_realigns_permuted_copies_of_one_model():
    m = make_tiny("vit", seed=5)
    s = sd(m)
    copies = []
    for seed in (1, 2):
        res, hidden, attn = random_perms(m, seed)
        copies.append(permute_state_dict(s, res, hidden, attn))
    calib = torch.randn(32, 3, 32, 32)
    info = {}
    out = vitkit.merge([s, *copies], vitkit.PLeaSConfig(refit=False), model=m, calib=calib, info=info)
    assert all(torch.allclose(out[k], s[k], atol=1e-5) for k in s), "heads/neurons were not re-aligned"
    assert all(sorted(h) == [0, 1, 2] for per_model in info["head_permutations"] for h in per_model)
    # the least-squares refit of an exact merge keeps the function (up to the ridge)
    calib = torch.randn(128, 3, 32, 32)
    out = vitkit.merge([s, copies[0]], vitkit.PLeaSConfig(), model=m, calib=calib)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        want = m(x)
        assert (model_for(m, out)(x) - want).norm() < 0.05 * want.norm()


def test_pleas_width_option_shapes_and_split_units():
    a, b = make_tiny("vit", seed=6), make_tiny("vit", seed=7)
    calib = torch.randn(32, 3, 32, 32)
    hid = a.blocks[0].mlp.fc1.out_features  # 192
    for width in (hid // 2, hid, 2 * hid):
        info = {}
        out = vitkit.merge([sd(a), sd(b)], vitkit.PLeaSConfig(mlp_width=width), model=a, calib=calib, info=info)
        assert info["mlp_width"] == [width] * len(a.blocks)
        assert out["blocks.1.mlp.fc1.weight"].shape == (width, a.embed_dim)
        assert out["blocks.1.mlp.fc2.weight"].shape == (a.embed_dim, width)
        assert out["blocks.1.attn.qkv.weight"].shape == a.blocks[1].attn.qkv.weight.shape
        merged = model_for(a, out)
        assert merged.blocks[2].mlp.fc1.out_features == width
        assert torch.isfinite(merged(calib[:2])).all()
    # at N·width with no refit every neuron is kept separately: the merged MLP is exactly the mean of the two
    # (aligned) MLPs on the same input
    info = {}
    out = vitkit.merge(
        [sd(a), sd(b)], vitkit.PLeaSConfig(mlp_width=2 * hid, refit=False), model=a, calib=calib, info=info
    )
    res = torch.as_tensor(info["residual_permutations"][0])
    inv = torch.argsort(res)
    z = torch.randn(5, a.embed_dim)
    with torch.no_grad():
        want = 0.5 * a.blocks[0].mlp(z) + 0.5 * b.blocks[0].mlp(z[:, inv])[:, res]
        got = model_for(a, out).blocks[0].mlp(z)
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ConfigError, match="exceeds"):
        vitkit.merge([sd(a), sd(b)], vitkit.PLeaSConfig(mlp_width=2 * hid + 1), model=a, calib=calib)
    with pytest.raises(ConfigError, match="at least 2"):
        vitkit.merge([sd(a)], vitkit.PLeaSConfig(), model=a, calib=calib)


@pytest.mark.slow
def test_pleas_beats_average_for_models_trained_from_different_seeds():
    from vitkit.data import load_dataset
    from vitkit.training import TrainConfig, train_classifier

    arch = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=10)

    def build(seed):
        torch.manual_seed(seed)
        return vitkit.load("vit_tiny_patch16_224", **arch)

    train = load_dataset("digits", split="train", model=build(0))
    test = load_dataset("digits", split="test", model=build(0))
    models = []
    for seed in (0, 1):
        m = build(seed)
        cfg = TrainConfig(epochs=5, batch_size=32, lr=3e-3, shift=0.0, label_smoothing=0.0, seed=seed, threads=1)
        train_classifier(m, train, cfg)
        models.append(m.eval())

    def acc(m):
        with torch.no_grad():
            return float((m.eval()(test.transform(test.images)).argmax(-1) == test.labels).float().mean())

    sds = [sd(m) for m in models]
    naive = build(0)
    naive.load_state_dict(vitkit.merge(sds, vitkit.AverageConfig()))
    calib = train.transform(train.images[:256])  # unlabeled
    pleas = model_for(models[0], vitkit.merge(sds, vitkit.PLeaSConfig(), model=models[0], calib=calib))
    wide = model_for(models[0], vitkit.merge(sds, vitkit.PLeaSConfig(mlp_width=96), model=models[0], calib=calib))
    worst = min(acc(m) for m in models)
    assert acc(pleas) > acc(naive) + 0.15
    assert acc(pleas) > 0.8 * worst and acc(wide) > acc(naive) + 0.15
