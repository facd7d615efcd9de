"""Training's speed options: fp32 defaults keep the old numbers; channels-last, bf16, fp16 and compile train on the CPU."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from pipelines.diffusion.noise import GaussianNoise, to_model_range
from pipelines.diffusion.performance import inference_model, resolve_speed_options
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.diffusion.training import NonFiniteLossError, TrainingCheckpoint, TrainingSettings, augment, train_ddpm
from pipelines.diffusion.unet import build_unet
from sweeper.spec import SpecError, set_dotted, validate
from tests.test_spec import minimal_spec
from trainables.builders import training_settings

BATCH, LR, EPOCHS = 4, 2e-3, 3


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8, norm_num_groups=8)


def images(count: int = 12) -> torch.Tensor:
    return torch.rand(count, 1, 16, 16, generator=torch.Generator().manual_seed(3))


def train(model: torch.nn.Module, data: torch.Tensor | None = None, **options) -> list[float]:
    settings = TrainingSettings(batch_size=BATCH, lr=LR, epochs=EPOCHS, **options)
    history = train_ddpm(
        model, DiffusionSchedule(50), images() if data is None else data, noise_type="gaussian", noise=GaussianNoise(),
        settings=settings, generator=torch.Generator().manual_seed(0),
    )
    return [stats.loss for stats in history]


def per_step_loop(model: torch.nn.Module) -> list[float]:
    """Train as ``train_ddpm`` did before its speed options: fp32, and each step's loss read at once."""
    schedule, data, noise = DiffusionSchedule(50), images(), GaussianNoise()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    history = []
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(data), generator=generator)
        losses = []
        for start in range(0, len(data), BATCH):
            batch = augment(data[order[start : start + BATCH]], generator, rotation_degrees=15.0, hflip=True, vflip=True)
            x_start = to_model_range(batch, "gaussian")
            t = torch.randint(1, schedule.T + 1, (x_start.shape[0],), generator=generator)
            eps = noise(tuple(x_start.shape), t, generator)
            loss = F.mse_loss(model(schedule.q_sample(x_start, t, eps), t - 1), eps)
            losses.append(loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append(sum(losses) / len(losses))
    return history


def test_cpu_defaults_match_per_step_loop() -> None:
    trained, reference = tiny_unet(), tiny_unet()
    assert train(trained) == per_step_loop(reference)
    for (name, value), expected in zip(trained.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, expected), name


def test_cpu_defaults_resolve_to_fp32() -> None:
    options = resolve_speed_options("cpu")
    assert options.autocast_dtype is None
    assert options.channels_last is False
    assert options.compile is False
    assert options.describe() == "fp32, contiguous, eager"


def test_explicit_options_win_over_auto() -> None:
    options = resolve_speed_options("cpu", precision="bf16", channels_last=True, compile=True)
    assert options.autocast_dtype == torch.bfloat16
    assert options.channels_last is True
    assert options.compile is True


def test_unknown_precision_rejected() -> None:
    with pytest.raises(ValueError, match=r"training.precision must be one of auto, fp32, bf16, fp16, but got 'fp8'$"):
        resolve_speed_options("cpu", precision="fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_picks_bf16_and_channels_last() -> None:
    options = resolve_speed_options("cuda")
    assert options.channels_last is True
    if torch.cuda.is_bf16_supported(including_emulation=False):
        assert options.autocast_dtype == torch.bfloat16


def test_channels_last_losses_close_to_contiguous() -> None:
    contiguous, channels_last = tiny_unet(), tiny_unet()
    expected = train(contiguous)
    losses = train(channels_last, channels_last=True)
    assert losses == pytest.approx(expected, rel=1e-3)
    # The model comes back in the contiguous format it came in.
    assert all(parameter.is_contiguous() for parameter in channels_last.parameters())


def test_bf16_autocast_trains_on_cpu() -> None:
    model = tiny_unet()
    output_dtypes: set[torch.dtype] = set()
    model.conv_in.register_forward_hook(lambda _module, _inputs, output: output_dtypes.add(output.dtype))
    losses = train(model, precision="bf16")
    assert output_dtypes == {torch.bfloat16}
    assert all(math.isfinite(loss) for loss in losses)
    assert losses == pytest.approx(train(tiny_unet()), rel=0.05)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


def test_unknown_inference_precision_rejected() -> None:
    with pytest.raises(ValueError, match=r"evaluation.precision must be one of auto, fp32, bf16, but got 'fp16'$"):
        inference_model(tiny_unet(), "cpu", "fp16")


def test_fp16_autocast_trains_with_a_scaler_on_cpu() -> None:
    model = tiny_unet()
    output_dtypes: set[torch.dtype] = set()
    model.conv_in.register_forward_hook(lambda _module, _inputs, output: output_dtypes.add(output.dtype))
    options = resolve_speed_options("cpu", precision="fp16")
    assert options.scales_gradients
    assert options.describe() == "fp16 autocast with gradient scaling, contiguous, eager"
    losses = train(model, precision="fp16")
    assert output_dtypes == {torch.float16}
    assert losses == pytest.approx(train(tiny_unet()), rel=0.05)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert not resolve_speed_options("cpu", precision="bf16").scales_gradients


def test_nan_loss_names_its_step() -> None:
    data = images()
    data[:] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 1, step 1;"):
        train(tiny_unet(), data)


def test_training_settings_pass_speed_options() -> None:
    raw = minimal_spec()
    options = {"training.precision": "fp16", "training.channels_last": False, "training.compile": True, "resources.gpus": 1}
    for key, value in options.items():
        raw = set_dotted(raw, key, value)
    settings = training_settings(validate(raw))
    assert (settings.precision, settings.channels_last, settings.compile) == ("fp16", False, True)
    defaults = training_settings(validate(minimal_spec()))
    assert (defaults.precision, defaults.channels_last, defaults.compile) == ("auto", None, False)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("training.precision", "fp8", r"spec field 'training.precision': got 'fp8', input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
        ("training.channels_last", "yes", r"spec field 'training.channels_last': got 'yes', expected true, false or 'auto'"),
        ("training.channels_last", None, r"spec field 'training.channels_last': got None, expected true, false or 'auto'"),
        ("training.compile", "maybe", r"spec field 'training.compile': got 'maybe', input should be a valid boolean"),
        ("evaluation.precision", "fp16", r"spec field 'evaluation.precision': got 'fp16', input should be 'auto', 'fp32' or 'bf16'"),
        ("training.precision", "fp16", r"spec field 'training.precision': got 'fp16' with resources.gpus 0, but fp16 is for GPUs"),
    ],
)
def test_bad_speed_option_names_field(key: str, value: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate(set_dotted(minimal_spec(), key, value))


def has_cpp_compiler() -> bool:
    """Return whether inductor finds the C++ compiler that torch.compile needs on the CPU."""
    from torch._inductor import cpp_builder, exc

    try:
        return shutil.which(cpp_builder.get_cpp_compiler()) is not None
    except exc.InvalidCxxCompiler:
        return False


@pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile on the CPU needs a C++ compiler, and none was found")
def test_compile_trains_and_checkpoints_plain_keys() -> None:
    # NOTE: the first run on a machine compiles the tiny UNet for minutes; later runs reuse
    # the inductor cache and take seconds.
    settings = TrainingSettings(batch_size=BATCH, lr=LR, steps=2, ema_decay=0.9, compile=True)
    model = tiny_unet()
    checkpoints: list[TrainingCheckpoint] = []
    history = train_ddpm(
        model, DiffusionSchedule(50), images(8), noise_type="gaussian", noise=GaussianNoise(), settings=settings,
        generator=torch.Generator().manual_seed(0), on_checkpoint=checkpoints.append,
    )
    eager = train_ddpm(
        tiny_unet(), DiffusionSchedule(50), images(8), noise_type="gaussian", noise=GaussianNoise(),
        settings=TrainingSettings(batch_size=BATCH, lr=LR, steps=2, ema_decay=0.9), generator=torch.Generator().manual_seed(0),
    )
    assert [stats.loss for stats in history] == pytest.approx([stats.loss for stats in eager], rel=1e-3)

    plain_keys = set(tiny_unet().state_dict())
    saved = TrainingCheckpoint.from_dict(checkpoints[-1].to_dict())
    assert set(saved.model) == plain_keys
    assert set(saved.ema) == {"n_averaged"} | {f"module.{key}" for key in plain_keys}
    assert set(model.state_dict()) == plain_keys
    # The checkpoint loads into an uncompiled model, as evaluation and resumed trials build it.
    tiny_unet().load_state_dict(saved.model)
