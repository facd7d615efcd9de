"""DDPM training: the loss falls on a tiny problem, runs are reproducible, NaN stops training."""

from __future__ import annotations

import pytest
import torch

from pipelines.diffusion.noise import GaussianNoise, SimplexNoise
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.diffusion.training import NonFiniteLossError, TrainingCheckpoint, TrainingSettings, augment, train_ddpm
from pipelines.diffusion.unet import build_unet


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_unet(channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8, norm_num_groups=8)


def images(count: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(count, 1, 16, 16, generator=generator)


def run(noise_type: str = "gaussian", epochs: int = 3, lr: float = 2e-3, data: torch.Tensor | None = None) -> list:
    noise = GaussianNoise() if noise_type == "gaussian" else SimplexNoise()
    settings = TrainingSettings(batch_size=4, lr=lr, epochs=epochs)
    return train_ddpm(
        tiny_unet(), DiffusionSchedule(50), images() if data is None else data,
        noise_type=noise_type, noise=noise, settings=settings, generator=torch.Generator().manual_seed(0),
    )


def test_history_counts_epochs_and_steps() -> None:
    history = run(epochs=3)
    assert [stats.epoch for stats in history] == [1, 2, 3]
    assert history[-1].step == 3 * 3


def test_steps_setting_stops_mid_epoch() -> None:
    settings = TrainingSettings(batch_size=4, lr=1e-3, steps=5)
    history = train_ddpm(
        tiny_unet(), DiffusionSchedule(50), images(), noise_type="gaussian", noise=GaussianNoise(),
        settings=settings, generator=torch.Generator().manual_seed(0),
    )
    assert history[-1].step == 5
    assert len(history) == 2


def test_training_reproducible() -> None:
    assert [s.loss for s in run(epochs=2)] == [s.loss for s in run(epochs=2)]


def test_loss_decreases() -> None:
    history = run(epochs=12)
    assert history[-1].loss < history[0].loss


def test_simplex_training_runs() -> None:
    history = run("simplex", epochs=2)
    assert all(stats.loss > 0 for stats in history)


def test_nan_loss_raises() -> None:
    data = images()
    data[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 1, step \d; lower training.lr"):
        run(epochs=2, data=data)


def test_augment_keeps_shape_and_range() -> None:
    batch = images(6)
    out = augment(batch, torch.Generator().manual_seed(0), rotation_degrees=30, hflip=True, vflip=True)
    assert out.shape == batch.shape
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, batch)
    same = augment(batch, torch.Generator().manual_seed(0), rotation_degrees=0, hflip=False, vflip=False)
    assert torch.equal(same, batch)


def test_nan_error_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(NonFiniteLossError(3, 17, float("inf"))))
    assert (error.epoch, error.step, error.value) == (3, 17, float("inf"))
    assert "training loss is inf at epoch 3, step 17" in str(error)


def train_with_checkpoints(
    epochs: int, *, resume=None, ema_decay: float | None = None, precision: str = "auto"
) -> tuple[torch.nn.Module, list, list]:
    model = tiny_unet()
    checkpoints: list = []
    history = train_ddpm(
        model, DiffusionSchedule(50), images(), noise_type="gaussian", noise=GaussianNoise(),
        settings=TrainingSettings(batch_size=4, lr=2e-3, epochs=epochs, ema_decay=ema_decay, precision=precision),
        generator=torch.Generator().manual_seed(0),
        resume=resume, on_checkpoint=checkpoints.append, checkpoint_every=2,
    )
    return model, history, checkpoints


@pytest.mark.parametrize(("ema_decay", "precision"), [(None, "auto"), (0.9, "auto"), (0.9, "fp16")])
def test_resumed_training_equals_uninterrupted(ema_decay: float | None, precision: str) -> None:
    straight, straight_history, checkpoints = train_with_checkpoints(5, ema_decay=ema_decay, precision=precision)
    # Checkpoints after epochs 2 and 4, and at the end.
    assert [checkpoint.epoch for checkpoint in checkpoints] == [2, 4, 5]

    saved = TrainingCheckpoint.from_dict(checkpoints[0].to_dict())
    resumed, resumed_history, resumed_checkpoints = train_with_checkpoints(5, resume=saved, ema_decay=ema_decay, precision=precision)

    assert [stats.loss for stats in resumed_history] == [stats.loss for stats in straight_history]
    for (name, value), other in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, other), name
    # The gradient scaler goes on from its saved state (fp16), and is absent otherwise.
    assert resumed_checkpoints[-1].scaler == checkpoints[-1].scaler
    assert (checkpoints[-1].scaler is not None) == (precision == "fp16")


def test_fp16_checkpoint_holds_the_scaler_state() -> None:
    _, history, checkpoints = train_with_checkpoints(5, precision="fp16")
    assert all(torch.isfinite(torch.tensor(stats.loss)) for stats in history)
    first, last = checkpoints[0].scaler, checkpoints[-1].scaler
    # 6 steps by epoch 2 and 15 by epoch 5, none with overflowing gradients, so the scale
    # is unchanged and the growth counter counts the steps. A resumed run that dropped this
    # state would start counting again from 0.
    assert (first["scale"], first["_growth_tracker"]) == (65536.0, 6)
    assert (last["scale"], last["_growth_tracker"]) == (65536.0, 15)
    # Written and read back through the file format of trial checkpoints.
    assert TrainingCheckpoint.from_dict(checkpoints[0].to_dict()).scaler == first


def test_checkpoint_without_scaler_entry_loads() -> None:
    # Trial checkpoints written before fp16 training have no "scaler" key.
    _, _, checkpoints = train_with_checkpoints(2)
    data = checkpoints[-1].to_dict()
    del data["scaler"]
    assert TrainingCheckpoint.from_dict(data).scaler is None


def test_ema_weights_end_in_the_model() -> None:
    plain, _, _ = train_with_checkpoints(3)
    averaged, _, checkpoints = train_with_checkpoints(3, ema_decay=0.5)
    final = checkpoints[-1]
    assert final.ema is not None
    weight = "conv_in.conv.weight"
    assert not torch.equal(plain.state_dict()[weight], averaged.state_dict()[weight])
    assert torch.equal(averaged.state_dict()[weight], final.ema[f"module.{weight}"])
