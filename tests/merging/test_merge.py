"""Properties of vitkit.merge and the registered merge methods on tiny random-init ViTs (no training)."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import vitkit
from vitkit.errors import CheckpointError, ConfigError
from vitkit.merging import OPCMMerger, list_merge_methods

from ..conftest import make_tiny

DATA_FREE = {
    "average": vitkit.AverageConfig(),
    "task_arithmetic": vitkit.TaskArithmeticConfig(scaling=0.3),
    "ties": vitkit.TIESConfig(density=0.2),
    "dare": vitkit.DAREConfig(drop=0.5),
    "opcm": vitkit.OPCMConfig(),
}


def sd(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def finetunes(n, scale=0.02, seed=0):
    base = sd(make_tiny("vit", seed=seed))
    g = torch.Generator().manual_seed(seed + 1)
    return base, [{k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]


def test_registry_lists_every_config():
    names = {m.name for m in list_merge_methods()}
    assert {
        "average",
        "greedy_soup",
        "task_arithmetic",
        "ties",
        "dare",
        "opcm",
        "fw_merging",
        "pleas",
        "regmean",
    } <= names
    for m in list_merge_methods():
        cfg = m.config_cls()
        assert type(cfg).from_dict(cfg.to_dict()) == cfg


#: settings at which merging N identical fine-tunes must return that fine-tune (TIES trimming and DARE
#: dropping change a single model by design, so they run at density 1 / drop 0 here).
IDENTITY = {
    "average": vitkit.AverageConfig(),
    "task_arithmetic": vitkit.TaskArithmeticConfig(scaling=1 / 3),
    "ties": vitkit.TIESConfig(density=1.0, scaling=1.0),
    "dare": vitkit.DAREConfig(drop=0.0, scaling=1 / 3),
}
# OPCM is not in IDENTITY by design of the paper: only 2-D weights are projected, so a repeated model's biases and
# embeddings add up (N = λ·D + τ) while its linear weights are projected away, and the rescaling then mixes them.


def test_opcm_of_one_model_is_that_model():
    base, (ft,) = finetunes(1)
    out = vitkit.merge([ft], vitkit.OPCMConfig(), base=base)
    assert all(torch.equal(out[k], ft[k]) for k in ft)


@pytest.mark.parametrize("name", list(IDENTITY))
def test_identical_models_return_the_model(name):
    base, (ft,) = finetunes(1)
    out = vitkit.merge([ft, ft, ft], IDENTITY[name], base=base)
    assert all(torch.allclose(out[k], ft[k], atol=1e-6) for k in ft)


def test_merging_base_copies_returns_base():
    base, _ = finetunes(0)
    for cfg in DATA_FREE.values():
        out = vitkit.merge([base, base], cfg, base=base)
        assert all(torch.allclose(out[k], base[k], atol=1e-6) for k in base)


def test_weight_one_returns_that_model_exactly():
    base, fts = finetunes(3)
    out = vitkit.merge(fts, vitkit.AverageConfig(weights=[0, 1, 0]))
    assert all(torch.equal(out[k], fts[1][k]) for k in base)
    ta = vitkit.merge(fts, vitkit.TaskArithmeticConfig(scaling=1.0, weights=[0, 1, 0]), base=base)
    assert all(torch.allclose(ta[k], fts[1][k], atol=1e-6) for k in base)


def test_inputs_never_modified():
    base, fts = finetunes(2)
    copies = [{k: v.clone() for k, v in s.items()} for s in [base] + fts]
    for cfg in DATA_FREE.values():
        vitkit.merge(fts, cfg, base=base)
    for orig, now in zip(copies, [base] + fts, strict=True):
        assert all(torch.equal(orig[k], now[k]) for k in orig)


@pytest.mark.parametrize("name", list(DATA_FREE))
def test_streaming_equals_in_memory(tmp_path, name):
    base, fts = finetunes(3)
    paths = []
    for i, s in enumerate(fts):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file(s, str(paths[-1]))
    save_file(base, str(tmp_path / "base.safetensors"))
    a = vitkit.merge(fts, DATA_FREE[name], base=base)
    b = vitkit.merge(paths, DATA_FREE[name], base=tmp_path / "base.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_artifact_dirs_are_inputs(tmp_path):
    m1, m2 = make_tiny("vit", seed=1), make_tiny("vit", seed=2)
    vitkit.save_artifact(m1, None, None, tmp_path / "a")
    vitkit.save_artifact(m2, None, None, tmp_path / "b")
    out = vitkit.merge([tmp_path / "a", tmp_path / "b"], vitkit.AverageConfig())
    assert torch.allclose(out["pos_embed"], (m1.pos_embed + m2.pos_embed).detach() / 2)


def test_targets_filter_copies_the_rest_from_base():
    base, fts = finetunes(2)
    out = vitkit.merge(fts, vitkit.TaskArithmeticConfig(scaling=0.5, targets=("blocks.*",)), base=base)
    assert torch.equal(out["pos_embed"], base["pos_embed"])
    assert not torch.equal(out["blocks.0.mlp.fc1.weight"], base["blocks.0.mlp.fc1.weight"])
    with pytest.raises(ConfigError, match="matches no tensors"):
        vitkit.merge(fts, vitkit.AverageConfig(targets=("nothing.*",)))


def test_opcm_merges_pos_embed_and_is_sequential():
    base, fts = finetunes(4)
    merger = OPCMMerger(base, vitkit.OPCMConfig(alpha=0.5))
    for f in fts:
        merger.add(f)
    out = merger.state_dict()
    assert not torch.equal(out["pos_embed"], fts[0]["pos_embed"])  # the leaf-module pitfall would leave model 0's
    assert not torch.equal(out["cls_token"], fts[0]["cls_token"])
    ref = vitkit.merge(fts, vitkit.OPCMConfig(alpha=0.5), base=base)
    assert all(torch.equal(ref[k], out[k]) for k in out)
    # adaptive scaling: ‖M − θ0‖ equals the mean task-vector norm
    norm = sum(float((out[k] - base[k]).double().square().sum()) for k in base) ** 0.5
    assert norm == pytest.approx(sum(merger.norms) / len(merger.norms), rel=1e-4)


def test_mixed_dtypes_upcast():
    base, fts = finetunes(2)
    half = {k: v.to(torch.bfloat16) for k, v in fts[1].items()}
    out = vitkit.merge([fts[0], half], vitkit.AverageConfig())
    assert out["pos_embed"].dtype == torch.float32


# -- bad input ----------------------------------------------------------------------------------------------
def test_empty_model_list():
    with pytest.raises(ConfigError, match="no models"):
        vitkit.merge([], vitkit.AverageConfig())


def test_different_architectures_name_the_tensor():
    a = sd(make_tiny("vit"))
    b = sd(make_tiny("vit", embed_dim=96))
    with pytest.raises(CheckpointError, match="tensor 'cls_token' has shape"):
        vitkit.merge([a, b], vitkit.AverageConfig())


def test_missing_key():
    base, fts = finetunes(2)
    broken = dict(fts[1])
    del broken["blocks.1.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match="lacks tensor 'blocks.1.attn.qkv.weight'"):
        vitkit.merge([fts[0], broken], vitkit.TaskArithmeticConfig(), base=base)


def test_weights_checked():
    base, fts = finetunes(2)
    with pytest.raises(ConfigError, match="one weight per model"):
        vitkit.merge(fts, vitkit.AverageConfig(weights=[1, 2, 3]))
    with pytest.raises(ConfigError, match="sum to 0"):
        vitkit.AverageConfig(weights=[0, 0])
    with pytest.raises(ConfigError, match=">= 0"):
        vitkit.AverageConfig(weights=[1, -1])
    out = vitkit.merge(fts, vitkit.AverageConfig(weights=[2, 2]))  # normalised
    assert torch.allclose(out["pos_embed"], (fts[0]["pos_embed"] + fts[1]["pos_embed"]) / 2)


def test_task_vector_methods_need_base():
    _, fts = finetunes(2)
    with pytest.raises(ConfigError, match="pass base="):
        vitkit.merge(fts, vitkit.TIESConfig())


# -- data-based methods -------------------------------------------------------------------------------------
def _mse_objective(model_template, targets, x):
    outs = []
    for t in targets:
        model_template.load_state_dict(t)
        with torch.no_grad():
            outs.append(model_template(x))

    def loss(m):
        y = m(x)
        return sum(F.mse_loss(y, o) for o in outs) / len(outs)

    return loss


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_fw_merging_ignores_distractors(granularity):
    base, rel = finetunes(3, scale=0.02, seed=3)
    g = torch.Generator().manual_seed(9)
    # distractors: "anti-task" checkpoints (negated task vectors) and an unrelated fine-tune of the same size
    distractors = [{k: 2 * base[k] - r[k] for k in base} for r in rel]
    distractors.append({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()})
    tmpl = make_tiny("vit")
    x = torch.randn(8, 3, 32, 32, generator=g)
    obj = _mse_objective(tmpl, rel, x)
    cfg = vitkit.FWMergingConfig(max_iters=6, granularity=granularity)
    info = {}
    with_d = vitkit.merge(rel + distractors, cfg, base=base, model=tmpl, objective=obj, info=info)
    only = vitkit.merge(rel, cfg, base=base, model=tmpl, objective=obj)

    def value(state):
        tmpl.load_state_dict(state)
        with torch.no_grad():
            return float(obj(tmpl))

    assert info["selected"][0] < len(rel)  # the first (largest) step goes (mostly) to a relevant model
    # later steps may use an anti-task vertex to trim an overshoot (a legitimate FW move); the objective must not suffer
    assert value(with_d) <= 1.05 * value(only) and value(with_d) < value(base)


def test_greedy_soup_never_worse_than_best_ingredient():
    base, fts = finetunes(3, seed=4)
    tmpl = make_tiny("vit")
    x = torch.randn(4, 3, 32, 32)
    target = _mse_objective(tmpl, [fts[0]], x)

    def evaluate(m):
        with torch.no_grad():
            return -float(target(m))

    info = {}
    soup = vitkit.merge(fts, vitkit.GreedySoupConfig(), model=tmpl, evaluate=evaluate, info=info)
    assert info["ingredients"][0] == 0
    assert info["soup_score"] >= max(info["scores"])
    tmpl.load_state_dict(soup)
    assert evaluate(tmpl) == pytest.approx(info["soup_score"], abs=1e-6)
    with pytest.raises(ConfigError, match="needs evaluate="):
        vitkit.merge(fts, vitkit.GreedySoupConfig(), model=tmpl)


def test_regmean_of_identical_models():
    base, (ft,) = finetunes(1)
    tmpl = make_tiny("vit")
    out = vitkit.merge([ft, ft], vitkit.RegMeanConfig(), model=tmpl, calib=torch.randn(4, 3, 32, 32))
    assert all(torch.allclose(out[k], ft[k], atol=1e-4) for k in ft)


def test_regmean_task_arithmetic_for_other_tensors():
    base, (ft,) = finetunes(1, seed=2)
    tmpl = make_tiny("vit")
    x = torch.randn(4, 3, 32, 32)
    # two identical models: θ0 + 0.5·(τ + τ) = θ_ft for the non-linear tensors, RegMean = W_ft for the linears
    cfg = vitkit.RegMeanConfig(others="task_arithmetic", scaling=0.5)
    out = vitkit.merge([ft, ft], cfg, base=base, model=tmpl, calib=x)
    assert all(torch.allclose(out[k], ft[k], atol=1e-4) for k in ft)
    # linear_scaling scales the linear layers' merged update W* − W0
    out2 = vitkit.merge([ft, ft], vitkit.RegMeanConfig(linear_scaling=2.0), base=base, model=tmpl, calib=x)
    k = "blocks.0.mlp.fc1.weight"
    assert torch.allclose(out2[k], base[k] + 2 * (ft[k] - base[k]), atol=1e-4)
    assert torch.allclose(out2["pos_embed"], ft["pos_embed"])  # average of identical models
    with pytest.raises(ConfigError, match="need base="):
        vitkit.merge([ft, ft], cfg, model=tmpl, calib=x)
