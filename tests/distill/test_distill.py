"""Distillation trainer: losses, exact resume, cached logits, prune → distill recipe step."""

import copy

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.data import load_dataset
from vitkit.distill import DistillConfig, distill
from vitkit.distill import losses as L
from vitkit.errors import CheckpointError, ConfigError
from vitkit.prune import PruneConfig
from vitkit.training import TrainConfig, fit

from ..conftest import make_tiny


@pytest.fixture(scope="module")
def train_set():
    return load_dataset("mnist5k", "train", model=make_tiny("vit"))


def test_losses():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert L.soft_kd(t, t, 2.0).abs() < 1e-6 and L.soft_kd(s, t, 2.0) > 0
    assert torch.isclose(L.hard_kd(s, t), F.cross_entropy(s, t.argmax(-1)))
    y = torch.tensor([0, 1, 2, 3])
    assert torch.isfinite(L.nkd(s, t, y)) and L.nkd(s, t, y) > 0
    probs = F.softmax(t, -1)
    v, i = probs.topk(3, -1)
    dense = L.dense_from_topk(v, i, 10)
    assert torch.allclose(dense.sum(-1), torch.ones(4)) and torch.allclose(dense.gather(1, i), v)


def _weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_continues_exactly(train_set, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=3)
    full = make_tiny("vit")
    fit(full, train_set, cfg, limit=48, checkpoint_dir=str(tmp_path / "a"), checkpoint_every=2)
    part = make_tiny("vit")

    def stop(s):
        if s["step"] == 4:
            raise _Stop

    with pytest.raises(_Stop):
        fit(part, train_set, cfg, limit=48, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=2, progress=stop)
    resumed = make_tiny("vit", seed=9)  # different init: everything must come from the checkpoint
    res = fit(resumed, train_set, cfg, limit=48, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=2, resume=True)
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(res.history) == 2


def test_resume_missing_or_corrupt_checkpoint(train_set, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16)
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        fit(make_tiny("vit"), train_set, cfg, limit=16, checkpoint_dir=str(tmp_path), resume=True)
    fit(make_tiny("vit"), train_set, cfg, limit=16, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    (tmp_path / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        fit(make_tiny("vit"), train_set, cfg, limit=16, checkpoint_dir=str(tmp_path), resume=True)


def _kl_to(teacher, student, x):
    with torch.no_grad():
        return float(L.soft_kd(student(x), teacher(x)))


@pytest.mark.slow
def test_prune_then_distill_recovers_agreement(train_set):
    model = make_tiny("vit")
    x, _ = next(iter(torch.utils.data.DataLoader(train_set, batch_size=64)))
    teacher = copy.deepcopy(model)
    vitkit.apply_(model, PruneConfig(ratio=0.4, importance="l1"))
    before = _kl_to(teacher, model, x)
    rep = vitkit.apply_(model, DistillConfig(limit=64, train=dict(batch_size=32, epochs=2, lr=1e-3)))
    assert rep.steps[-1].name == "distill" and rep.steps[-1].kind == "weights"
    assert _kl_to(teacher, model, x) < before


def test_original_teacher_needs_prune():
    with pytest.raises(ConfigError, match="prune step"):
        vitkit.apply_(make_tiny("vit"), DistillConfig(limit=16))


def test_cached_logits_match_live_teacher(train_set, tmp_path):
    teacher = make_tiny("vit", seed=1)
    cfg = DistillConfig(limit=32, temperature=2.0, train=dict(batch_size=16, lr=1e-3))
    live = make_tiny("vit")
    distill(live, teacher, train_set, cfg)
    cached_cfg = cfg.replace(cache_dir=str(tmp_path), topk=10)  # k = C: the cache holds the full distribution
    cached = make_tiny("vit")
    distill(cached, teacher, train_set, cached_cfg)
    assert (tmp_path / "epoch_0.safetensors").is_file()
    again = make_tiny("vit")
    distill(again, None, train_set, cached_cfg)  # no teacher: everything from the cache
    a, b, c = _weights(live), _weights(cached), _weights(again)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-3, rtol=1e-2)
        assert torch.equal(b[k], c[k])


@pytest.mark.parametrize("loss", ["hard", "nkd"])
def test_deit_distillation_token_and_nkd(train_set, loss):
    student = make_tiny("distilled")
    teacher = make_tiny("vit", seed=2)
    before = _weights(student)
    out = distill(student, teacher, train_set, DistillConfig(limit=32, loss=loss, alpha=0.5, train=dict(batch_size=16)))
    assert out["images_seen"] == 32 and student.distilled_training is False
    after = _weights(student)
    assert not torch.equal(before["head_dist.weight"], after["head_dist.weight"])


def test_feature_distillation(train_set):
    student, teacher = make_tiny("vit"), make_tiny("vit", seed=4)
    out = distill(student, teacher, train_set, DistillConfig(limit=32, feature_weight=1.0, train=dict(batch_size=16)))
    assert out["final_loss"] > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": "mse"},
        {"alpha": 1.5},
        {"train": {"epochs": 0}},
        {"train": {"lr": 0}},
        {"train": {"epochs": 1, "oops": 1}},
        {"resume": True},
        {"generic_epochs": -1},
    ],
)
def test_bad_distill_config(kwargs):
    with pytest.raises(ConfigError):
        DistillConfig(**kwargs)


def test_timm_optimizer_by_name(train_set):
    fit(make_tiny("vit"), train_set, TrainConfig(epochs=1, batch_size=16), optimizer="adan", limit=16)
    with pytest.raises(ConfigError, match="optimizer"):
        fit(make_tiny("vit"), train_set, TrainConfig(epochs=1, batch_size=16), optimizer="nope", limit=16)


def test_distill_leaves_the_teacher_trainable():
    """Regression: distill() used to flip the teacher's requires_grad, so a later deepcopy could not train."""
    teacher = make_tiny()
    student = copy.deepcopy(teacher)
    data = load_dataset("digits", "train", model=teacher)
    distill(student, teacher, data, DistillConfig(limit=32, train=dict(epochs=1, batch_size=16)))
    assert all(p.requires_grad for p in teacher.parameters())


def _feature_mse(student, teacher, x):
    with torch.no_grad():
        return float(F.mse_loss(student.forward_features(x), teacher.forward_features(x)))


def test_g2sd_generic_then_specific_stage_and_progress(train_set, tmp_path):
    from vitkit.distill.trainer import progress_to

    teacher = make_tiny("vit")
    student = copy.deepcopy(teacher)
    vitkit.apply_(student, PruneConfig(ratio=0.4, importance="l1"))
    x = torch.stack([train_set[i][0] for i in range(32)])
    before = _feature_mse(student, teacher, x)
    seen = []
    cfg = DistillConfig(generic_epochs=2, limit=32, train=dict(epochs=1, batch_size=16, lr=1e-3))
    with progress_to(seen.append):
        out = distill(student, teacher, train_set, cfg.replace(checkpoint_dir=str(tmp_path), checkpoint_every=1))
    assert [s["stage"] for s in seen] == ["generic"] * 4 + ["specific"] * 2
    assert out["images_seen"] == 96 and out["generic_seconds"] > 0
    assert (tmp_path / "generic" / "state.json").is_file() and (tmp_path / "specific" / "state.json").is_file()
    generic = [s["loss"] for s in seen if s["stage"] == "generic"]
    assert all(0 < v < 10 * before + 1 for v in generic)  # the generic loss is a feature MSE, not a logit KD
    quiet = copy.deepcopy(teacher)
    vitkit.apply_(quiet, PruneConfig(ratio=0.4, importance="l1"))
    distill(quiet, teacher, train_set, cfg.replace(generic_epochs=0))
    assert len(seen) == 6  # outside progress_to the library reports nothing
    with pytest.raises(ConfigError, match="live teacher"):
        distill(quiet, None, train_set, cfg.replace(cache_dir=str(tmp_path / "cache")))
