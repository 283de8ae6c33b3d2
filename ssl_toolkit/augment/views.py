"""CPU stage of the augmentation pipeline: decode once, cut every view, return uint8.

Runs per sample inside DataLoader workers, so it does only the geometric work — random resized crop
(sampled as torchvision's ``RandomResizedCrop``), horizontal flip and the random shift of DrQ
(Kostrikov et al. 2021, "Image Augmentation Is All You Need") — and leaves all colour work to the
batched device stage (:mod:`ssl_toolkit.augment.gpu`). It is fast because:

* the image is decoded once per sample and every view is cut from that one decode;
* crop boxes are drawn first, in full-size coordinates; when every box still covers at least the
  output resolution at 1/2, 1/4 or 1/8 size, a JPEG is decoded at that reduced size (PIL's
  ``Image.draft``: libjpeg scales in the DCT domain) and the boxes are mapped into it;
* a full-size JPEG decode goes through libjpeg-turbo's own API (simplejpeg) straight into a numpy
  array — the same pixels as PIL, without PIL's per-image overhead and copies; training views use
  its fast integer IDCT and chroma upsampling (``fast_decode``: about 10% faster, within a grey level
  or two of the exact decode), evaluation views the exact ones; other formats, CMYK JPEGs and
  PIL/numpy inputs go through PIL;
* each view is one resize of the uint8 crop, no float images: OpenCV's bilinear when the crop is
  enlarged or shrunk by at most 2× (nearly all random resized crops of ImageNet-sized images; twice
  as fast as torch's antialiased kernel; on photos it differs from it by about 0.5 grey levels on
  average at 1.1×, 1.3 at 1.5× and 2 at 2×), torch's antialiased bilinear — PIL's ``BILINEAR`` —
  when it shrinks more, where aliasing would show;
* a colour JPEG wanted in ``"L"`` mode is decoded as luma only.

Randomness comes from Python's ``random`` (a few dozen draws per sample; far cheaper than torch
calls at this scale). ``DataLoader`` seeds it in every worker (``base_seed + worker_id``, with
``base_seed`` drawn from torch's generator), and Lightning's ``seed_everything`` seeds it in the
main process, so a seeded run cuts the same views.
"""
from __future__ import annotations

import io
import math
import os
import random
import warnings
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssl_toolkit.augment.presets import AugmentPreset, ViewSpec

import cv2
import simplejpeg

ImageInput = Union[bytes, bytearray, memoryview, str, os.PathLike, Image.Image, np.ndarray]

_MODES = ("RGB", "L", None)
_DRAFT_SCALES = (8, 4, 2)
_ATTEMPTS = 10  # as torchvision's RandomResizedCrop.get_params
# uniforms per view: area and log-ratio per attempt, crop position (2), flip (1), shift (2)
_DRAWS = 2 * _ATTEMPTS + 5
# torch's fast uint8 antialiased kernels take up to 4 channels; wider stacks are resized in groups
_MAX_RESIZE_CHANNELS = 4
# up to this much shrinking, plain bilinear (OpenCV) is close enough to antialiased bilinear
_PLAIN_BILINEAR_MAX_SHRINK = 2.0

Box = tuple[int, int, int, int]  # (left, top, width, height) in full-size pixels
_opencv_pid = None  # the process in which OpenCV was last set to one thread


def _one_opencv_thread() -> None:
    """One OpenCV thread per process: the sampler runs per sample in DataLoader workers, which are
    the parallelism; OpenCV's own thread pool would only oversubscribe the cores."""
    global _opencv_pid
    if _opencv_pid != os.getpid():
        cv2.setNumThreads(1)
        _opencv_pid = os.getpid()


class ViewSampler:
    """Cut ``preset.num_views`` geometric views from one image.

    Args:
        preset: the views to make; reads ``crop_size``, ``crop_scale``, ``crop_ratio``, ``flip_p``
            and ``shift_pad`` of each :class:`ViewSpec`.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (1 channel) output; ``None`` keeps the input's
            channels (numpy frame stacks ``H×W×C`` with any ``C``; encoded and PIL images come out
            as ``L`` when grey, else ``RGB``).
        fast_decode: decode full-size JPEGs with libjpeg-turbo's fast IDCT and chroma upsampling
            (training views; pixels within a grey level or two of the exact decode).

    Calling it with encoded bytes (JPEG/PNG/WebP/…), a file path, a PIL image or a uint8 numpy
    array ``H×W`` / ``H×W×C`` returns a list with one uint8 tensor ``(C, H, W)`` per view, each
    with its own random crop, flip and shift. Reduced-size JPEG decoding applies to bytes and paths
    (a PIL image passed in is the caller's object and is left untouched).
    """

    def __init__(self, preset: AugmentPreset, mode: str | None = "RGB", fast_decode: bool = True):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not preset.views:
            raise ValueError(f"preset {preset.name!r} has no views")
        self.preset = preset
        self.mode = mode
        self.fast_decode = fast_decode

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset.name!r}, views={self.preset.num_views}, mode={self.mode!r})"

    def __call__(self, image: ImageInput) -> list[torch.Tensor]:
        _one_opencv_thread()
        source = _Source(image, self.mode)
        full_w, full_h = source.size
        specs = self.preset.views
        draws = [[random.random() for _ in range(_DRAWS)] for _ in specs]
        boxes = [_crop_box(spec, full_w, full_h, u) for spec, u in zip(specs, draws)]
        # how far the decode may shrink: every box must keep ≥ its view's output size
        reduction = min(min(w / s.size_hw[1], h / s.size_hw[0]) for s, (_, _, w, h) in zip(specs, boxes))
        pixels, scale = source.decode(reduction, fast=self.fast_decode)
        views = []
        for spec, (left, top, w, h), u in zip(specs, boxes, draws):
            view = _resize(pixels, (left / scale, top / scale, (left + w) / scale, (top + h) / scale), spec.size_hw)
            flip_u, shift_u = u[2 * _ATTEMPTS + 2], u[2 * _ATTEMPTS + 3 :]
            views.append(_finish(view, source.channels, flip_u < spec.flip_p, spec.shift_pad, shift_u))
        return views


def center_view(
    image: ImageInput,
    size: int | tuple[int, int],
    mode: str | None = "RGB",
    crop_fraction: float = 0.875,
) -> torch.Tensor:
    """The evaluation view: resize the shorter side to ``size / crop_fraction``, center-crop ``size``.

    Args:
        image: as for :class:`ViewSampler`.
        size: output size, int or ``(H, W)``.
        mode: ``"RGB"``, ``"L"`` or ``None`` (keep the input's channels).
        crop_fraction: fraction of the resized image kept (0.875: the usual 224 of 256).

    Returns:
        uint8 tensor ``(C, H, W)``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    source = _Source(image, mode)
    full_w, full_h = source.size
    # scale the image (aspect kept) to cover (out_h, out_w) / crop_fraction, then take the middle
    # out_h × out_w; in full-size pixels that middle is out × `factor`
    factor = min(full_w * crop_fraction / out_w, full_h * crop_fraction / out_h)
    box_w, box_h = out_w * factor, out_h * factor
    left, top = (full_w - box_w) / 2, (full_h - box_h) / 2
    pixels, scale = source.decode(factor, fast=False)
    view = _resize(
        pixels, (left / scale, top / scale, (left + box_w) / scale, (top + box_h) / scale), (out_h, out_w), exact=True
    )
    return _finish(view, source.channels, flip=False)


class _Source:
    """One input image: its full size before decoding, and a decode at a chosen reduction."""

    def __init__(self, image: ImageInput, mode: str | None):
        self.jpeg: bytes | None = None  # JPEG bytes that libjpeg-turbo decodes directly
        self.encoded = False  # a PIL image this module opened itself, so draft() may reconfigure it
        if isinstance(image, (str, os.PathLike)):
            with open(image, "rb") as f:
                image = f.read()
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            size = _jpeg_size(data) if mode is not None else None
            if size is not None:
                self.jpeg, self.size, self.mode = data, size, mode
                self.channels = 1 if mode == "L" else 3
                return
            image, self.encoded = Image.open(io.BytesIO(data)), True
        if isinstance(image, Image.Image):
            self.image = image
            self.size = image.size
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            self.mode = mode or ("L" if grey else "RGB")
            self.channels = 1 if self.mode == "L" else 3
        elif isinstance(image, np.ndarray):
            self.image = _array_in_mode(image, mode)
            self.size = (self.image.shape[1], self.image.shape[0])
            self.channels = 3 if mode == "RGB" else self.image.shape[2]
        else:
            raise TypeError(
                f"cannot make views from {type(image).__name__}; "
                "pass encoded bytes, a path, a PIL image or an H×W×C uint8 numpy array"
            )

    def decode(self, reduction: float, fast: bool = False) -> tuple[np.ndarray, int]:
        """Return the pixels as a uint8 ``(H, W, C)`` array (as decoded, no copy) and how many
        full-size pixels one of its pixels spans (> 1 only for JPEG bytes whose boxes all allow a
        ``reduction``). ``fast``: libjpeg-turbo's fast IDCT and upsampling for full-size JPEGs."""
        if self.jpeg is not None:
            pixels = _turbo_decode(self.jpeg, self.mode, fast) if reduction < _DRAFT_SCALES[-1] else None
            if pixels is not None:
                return pixels, 1
            # a reduced-size decode (PIL's draft), or a JPEG libjpeg-turbo's simple API refuses (CMYK)
            self.image, self.encoded = Image.open(io.BytesIO(self.jpeg)), True
        if isinstance(self.image, np.ndarray):
            return self.image, 1
        img, scale = self.image, 1
        if self.encoded:
            scale = _draft(img, self.mode, reduction)
        if img.mode not in ("L", "RGB") or (img.mode == "RGB" and self.mode == "L"):
            img = img.convert(self.mode)
        # An L image wanted as RGB stays one channel until after the resize (see _finish). RGB is
        # read in PIL's own 4-byte RGBX layout: a plain copy, where packing to RGB costs twice as
        # much; the padding channel is resized along (same speed) and dropped at the end.
        raw = img.tobytes("raw", "RGBX") if img.mode == "RGB" else img.tobytes()
        width, height = img.size
        return np.frombuffer(raw, np.uint8).reshape(height, width, -1), scale


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG header, or None (not a JPEG, or a header libjpeg-turbo refuses)."""
    if data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # PIL then reports what is wrong
        return None
    return width, height


def _turbo_decode(data: bytes, mode: str, fast: bool) -> np.ndarray | None:
    """Full-size H×W×C uint8 decode (luma only for "L"), or None when libjpeg-turbo refuses it."""
    try:
        return simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if mode == "L" else "RGB", fastdct=fast, fastupsample=fast
        )
    except ValueError:  # CMYK, broken data: PIL decodes or reports it
        return None


def _array_in_mode(array: np.ndarray, mode: str | None) -> np.ndarray:
    """A writable uint8 H×W×C array in ``mode`` (RGB: drops alpha; L: ITU-R 601 luma, as PIL)."""
    if array.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"numpy images must be H×W or H×W×C, got shape {array.shape}")
    channels = array.shape[2]
    if mode == "L" and channels in (3, 4):
        array = np.asarray(Image.fromarray(np.ascontiguousarray(array[:, :, :3]), "RGB").convert("L"))[:, :, None]
    elif mode == "RGB" and channels == 4:
        array = array[:, :, :3]
    elif mode is not None and channels not in (1, 3):
        raise ValueError(f"cannot read a {channels}-channel array as {mode!r}; use mode=None to keep channels")
    if not array.flags.writeable:
        array = array.copy()
    return array


def _crop_box(spec: ViewSpec, width: int, height: int, u: list[float]) -> Box:
    """torchvision's ``RandomResizedCrop.get_params``, driven by pre-drawn uniforms ``u``.

    ``crop_scale == (1, 1)`` takes the whole image whatever its aspect ratio.
    """
    if tuple(spec.crop_scale) == (1.0, 1.0):
        return 0, 0, width, height
    area = width * height
    log_lo, log_hi = math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])
    lo, hi = spec.crop_scale
    for attempt in range(_ATTEMPTS):
        target_area = area * (lo + (hi - lo) * u[2 * attempt])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * attempt + 1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2 * _ATTEMPTS] * (height - h + 1))
            left = int(u[2 * _ATTEMPTS + 1] * (width - w + 1))
            return left, top, w, h
    # fallback: central crop with the aspect ratio clamped into range
    in_ratio = width / height
    if in_ratio < min(spec.crop_ratio):
        w, h = width, int(round(width / min(spec.crop_ratio)))
    elif in_ratio > max(spec.crop_ratio):
        w, h = int(round(height * max(spec.crop_ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _draft(img: Image.Image, mode: str, reduction: float) -> int:
    """Configure a JPEG's decoder for the largest 1/2^k size with ``reduction`` ≥ 2^k, and for luma
    only when ``mode == "L"``. Returns the reduction applied (1 for other formats)."""
    scale = next((s for s in _DRAFT_SCALES if reduction >= s), 1)
    if scale == 1 and mode != "L":
        return 1
    w, h = img.size
    # PIL picks the largest power of two ≤ min(w // size_w, h // size_h), i.e. exactly `scale`
    applied = img.draft(mode, (max(w // scale, 1), max(h // scale, 1)))
    if applied is None:  # not a JPEG, or already decoded
        return 1
    return int(round(w / applied[1][2]))


def _resize(
    pixels: np.ndarray, box: tuple[float, float, float, float], size_hw: tuple[int, int], exact: bool = False
) -> np.ndarray:
    """Crop ``box`` (left, top, right, bottom; rounded to whole pixels) from ``(H, W, C)`` pixels
    and resize it to ``size_hw`` with bilinear interpolation on uint8 — antialiased when it shrinks
    by more than 2× or when ``exact`` (evaluation views: always PIL's antialiased ``BILINEAR``).
    Returns an ``(h, w, C)`` array (a view of ``pixels`` when no resize is needed)."""
    height, width = pixels.shape[:2]
    left, top = min(int(round(box[0])), width - 1), min(int(round(box[1])), height - 1)
    right, bottom = max(min(int(round(box[2])), width), left + 1), max(min(int(round(box[3])), height), top + 1)
    out = pixels[top:bottom, left:right]
    out_h, out_w = size_hw
    if out.shape[:2] == (out_h, out_w):
        return out
    shrink = max((bottom - top) / out_h, (right - left) / out_w)
    channels = out.shape[2]
    if not exact and shrink <= _PLAIN_BILINEAR_MAX_SHRINK and channels <= 4:
        resized = cv2.resize(out, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        return resized[:, :, None] if resized.ndim == 2 else resized
    # torch's uint8 antialiased kernel wants (1, C, H, W) in channels-last memory: a view of HWC
    with warnings.catch_warnings():
        # PIL's bytes are read-only; they are only read here (resized into a new tensor)
        warnings.simplefilter("ignore", UserWarning)
        chw = torch.from_numpy(out)[None].permute(0, 3, 1, 2)
    groups = [
        F.interpolate(g, size=size_hw, mode="bilinear", antialias=True, align_corners=False)
        for g in chw.split(_MAX_RESIZE_CHANNELS, dim=1)
    ]
    resized = groups[0] if len(groups) == 1 else torch.cat(groups, dim=1)
    return resized.numpy()[0].transpose(1, 2, 0)


def _finish(
    hwc: np.ndarray, channels: int, flip: bool, shift_pad: int = 0, shift_u: list[float] | None = None
) -> torch.Tensor:
    """To ``channels`` channels, flipped and DrQ-shifted as drawn: a new contiguous ``(C, h, w)`` tensor.

    Done in numpy, whose strided uint8 copies (channels-last → CHW, reversed columns) run several
    times faster than torch's and whose per-call overhead is a fraction of torch's; the flip costs
    nothing extra inside the one copy.
    """
    if hwc.shape[2] > channels:  # RGBX: drop the padding channel
        hwc = hwc[:, :, :channels]
    if shift_pad > 0:
        # DrQ: replicate-pad by shift_pad, crop back at a random offset ≡ indexing with clamped indices
        height, width = hwc.shape[:2]
        span = 2 * shift_pad + 1
        dy, dx = (min(int(u * span), span - 1) - shift_pad for u in shift_u)
        rows = np.clip(np.arange(height) + dy, 0, height - 1)
        cols = np.clip(np.arange(width) + dx, 0, width - 1)
        hwc = hwc[rows[:, None], cols[None, ::-1] if flip else cols[None, :]]
    elif flip:
        hwc = hwc[:, ::-1]
    chw = hwc.transpose(2, 0, 1)
    if chw.shape[0] < channels:  # a grey image wanted as RGB, resized while still one channel
        chw = np.broadcast_to(chw, (channels, *chw.shape[1:]))
    return torch.from_numpy(np.array(chw, order="C"))  # always a copy: never alias the decoded source
