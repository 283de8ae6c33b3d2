"""Data-pipeline throughput: our two-stage pipeline against the usual per-sample one and against decode.

Measured in one run, on one core (``torch.set_num_threads(1)``, one process, no DataLoader workers),
each on the same encoded images:

* **cpu_stage** — ours: shards → :class:`~ssl_toolkit.data.ShardDataset` (tar reading included) →
  :class:`~ssl_toolkit.augment.ViewSampler` → ``views`` uint8 crops per image;
* **baseline** — the usual per-sample pipeline, the official VICReg ``TrainTransform``
  (facebookresearch/vicreg, ``augmentations.py``; Bardes et al. 2022): PIL decode, then per view
  ``RandomResizedCrop`` (bicubic), flip, colour jitter, grayscale, PIL Gaussian blur, solarization,
  ``ToTensor`` and ``Normalize``; slow, so timed on a subset;
* **decode** — a full-size PIL JPEG decode to RGB and nothing else: the practical limit of any
  pipeline that decodes every image.

``speedup_vs_baseline`` = cpu_stage / baseline and ``fraction_of_decode`` = cpu_stage / decode, both
in source images per second. The colour work that the baseline does per sample is done by our device
stage (:class:`~ssl_toolkit.augment.GPUAugment`) on whole batches; its cost per batch is reported
separately, on the CPU (all threads) and on a GPU when there is one.

Each measurement is repeated ``repeats`` times, interleaved (a, b, c, a, b, c, …) so that a burst of
load from other processes hits all three alike; the headline figure is the best pass (the one least
disturbed), the median is reported beside it, and ``per_round`` gives both ratios within each round.
"""
from __future__ import annotations

import io
import itertools
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from ssl_toolkit.augment import GPUAugment, ViewSampler, get_preset
from ssl_toolkit.augment.presets import IMAGENET_MEAN, IMAGENET_STD
from ssl_toolkit.bench.images import synthetic_jpegs
from ssl_toolkit.data.shards import ShardDataset, expand_shards, write_shards

PRESET = "vicreg"
BASELINE_IMAGES = 64
JPEG_QUALITY = 90
# issue 3: ours ≥ 10× the per-sample pipeline and ≥ half the speed of decoding alone, on one core
TARGETS = {"speedup_vs_baseline": 10.0, "fraction_of_decode": 0.5}
STATISTIC = "best of the interleaved passes (least disturbed by other processes); median beside it"


# -------------------------------------------------------------------------------- the baseline
class _PILGaussianBlur:
    """VICReg's blur: PIL ``GaussianBlur`` with sigma uniform in [0.1, 2.0], applied with ``p``."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return img


class _PILSolarize:
    """VICReg's solarization: ``ImageOps.solarize`` (threshold 128) with ``p``."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class VICRegTrainTransform:
    """The official VICReg training transform (facebookresearch/vicreg, ``augmentations.py``,
    ``TrainTransform``), restated here as the per-sample baseline: two views of one PIL image,
    the second with blur p 0.1 (not 1.0) and solarization p 0.2 (not 0).

    ``views`` > 2 cycles the pair. Calling it on an RGB PIL image returns a list of float32
    ``(3, crop, crop)`` tensors normalised with the ImageNet mean and std.
    """

    def __init__(self, crop: int = 224, views: int = 2):
        def one(blur_p: float, solarize_p: float) -> T.Compose:
            return T.Compose([
                T.RandomResizedCrop(crop, interpolation=T.InterpolationMode.BICUBIC),  # as the official code
                T.RandomHorizontalFlip(p=0.5),
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                _PILGaussianBlur(blur_p),
                _PILSolarize(solarize_p),
                T.ToTensor(),
                T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ])

        pair = (one(blur_p=1.0, solarize_p=0.0), one(blur_p=0.1, solarize_p=0.2))
        self.transforms = [pair[i % 2] for i in range(views)]

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [t(img) for t in self.transforms]


def pil_decode(data: bytes) -> Image.Image:
    """Full-size decode to RGB, the way a per-sample pipeline opens every image."""
    return Image.open(io.BytesIO(data)).convert("RGB")  # convert() loads the pixels


# ------------------------------------------------------------------------------------- timing
def machine_info() -> dict:
    """Processor, torch version and the thread count torch would use by default here."""
    return {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def rate_summary(seconds: Sequence[float], count: int, unit: str = "images_per_s") -> dict:
    """``count`` items per pass: best and median rate over the passes, and the raw pass times."""
    return {unit: count / min(seconds), f"{unit}_median": count / statistics.median(seconds),
            "passes_s": [round(s, 4) for s in seconds]}


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------- the data
def _synthesise_shards(out_dir: str, num_images: int, image_size: tuple[int, int]) -> list[str]:
    images = synthetic_jpegs(num_images, size=image_size, quality=JPEG_QUALITY, seed=0)
    return write_shards(({"__key__": f"img{i:06d}", "jpg": b} for i, b in enumerate(images)), out_dir,
                        prefix="bench", metadata={"source": "ssl_toolkit.bench.images.synthetic_jpegs"})


def _describe(images: list[bytes]) -> dict:
    sizes = [Image.open(io.BytesIO(b)).size for b in images]  # header only
    nbytes = [len(b) for b in images]
    return {
        "num_images": len(images),
        "formats": sorted({Image.open(io.BytesIO(b)).format for b in images}),
        "width_px": {"min": min(w for w, _ in sizes), "max": max(w for w, _ in sizes)},
        "height_px": {"min": min(h for _, h in sizes), "max": max(h for _, h in sizes)},
        "bytes": {"mean": round(statistics.fmean(nbytes)), "min": min(nbytes), "max": max(nbytes)},
    }


# ------------------------------------------------------------------------------- device stage
def time_device_stage(
    views: list[torch.Tensor], preset_name: str = PRESET, batches: int = 3, device: str = "cpu"
) -> dict:
    """Milliseconds per batch of :class:`GPUAugment` on uint8 view batches (one untimed warm-up)."""
    augment = GPUAugment(get_preset(preset_name, crop_size=tuple(views[0].shape[-2:]), num_views=len(views)))
    augment = augment.to(device)
    views = [v.to(device) for v in views]
    cuda = device.startswith("cuda")

    def run() -> None:
        augment(views)
        if cuda:
            torch.cuda.synchronize(device)

    run()
    seconds = [_timed(run) for _ in range(batches)]
    out = {"ms_per_batch": 1e3 * min(seconds), "ms_per_batch_median": 1e3 * statistics.median(seconds),
           "batches_timed": batches, "images_per_s": views[0].shape[0] / min(seconds)}
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(device)
    else:
        out["threads"] = torch.get_num_threads()
    return out


# ------------------------------------------------------------------------------------ the run
def run_pipeline_bench(
    shards: str | None = None,
    num_images: int = 256,
    image_size: tuple[int, int] = (400, 350),
    views: int = 2,
    crop: int = 224,
    device_batches: int = 3,
    output: str | None = None,
    *,
    repeats: int = 3,
    baseline_images: int = BASELINE_IMAGES,
    device_batch_size: int = 256,
) -> dict:
    """Measure the CPU stage, the per-sample baseline and plain decode on the same images.

    Args:
        shards: shard spec (see :func:`~ssl_toolkit.data.expand_shards`); its first ``num_images``
            samples are used. ``None``: synthesise ``num_images`` photo-like JPEGs of ``image_size``
            (:mod:`ssl_toolkit.bench.images`) into temporary shards.
        num_images: images per pass of the CPU stage and of decode.
        image_size: ``(width, height)`` of synthesised images.
        views, crop: views per image and their side in pixels (the ``vicreg`` preset's views).
        device_batches: timed batches of the device stage (after one warm-up batch).
        output: also write the result as JSON here.
        repeats: passes per measurement (interleaved); the best pass is the headline.
        baseline_images: the baseline is timed on the first this many images.
        device_batch_size: images (each with ``views`` views) per device-stage batch.

    Returns:
        the result dict; rates are source images per second (each image yields ``views`` views).
    """
    torch_threads = torch.get_num_threads()
    random.seed(0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="ssl_toolkit_bench_") as tmp:
        if shards is None:
            urls = _synthesise_shards(tmp, num_images, image_size)
            source = {"source": "synthetic", "generator": "ssl_toolkit.bench.images.synthetic_jpegs",
                      "jpeg_quality": JPEG_QUALITY}
        else:
            urls = expand_shards(shards)
            source = {"source": "shards", "shards": shards, "num_shards": len(urls)}
        # the bytes exactly as the CPU stage will read them, in the same (shard) order
        raw = ShardDataset(urls, shuffle_buffer=0, epoch_length=num_images)
        images = [item["views"] for item in itertools.islice(raw, num_images)]
        if not images:
            raise ValueError(f"no samples in {shards!r}")
        preset = get_preset(PRESET, crop_size=crop, num_views=views)
        sampler = ViewSampler(preset)
        dataset = ShardDataset(urls, transform=sampler, shuffle_buffer=0, epoch_length=len(images))
        baseline = VICRegTrainTransform(crop=crop, views=views)
        subset = images[:baseline_images]

        def cpu_stage() -> None:
            for _ in itertools.islice(dataset, len(images)):
                pass

        def per_sample() -> None:
            for data in subset:
                baseline(pil_decode(data))

        def decode() -> None:
            for data in images:
                pil_decode(data)

        passes = {"cpu_stage": [], "baseline": [], "decode": []}
        try:
            torch.set_num_threads(1)
            for data in images[:4]:  # warm-up: libjpeg, kernels, caches
                sampler(data)
                baseline(pil_decode(data))
            for _ in range(repeats):
                passes["cpu_stage"].append(_timed(cpu_stage))
                passes["baseline"].append(_timed(per_sample))
                passes["decode"].append(_timed(decode))
        finally:
            torch.set_num_threads(torch_threads)

        # the device stage's input: real views of these images, cycled up to the batch size
        cut = [sampler(images[i % len(images)]) for i in range(min(device_batch_size, len(images)))]
        batch = [torch.stack([cut[i % len(cut)][v] for i in range(device_batch_size)]) for v in range(views)]

    cpu = rate_summary(passes["cpu_stage"], len(images))
    base = rate_summary(passes["baseline"], len(subset))
    dec = rate_summary(passes["decode"], len(images))
    cpu.update(num_images=len(images), measures="ShardDataset (tar read) + ViewSampler: decode once, "
               f"{views} random resized crops + flips, uint8 (3, {crop}, {crop})")
    base.update(num_images=len(subset), subset=f"first {len(subset)} of the {len(images)} images (it is slow)",
                measures="official VICReg TrainTransform (facebookresearch/vicreg augmentations.py): PIL decode; per "
                "view RandomResizedCrop(bicubic), RandomHorizontalFlip, RandomApply(ColorJitter(0.4, 0.4, 0.2, 0.1), "
                "p=0.8), RandomGrayscale(0.2), PIL GaussianBlur sigma U(0.1, 2) p=1.0/0.1, solarize p=0.0/0.2, "
                "ToTensor, Normalize", input="encoded bytes in memory")
    dec.update(num_images=len(images), measures="Image.open(BytesIO(b)).convert('RGB'): full-size PIL decode only",
               input="encoded bytes in memory")
    # the same ratios within each interleaved round (its passes ran back to back): a check on the
    # headline ratios of best passes, which may come from different rounds
    per_round = {
        "speedup_vs_baseline": [round((len(images) / a) / (len(subset) / b), 3)
                                for a, b in zip(passes["cpu_stage"], passes["baseline"])],
        "fraction_of_decode": [round(c / a, 3) for a, c in zip(passes["cpu_stage"], passes["decode"])],
    }
    speedup = cpu["images_per_s"] / base["images_per_s"]
    fraction = cpu["images_per_s"] / dec["images_per_s"]
    values = {"speedup_vs_baseline": speedup, "fraction_of_decode": fraction}
    targets = {k: {"min": TARGETS[k], "value": round(values[k], 3), "met": values[k] >= TARGETS[k]} for k in TARGETS}

    device_stage = {"batch_size": device_batch_size, "views": views, "crop": crop,
                    "input": "uint8 views cut by ViewSampler",
                    "cpu": time_device_stage(batch, batches=device_batches, device="cpu"), "cuda": None}
    if torch.cuda.is_available():
        device_stage["cuda"] = time_device_stage(batch, batches=device_batches, device="cuda")

    result = {
        "benchmark": "pipeline",
        "machine": machine_info(),
        "threads": 1,
        "threads_note": "cpu_stage, baseline and decode run single-process with torch.set_num_threads(1); "
                        "the device stage on the CPU uses all torch threads (device_stage.cpu.threads)",
        "data": {**source, **_describe(images)},
        "preset": PRESET, "views": views, "crop": crop,
        "images_per_s_counts": f"source images per second; each image yields {views} views",
        "repeats": repeats, "statistic": STATISTIC,
        "cpu_stage": cpu, "baseline": base, "decode": dec,
        "speedup_vs_baseline": speedup, "fraction_of_decode": fraction,
        "per_round": per_round,
        "device_stage": device_stage,
        "targets": targets,
        "meets_targets": all(t["met"] for t in targets.values()),
    }
    if output:
        from ssl_toolkit.cli import write_json

        write_json(output, result)
    return result
