"""Worker for the torchrun test: train a tiny ViT with the shared loop under DDP (gloo) and save rank 0's weights."""

import sys

import torch


def main(out: str, batch_size: int) -> None:
    from safetensors.torch import save_file

    from tests.conftest import make_tiny
    from vitkit.data import load_dataset
    from vitkit.training import TrainConfig, fit
    from vitkit.training.distributed import init_from_env

    torch.set_num_threads(1)
    init_from_env()
    model = make_tiny("vit")
    data = load_dataset("mnist5k", "train", model=model)
    fit(model, data, TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, seed=5), limit=40, val_set=None)
    if torch.distributed.get_rank() == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
