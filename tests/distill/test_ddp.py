"""torchrun scale-out: 2 CPU processes (gloo) give the same weights as one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitkit.data import load_dataset
from vitkit.training import TrainConfig, fit

from ..conftest import make_tiny

ROOT = Path(__file__).resolve().parents[2]


def _torchrun(out: Path, batch_size: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "tests.distill.ddp_worker", str(out), str(batch_size)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    from safetensors.torch import load_file

    proc = _torchrun(tmp_path / "ddp.safetensors", 16)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = load_file(str(tmp_path / "ddp.safetensors"))
    single = make_tiny("vit")
    data = load_dataset("mnist5k", "train", model=single)
    fit(single, data, TrainConfig(epochs=1, batch_size=16, lr=1e-3, seed=5), limit=40)  # 16+16+8: a partial batch
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp[k], v, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_world_size_must_divide_batch(tmp_path):
    proc = _torchrun(tmp_path / "x.safetensors", 15)
    assert proc.returncode != 0 and "not divisible by the world size 2" in proc.stderr
