"""open_clip image towers → timm ViTs (exact), zero-shot heads (CLIP's top-1), transforms and artifact round trips."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="vitkit[clip] extra not installed")

import vitkit  # noqa: E402
from vitkit.artifact import save_artifact  # noqa: E402
from vitkit.data import iterate_batches, load_dataset  # noqa: E402
from vitkit.errors import CheckpointError, ConfigError, UnsupportedModelError  # noqa: E402
from vitkit.models.open_clip import from_open_clip, text_embeddings  # noqa: E402
from vitkit.models.zero_shot import read_class_embeddings, save_class_embeddings, zero_shot_head  # noqa: E402

from .helpers import perturb_  # noqa: E402

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ("a photo of the number {}.", "a drawing of a {}.")
VISION = dict(layers=2, width=64, head_width=16, patch_size=8, image_size=32)
TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)


def tiny_clip(seed: int = 0, quick_gelu: bool = False, **vision) -> torch.nn.Module:
    torch.manual_seed(seed)
    vc = open_clip.model.CLIPVisionCfg(**{**VISION, **vision})
    tc = open_clip.model.CLIPTextCfg(**TEXT)
    clip = open_clip.model.CLIP(embed_dim=32, vision_cfg=vc, text_cfg=tc, quick_gelu=quick_gelu).eval()
    # open_clip leaves LayerNorms at identity and biases at 0: make them count
    perturb_(clip.visual.named_parameters(), keep=lambda name, p: p.ndim == 1 and "ls_" not in name)
    return clip


def images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def digits(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iterate_batches(load_dataset("digits", "test", model=model), 512))
    return x, y


@pytest.mark.parametrize(
    "vision,quick_gelu",
    [({}, False), ({}, True), ({"ls_init_value": 0.5}, False), ({"act_kwargs": {"approximate": "tanh"}}, False)],
    ids=["gelu", "quick_gelu", "layer_scale", "gelu_tanh"],
)
def test_image_embeddings_match_encode_image(vision, quick_gelu):
    clip = tiny_clip(quick_gelu=quick_gelu, **vision)
    x = images()
    with torch.no_grad():
        want = clip.encode_image(x)
        for source in (clip, clip.visual):
            got = from_open_clip(source)(x)
            assert got.shape == want.shape == (8, 32)
            assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    model = from_open_clip(clip)
    assert (model.vitkit_arch["kwargs"].get("act_layer") == "quick_gelu") == quick_gelu
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    assert model.patch_embed.proj.bias is None and not torch.any(model.head.bias)


def test_state_dict_plus_config_route():
    clip = tiny_clip(quick_gelu=True)
    config = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": dict(VISION), "text_cfg": dict(TEXT)}
    model = from_open_clip(clip.state_dict(), config=config)  # whole CLIP state dict: visual.* keys picked
    with torch.no_grad():
        assert torch.allclose(model(images()), clip.encode_image(images()), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="needs config="):
        from_open_clip(clip.state_dict())


def test_norm_eps_other_than_open_clip_default():
    clip = tiny_clip(norm_kwargs={"eps": 1e-6})
    try:
        model = from_open_clip(clip)
    except (ConfigError, UnsupportedModelError) as exc:  # build_arch's vitkit_norm_eps option not there yet
        pytest.skip(f"build_arch cannot set LayerNorm eps yet: {exc}")
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    with torch.no_grad():
        assert torch.allclose(model(images()), clip.encode_image(images()), atol=1e-5, rtol=0)


def test_zero_shot_head_equals_open_clip_zero_shot_on_real_digits(tmp_path):
    clip = tiny_clip(seed=3)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=TEXT["context_length"])
    emb = text_embeddings(clip, CLASSES, TEMPLATES, tokenizer)
    # open_clip's own zero-shot procedure: classifier [D, C], logits = scale · normalize(f) @ classifier
    classifier = open_clip.build_zero_shot_classifier(clip, tokenizer, CLASSES, TEMPLATES)
    assert torch.allclose(emb, classifier.T, atol=1e-6)

    path = save_class_embeddings(tmp_path / "digits.safetensors", emb, CLASSES)
    emb2, names = read_class_embeddings(path)
    assert names == CLASSES and torch.equal(emb2, emb)

    model = zero_shot_head(from_open_clip(clip), emb2)
    x, y = digits(model)
    assert x.shape[1:] == (3, 32, 32) and len(y) == 270
    with torch.no_grad():
        f = clip.encode_image(x)
        clip_top1 = (clip.logit_scale.exp() * torch.nn.functional.normalize(f, dim=-1) @ classifier).argmax(-1)
        ours = model(x).argmax(-1)
    assert torch.equal(ours, clip_top1)
    assert model.num_classes == 10 and model.vitkit_arch["kwargs"]["num_classes"] == 10


def test_zero_shot_head_refuses_mismatched_embeddings():
    model = from_open_clip(tiny_clip())
    with pytest.raises(ConfigError, match="dim 16 but the model outputs 32"):
        zero_shot_head(model, torch.randn(10, 16))


def test_embedding_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_class_embeddings(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_class_embeddings(bad)
    with pytest.raises(ConfigError, match="one row per class"):
        save_class_embeddings(tmp_path / "x.safetensors", torch.randn(3, 8), ["a", "b"])


@pytest.mark.parametrize("zero_shot", [False, True], ids=["embedding", "zero_shot"])
def test_transforms_then_artifact_round_trip(tmp_path, zero_shot):
    clip = tiny_clip(seed=1)
    model = from_open_clip(clip)
    if zero_shot:
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=TEXT["context_length"])
        zero_shot_head(model, text_embeddings(clip, CLASSES, TEMPLATES, tokenizer))
    calib, _ = digits(model)
    calib = calib[:16]
    cfgs = [
        vitkit.PruneConfig(ratio=0.25),
        vitkit.PTQConfig(w_bits=8, a_bits=8, calib_images=16),
        vitkit.ToMeConfig(r=2),
    ]
    vitkit.apply_(model, cfgs, calib=calib)
    assert model.blocks[0].mlp.fc1.out_features < 256 or model.blocks[0].attn.qkv.out_features < 192  # pruned
    out = save_artifact(model, None, None, tmp_path / "art")
    again = vitkit.load(out)
    x = images(4)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6, rtol=0)
    assert again(x).shape == (4, 10 if zero_shot else 32)


def test_onnx_export_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.deploy import export_model

    model = from_open_clip(tiny_clip())
    res = export_model(model, tmp_path / "onnx", images=8, bench=False)
    assert res.max_abs_diff < 1e-4


@pytest.mark.parametrize(
    "vision,feature",
    [
        ({"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2}, "attentional pooler"),
        ({"pool_type": "avg"}, "pool_type='avg'"),
        ({"no_ln_pre": True}, "no_ln_pre"),
        ({"final_ln_after_pool": True}, "final_ln_after_pool"),
        ({"output_tokens": True}, "output_tokens"),
        ({"qk_norm": True}, "CustomResidualAttentionBlock"),
    ],
)
def test_unsupported_tower_features_refused_by_name(vision, feature):
    clip = tiny_clip(**vision)
    with pytest.raises(UnsupportedModelError, match=feature.replace("(", r"\(")):
        from_open_clip(clip)
    config = {"embed_dim": 32, "vision_cfg": {**VISION, **vision}}
    name = feature if feature != "CustomResidualAttentionBlock" else "qk_norm"
    name = "attentional_pool" if feature == "attentional pooler" else name
    with pytest.raises(UnsupportedModelError, match=name):
        from_open_clip(clip.state_dict(), config=config)


def test_non_vit_towers_refused_by_name():
    resnet = {"embed_dim": 32, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32}}
    with pytest.raises(UnsupportedModelError, match="ModifiedResNet"):
        from_open_clip({"visual.conv1.weight": torch.zeros(1)}, config=resnet)
    trunk = {"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224"}}
    with pytest.raises(UnsupportedModelError, match="timm trunk"):
        from_open_clip({}, config=trunk)
    with pytest.raises(UnsupportedModelError, match="ModifiedResNet"):
        torch.manual_seed(0)
        rn = open_clip.model.CLIP(
            embed_dim=32,
            vision_cfg=open_clip.model.CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, head_width=8, image_size=32),
            text_cfg=open_clip.model.CLIPTextCfg(**TEXT),
        )
        from_open_clip(rn)


@pytest.fixture
def tiny_open_clip_name(tmp_path):
    """A tiny open_clip model config registered by name (no download), plus a weights file for it."""
    name = "vitkit-test-tiny"
    cfg = tmp_path / f"{name}.json"
    cfg.write_text(json.dumps({"embed_dim": 32, "vision_cfg": VISION, "text_cfg": TEXT}))
    open_clip.add_model_config(cfg)
    clip = tiny_clip(seed=5)
    weights = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), weights)
    return name, weights, clip


def test_load_by_name(tiny_open_clip_name):
    name, weights, clip = tiny_open_clip_name
    model = vitkit.load(f"open_clip:{name}/{weights}")
    with torch.no_grad():
        assert torch.allclose(model(images()), clip.encode_image(images()), atol=1e-5, rtol=0)
    assert model.vitkit_arch["source"] == {"open_clip": f"{name}/{weights}"}
    assert vitkit.load(f"open_clip:{name}")(images()).shape == (8, 32)  # random init
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        vitkit.load("open_clip:ViT-B-32-nope")
    with pytest.raises(ConfigError, match="neither a pretrained tag"):
        vitkit.load("open_clip:ViT-B-32/no-such-tag")
    with pytest.raises(ConfigError, match="name the weights"):
        vitkit.load("open_clip:ViT-B-32", pretrained=True)


def test_pretrained_offline_is_a_one_line_checkpoint_error():
    with pytest.raises(CheckpointError, match="could not download pretrained weights for 'open_clip:ViT-B-32/openai'"):
        vitkit.load("open_clip:ViT-B-32/openai")


def test_cli_zero_shot_embed_then_eval_and_recipe(tiny_open_clip_name, tmp_path, capsys):
    from vitkit.cli.main import main
    from vitkit.recipe import parse_recipe, run_recipe

    name, weights, clip = tiny_open_clip_name
    spec = f"open_clip:{name}/{weights}"
    emb = tmp_path / "digits.safetensors"
    argv = ["zero-shot-embed", spec, "--classes", ",".join(CLASSES), "--template", TEMPLATES[0], "-o", str(emb)]
    assert main(argv) == 0
    assert read_class_embeddings(emb)[1] == CLASSES
    capsys.readouterr()
    assert main(["eval", spec, "--data", "digits", "--zero-shot", str(emb), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    tokenizer = open_clip.get_tokenizer(name)
    classifier = open_clip.build_zero_shot_classifier(clip, tokenizer, CLASSES, TEMPLATES[:1])
    x, y = digits(vitkit.load(spec))
    with torch.no_grad():
        pred = (torch.nn.functional.normalize(clip.encode_image(x), dim=-1) @ classifier).argmax(-1)
    assert result["images"] == 270 and result["top1"] == pytest.approx(float((pred == y).float().mean()), abs=1e-9)

    assert main(["eval", spec, "--data", "digits", "--zero-shot", str(tmp_path / "none.safetensors")]) == 2

    recipe = parse_recipe(
        {
            "model": spec,
            "steps": [{"tome": {"r": 2}}],
            "eval": {"data": "digits", "limit": 64, "robustness": False, "zero_shot": str(emb)},
            "bench": {"batch_sizes": [4], "repeats": 1, "latency_runs": 1, "per_step": False},
            "calib": {"data": "digits", "n": 8},
        }
    )
    model, report = run_recipe(recipe, tmp_path / "art")
    assert model(images(2)).shape == (2, 10)
    assert vitkit.load(tmp_path / "art")(images(2)).shape == (2, 10)
    assert "top1" in json.dumps(report)


def test_config_dataclass_defaults_are_accepted():
    """A config written from open_clip's own dataclasses (every field present, defaults) converts."""
    clip = tiny_clip()
    vc = asdict(open_clip.model.CLIPVisionCfg(**VISION))
    model = from_open_clip(clip.visual.state_dict(), config={"embed_dim": 32, "vision_cfg": vc})
    with torch.no_grad():
        assert torch.allclose(model(images()), clip.encode_image(images()), atol=1e-5, rtol=0)


def test_zero_shot_head_on_a_quantized_head_wraps_it():
    clip = tiny_clip(seed=2)
    model = from_open_clip(clip)
    calib = images(16)
    vitkit.apply_(model, [vitkit.PTQConfig(w_bits=8, a_bits=8, calib_images=16)], calib=calib)
    x = images(8)
    with torch.no_grad():
        f = torch.nn.functional.normalize(model(x), dim=-1)  # the quantized tower's embeddings
    emb = torch.randn(10, 32)
    zero_shot_head(model, emb)
    assert type(model.head).__name__ == "ZeroShotHead"
    with torch.no_grad():
        want = (f @ torch.nn.functional.normalize(emb, dim=-1).T).argmax(-1)
        assert torch.equal(model(x).argmax(-1), want)
