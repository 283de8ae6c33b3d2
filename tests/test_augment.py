"""The two-stage augmentation pipeline: CPU views (ViewSampler, center_view) and device ops (GPUAugment)."""
from __future__ import annotations

import io
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, JpegImagePlugin

from ssl_toolkit.augment import (
    PRESETS,
    AugmentPreset,
    GPUAugment,
    ViewSampler,
    ViewSpec,
    center_view,
    get_preset,
)
from ssl_toolkit.augment import views as views_module
from ssl_toolkit.augment.gpu import blur_kernel_size


def _photo(width: int = 400, height: int = 350, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus mild texture: JPEG-friendly, and no two regions alike."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([255 * xx / width, 255 * yy / height, 128 + 100 * np.sin((xx + 2 * yy) / 40)], axis=-1)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpeg_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    path.write_bytes(_jpeg_bytes(_photo()))
    return str(path)


@pytest.fixture
def draft_spy(monkeypatch):
    """Record the decoded size of every JPEG whose decoder gets configured by ``Image.draft``."""
    sizes = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return sizes


def _inputs(path: str):
    data = Path(path).read_bytes()
    return {
        "bytes": data,
        "path": path,
        "pil": Image.open(io.BytesIO(data)),
        "numpy": np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
    }


# ---------------------------------------------------------------- CPU stage


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1)])
@pytest.mark.parametrize("kind", ["bytes", "path", "pil", "numpy"])
def test_view_sampler_outputs(jpeg_file, kind, mode, channels):
    preset = get_preset("vicreg", crop_size=32)
    views = ViewSampler(preset, mode=mode)(_inputs(jpeg_file)[kind])
    assert len(views) == preset.num_views
    for view in views:
        assert view.dtype == torch.uint8 and view.shape == (channels, 32, 32) and view.is_contiguous()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "CMYK-JPEG"])
def test_view_sampler_other_encodings(fmt):
    image = Image.fromarray(_photo(120, 100))
    if fmt == "CMYK-JPEG":  # libjpeg-turbo's simple API refuses CMYK: PIL decodes it instead
        image, fmt = image.convert("CMYK"), "JPEG"
    buf = io.BytesIO()
    image.save(buf, fmt)
    views = ViewSampler(get_preset("vicreg", crop_size=32))(buf.getvalue())
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("fast", [False, True])
def test_libjpeg_turbo_and_pil_decodes_agree(jpeg_file, mode, fast, monkeypatch):
    data = Path(jpeg_file).read_bytes()
    sampler = ViewSampler(get_preset("vicreg", crop_size=64), mode=mode, fast_decode=fast)
    random.seed(0)
    turbo = sampler(data)  # JPEG bytes: libjpeg-turbo via simplejpeg
    monkeypatch.setattr(views_module, "_turbo_decode", lambda *args: None)  # as for a JPEG it refuses: PIL decodes
    random.seed(0)
    pil = sampler(data)
    for a, b in zip(turbo, pil):
        # exact decode: the same libjpeg-turbo arithmetic either way (builds may differ in the last
        # bit); fast IDCT + upsampling: ≈ 1.6 grey levels of 255 on the benchmark's synthetic JPEGs
        assert (a.float() - b.float()).abs().mean() < (1.5 if fast else 0.5)


def _aa_bilinear(hwc: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """torch's antialiased bilinear (PIL's BILINEAR) on uint8, the reference for the fast path."""
    x = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1)[None]
    return F.interpolate(x, size=size_hw, mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("crop_hw", [(40, 50), (64, 64), (90, 80), (96, 96), (128, 120), (150, 150)])
def test_resize_paths_match_antialiased_bilinear(crop_hw):
    image = _photo(160, 160)
    resized = views_module._resize(image, (0, 0, crop_hw[1], crop_hw[0]), (64, 64))
    reference = _aa_bilinear(image[: crop_hw[0], : crop_hw[1]], (64, 64))
    diff = np.abs(resized.astype(int) - reference.astype(int))
    shrink = max(crop_hw) / 64
    if shrink > views_module._PLAIN_BILINEAR_MAX_SHRINK:
        assert diff.max() == 0  # the antialiased kernel itself
    else:
        # plain bilinear (OpenCV): the same filter when enlarging, rounding apart; close when shrinking ≤ 2×
        assert diff.mean() < (0.6 if shrink <= 1 else 3.0), (crop_hw, diff.mean())


def test_view_sampler_multi_crop_sizes_and_grey_source(jpeg_file):
    preset = AugmentPreset("multi", (ViewSpec(crop_size=32), ViewSpec(crop_size=(16, 24)), ViewSpec(crop_size=16)))
    grey = np.asarray(Image.open(io.BytesIO(Path(jpeg_file).read_bytes())).convert("L"))
    for image in (grey, _jpeg_bytes(grey)):
        views = ViewSampler(preset, mode="RGB")(image)
        assert [tuple(v.shape) for v in views] == [(3, 32, 32), (3, 16, 24), (3, 16, 16)]
        assert all(torch.equal(v[0], v[1]) and torch.equal(v[1], v[2]) for v in views)


def test_view_sampler_keeps_frame_stacks():
    stack = np.random.default_rng(0).integers(0, 256, (60, 50, 4), dtype=np.uint8)
    views = ViewSampler(get_preset("atari"), mode=None)(stack)
    assert [tuple(v.shape) for v in views] == [(4, 84, 84)] * 2


def test_view_sampler_seeded(jpeg_file):
    sampler = ViewSampler(get_preset("vicreg", crop_size=32))
    data = Path(jpeg_file).read_bytes()
    random.seed(0)
    first = sampler(data)
    random.seed(0)
    again = sampler(data)
    random.seed(1)
    other = sampler(data)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    # the two views of one call have their own crops
    assert not torch.equal(first[0], first[1])


class _SameImage(torch.utils.data.Dataset):
    def __init__(self, data: bytes):
        self.data, self.sampler = data, ViewSampler(get_preset("vicreg", crop_size=16))

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.sampler(self.data)[0]


def test_view_sampler_in_dataloader_workers(jpeg_file):
    # DataLoader seeds `random` per worker from torch's generator: workers differ, seeded runs repeat
    def run() -> torch.Tensor:
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(_SameImage(Path(jpeg_file).read_bytes()), batch_size=2, num_workers=2)
        return torch.cat(list(loader))

    first, again = run(), run()
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[2])  # item 0 from worker 0, item 2 from worker 1


def test_draft_decode_used_for_small_crops(draft_spy):
    # 800×704 image, 32-px views of at least half its area: every box ≥ 8× the output → 1/8 decode
    data = _jpeg_bytes(_photo(800, 704))
    preset = get_preset("simclr", crop_size=32, crop_scale=(0.5, 1.0))
    views = ViewSampler(preset)(data)
    assert draft_spy == [(100, 88)]
    assert all(v.shape == (3, 32, 32) for v in views)


def test_draft_decode_not_used_when_it_would_lose_resolution(jpeg_file, draft_spy):
    # 224-px views of a 400×350 image: no box allows a 1/2 decode
    ViewSampler(get_preset("vicreg"))(Path(jpeg_file).read_bytes())
    assert draft_spy == []
    # a PIL image is the caller's object: never re-configured
    image = Image.open(io.BytesIO(Path(jpeg_file).read_bytes()))
    ViewSampler(get_preset("vicreg", crop_size=16))(image)
    assert draft_spy == [] and image.size == (400, 350)


def test_draft_decode_close_to_full_decode(draft_spy):
    data = _jpeg_bytes(_photo(800, 704))
    whole = get_preset("mae", crop_size=64, crop_scale=(1.0, 1.0), flip_p=0.0)
    reduced = ViewSampler(whole)(data)[0]  # bytes: decoded at 1/8 (100×88), then resized to 64
    assert draft_spy == [(100, 88)]
    full = ViewSampler(whole)(Image.open(io.BytesIO(data)))[0]  # PIL: full-size decode
    mean_abs_diff = (reduced.float() - full.float()).abs().mean().item()
    assert mean_abs_diff < 1.5, mean_abs_diff  # of 255 (measured ≈ 0.5): DCT-domain vs pixel-domain shrinking


def test_full_image_crop_is_resized_whole_image():
    image = _photo(160, 120)  # shrinks 2.5×: the antialiased path, PIL BILINEAR's filter
    preset = get_preset("mae", crop_size=(48, 64), crop_scale=(1.0, 1.0), flip_p=0.0)
    view = ViewSampler(preset)(image)[0]
    expected = np.asarray(Image.fromarray(image).resize((64, 48), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert (view.int() - torch.from_numpy(expected.copy()).int()).abs().max() <= 2  # PIL vs torch rounding


def test_flip_mirrors_the_view():
    image = _photo(64, 64)
    preset = get_preset("mae", crop_size=64, crop_scale=(1.0, 1.0))
    never, always = replace(preset, views=(replace(preset.views[0], flip_p=0.0),)), replace(
        preset, views=(replace(preset.views[0], flip_p=1.0),)
    )
    assert torch.equal(ViewSampler(always)(image)[0], ViewSampler(never)(image)[0].flip(-1))


def test_shift_pad_shifts_by_at_most_pad():
    frame = np.random.default_rng(0).integers(0, 256, (84, 84), dtype=np.uint8)
    pad = get_preset("atari").views[0].shift_pad
    padded = np.pad(frame, pad, mode="edge")  # DrQ: replicate-pad, then crop back
    candidates = {
        (dy, dx): padded[pad + dy : pad + dy + 84, pad + dx : pad + dx + 84]
        for dy in range(-pad, pad + 1)
        for dx in range(-pad, pad + 1)
    }
    sampler = ViewSampler(get_preset("atari"), mode="L")
    random.seed(0)
    shifts = set()
    for _ in range(10):
        for view in sampler(frame):
            assert view.shape == (1, 84, 84)
            matches = [offset for offset, shifted in candidates.items() if np.array_equal(view[0].numpy(), shifted)]
            assert len(matches) == 1
            shifts.add(matches[0])
    assert len(shifts) > 3  # 20 views over 81 possible offsets


def test_center_view(jpeg_file):
    data = Path(jpeg_file).read_bytes()
    assert center_view(data, 32).shape == (3, 32, 32)
    assert center_view(data, (24, 32), mode="L").shape == (1, 24, 32)
    assert center_view(_photo(), 224).dtype == torch.uint8
    # crop_fraction 1 on a square image is the whole image, resized
    square = _photo(96, 96)
    expected = np.asarray(Image.fromarray(square).resize((48, 48), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    got = center_view(square, 48, crop_fraction=1.0)
    assert (got.int() - torch.from_numpy(expected.copy()).int()).abs().max() <= 2


def test_bad_inputs():
    sampler = ViewSampler(get_preset("vicreg", crop_size=16))
    with pytest.raises(TypeError):
        sampler(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError):
        sampler(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        ViewSampler(get_preset("vicreg"), mode="RGBA")


# ---------------------------------------------------------------- device stage


def _batch(b: int = 8, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


_ALL_OFF = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_gpu_augment_shapes(name):
    preset = get_preset(name, crop_size=32)
    channels = 1 if name == "atari" else 3
    out = GPUAugment(preset)([_batch(c=channels, seed=i) for i in range(preset.num_views)])
    assert len(out) == preset.num_views
    assert all(o.dtype == torch.float32 and o.shape == (8, channels, 32, 32) for o in out)


def test_gpu_augment_only_normalises_when_everything_is_off():
    preset = get_preset("vicreg", crop_size=32, **_ALL_OFF)
    aug = GPUAugment(preset)
    views = [_batch(seed=0), _batch(seed=1)]
    mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
    std = torch.tensor(preset.std).view(1, 3, 1, 1)
    for x, y in zip(views, aug(views)):
        torch.testing.assert_close(y, (x.float() / 255 - mean) / std, atol=1e-6, rtol=0)
    torch.testing.assert_close(aug.normalize(views[0]), (views[0].float() / 255 - mean) / std, atol=1e-6, rtol=0)


def test_gpu_augment_solarize_inverts_above_half():
    preset = get_preset("vicreg", crop_size=32, mean=(0.0,), std=(1.0,), **{**_ALL_OFF, "solarize_p": 1.0})
    x = _batch()
    unit = x.float() / 255
    for y in GPUAugment(preset)([x, x]):
        torch.testing.assert_close(y, torch.where(unit >= 0.5, 1 - unit, unit), atol=1e-6, rtol=0)


def test_gpu_augment_grayscale_makes_channels_equal():
    preset = get_preset("simclr", crop_size=32, **{**_ALL_OFF, "gray_p": 1.0})
    for y in GPUAugment(preset)([_batch(), _batch(seed=1)]):
        unnormalised = y * torch.tensor(preset.std).view(1, 3, 1, 1) + torch.tensor(preset.mean).view(1, 3, 1, 1)
        torch.testing.assert_close(unnormalised[:, 0], unnormalised[:, 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(unnormalised[:, 1], unnormalised[:, 2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 4])
def test_gpu_augment_mono_and_stacked_channels(channels):
    # full colour preset on 1 or 4 channels: brightness/contrast only, one factor per sample
    preset = get_preset("simclr", crop_size=32, mean=(0.5,), std=(0.25,), jitter_p=1.0)
    same = _batch(c=1).expand(-1, channels, -1, -1).contiguous()
    out = GPUAugment(preset)([same, same])
    for y in out:
        assert y.shape == (8, channels, 32, 32)
        assert all(torch.equal(y[:, 0], y[:, c]) for c in range(channels))
    assert not torch.allclose(out[0], (same.float() / 255 - 0.5) / 0.25)
    atari = get_preset("atari", crop_size=32)
    assert all(y.shape == (8, channels, 32, 32) for y in GPUAugment(atari)([same, same]))


def test_gpu_augment_seeded():
    aug = GPUAugment(get_preset("vicreg", crop_size=32))
    views = [_batch(16, seed=0), _batch(16, seed=1)]
    torch.manual_seed(0)
    first = aug(views)
    torch.manual_seed(0)
    again = aug(views)
    torch.manual_seed(1)
    other = aug(views)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_gpu_augment_atari_intensity_is_per_sample_scale():
    preset = get_preset("atari", crop_size=32)
    x = _batch(64, c=1)
    y = GPUAugment(preset)([x, x])[0]
    ratio = y.flatten(1) / (x.float() / 255).flatten(1).clamp_min(1e-3)
    scale = ratio[:, 0]
    bright = x.flatten(1) > 10
    assert torch.allclose(ratio[bright], scale[:, None].expand_as(ratio)[bright], rtol=1e-4)
    assert ((scale - 1).abs() <= 2 * 0.05 + 1e-6).all() and (scale - 1).abs().max() > 0


def test_vicreg_views_are_asymmetric():
    aug = GPUAugment(get_preset("vicreg", crop_size=32))
    assert [v.blur.p for v in aug.per_view] == [1.0, 0.1]
    assert aug.per_view[0].solarize is None and aug.per_view[1].solarize.p == 0.2
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3
    # frequencies over 512 images, colour jitter and grayscale off to isolate blur and solarize
    aug = GPUAugment(get_preset("vicreg", crop_size=8, jitter_p=0.0, gray_p=0.0))
    torch.manual_seed(0)
    dark_texture = torch.randint(0, 100, (512, 3, 8, 8), dtype=torch.uint8)  # solarize leaves it, blur changes it
    bright_flat = torch.full((512, 3, 8, 8), 200, dtype=torch.uint8)  # blur leaves it, solarize changes it
    for x, expected in ((dark_texture, [1.0, 0.1]), (bright_flat, [0.0, 0.2])):
        changed = [(y - aug.normalize(x)).abs().flatten(1).amax(1).gt(1e-4).float().mean().item() for y in aug([x, x])]
        # ±0.08: binomial noise (σ ≈ 0.015 at p = 0.2) plus the ~5% of blurs whose σ < 0.2 moves no pixel
        assert changed == pytest.approx(expected, abs=0.08), changed


def test_gpu_augment_rejects_wrong_view_count_and_channels():
    aug = GPUAugment(get_preset("vicreg", crop_size=32))
    with pytest.raises(ValueError):
        aug([_batch()])
    with pytest.raises(ValueError):
        aug([_batch(c=1), _batch(c=1)])  # 3-entry ImageNet mean on 1-channel views


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_augment_cuda_matches_cpu():
    aug = GPUAugment(get_preset("vicreg", crop_size=32))
    views = [_batch(16, seed=0), _batch(16, seed=1)]
    torch.manual_seed(0)
    cpu = aug(views)
    torch.manual_seed(0)
    cuda = aug.cuda()([v.cuda() for v in views])
    for a, b in zip(cpu, cuda):
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-4)
