"""`vitkit peft export|import` end to end, and bad input (exit 2, one error line)."""

import torch

import vitkit
from vitkit.adapt import LoRAConfig, lora_modules
from vitkit.cli import main

from ..conftest import make_tiny


def test_peft_export_then_import_with_merge(tmp_path, capsys, images):
    model = make_tiny("vit")
    vitkit.save_artifact(model, None, None, tmp_path / "base")
    vitkit.apply_(model, LoRAConfig(rank=2))
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.1)
    ref = model(images).detach()
    vitkit.save_artifact(model, None, None, tmp_path / "lora")
    assert main(["peft", "export", str(tmp_path / "lora"), "-o", str(tmp_path / "peft")]) == 0
    assert (tmp_path / "peft" / "adapter_config.json").is_file()
    out = tmp_path / "merged"
    assert main(["peft", "import", str(tmp_path / "base"), str(tmp_path / "peft"), "-o", str(out), "--merge"]) == 0
    merged = vitkit.load(out)
    assert not lora_modules(merged)
    torch.testing.assert_close(merged(images), ref, rtol=1e-5, atol=1e-5)
    assert main(["peft", "export", str(out), "-o", str(tmp_path / "again")]) == 2
    assert "error: model has no LoRA layers to export" in capsys.readouterr().err
    assert main(["peft", "import", str(tmp_path / "base"), str(tmp_path / "nope"), "-o", str(tmp_path / "x")]) == 2
    assert "is not a peft LoRA directory" in capsys.readouterr().err
