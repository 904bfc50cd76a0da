"""Picking the frames of a video worth looking at, with PyAV.

Two ways to get candidates, chosen per video:

- **keyframes**: decode only the keyframes (``codec_context.skip_frame = "NONKEY"``: the decoder
  skips every other frame, so this costs a few frames' decoding per keyframe interval). Used when
  the video's keyframes are at most ``max_keyframe_gap_s`` apart, which is true of most encoded
  video: x264 and other encoders put a keyframe at every scene cut (scenecut detection) and at
  least every few seconds for seeking.
- **interval**: when keyframes are sparser than that (a screen recording, a slide show with one
  keyframe), decode every frame and keep the first one at or after each multiple of
  ``interval_s``; only those are converted to RGB.

Then a scene-change filter keeps a candidate only when it differs from the last frame kept: the
share of pixels of a 64x64 grey thumbnail that changed by more than 16 grey levels must reach
``min_change`` (2% by default, so a caption appearing on a still picture counts as a change while
compression noise does not). The number of frames is bounded: the interval grows to
``duration / max_frames`` for long videos, candidates are compared as they are decoded, and at
most ``max_frames + 1`` frames are held at any time (past that, every other one is dropped and
the interval doubles), so a video longer than its header says, or without a duration, is
sampled within the same memory; at most ``max_frames`` are returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

THUMB_SIDE = 64
PIXEL_DELTA = 16  # grey levels: above JPEG/H.264 noise on flat areas at usual quality
MIN_CHANGE = 0.02
INTERVAL_S = 1.0
MAX_KEYFRAME_GAP_S = 4.0
MAX_FRAMES = 120
MAX_SIDE = 1280  # frames kept for OCR and labels are scaled down to this longest side, pixels


@dataclass
class SampledFrame:
    """One frame kept: ``time_s`` from the start of the video (seconds), ``image`` uint8 RGB
    [h, w, 3] at most :data:`MAX_SIDE` pixels on its longest side, ``keyframe`` whether it was a
    keyframe, ``change`` the share of thumbnail pixels that changed since the last frame kept
    (1.0 for the first)."""

    time_s: float
    image: np.ndarray
    keyframe: bool
    change: float


@dataclass
class Sampling:
    """What :func:`sample_frames` did: ``mode`` (``keyframes`` | ``interval`` | ``no_video``),
    ``keyframes`` seen, ``candidates`` compared, the ``frames`` kept, the source ``width`` and
    ``height`` in pixels, ``duration_s``, ``interval_s`` used, ``decode_s`` seconds spent."""

    mode: str
    keyframes: int
    candidates: int
    frames: list[SampledFrame]
    width: int
    height: int
    duration_s: float
    interval_s: float
    decode_s: float


def _grey_thumb(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).convert("L").resize((THUMB_SIDE, THUMB_SIDE)),
                      dtype=np.int16)


def change_between(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels of two grey thumbnails (int16 [64, 64]) that differ by more than
    :data:`PIXEL_DELTA` grey levels, in [0, 1]."""
    return float(np.mean(np.abs(a - b) > PIXEL_DELTA))


def _rgb(frame, width: int, height: int) -> np.ndarray:
    scale = min(1.0, MAX_SIDE / max(width, height))
    w, h = max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)
    return frame.to_ndarray(format="rgb24", width=w, height=h)


def sample_frames(path: Path, *, interval_s: float = INTERVAL_S, max_frames: int = MAX_FRAMES,
                  max_keyframe_gap_s: float = MAX_KEYFRAME_GAP_S,
                  min_change: float = MIN_CHANGE) -> Sampling:
    """Sample the frames of a video that show something new (see the module docstring).

    Args:
        path: a video file PyAV can open (validated upstream by ``video_source``).
        interval_s: grid step of the interval mode, seconds.
        max_frames: upper bound on frames returned.
        max_keyframe_gap_s: the largest gap between keyframes (seconds, including the start and
            end of the video) for which keyframe-only decoding is used.
        min_change: scene-change threshold, share of thumbnail pixels.

    Returns:
        A :class:`Sampling`; ``mode == "no_video"`` and no frames for an audio-only file.

    Raises:
        av.error.FFmpegError: when the file cannot be decoded (it passed validation, so this is
            rare: a stream damaged past its first frames).
    """
    import time

    import av

    started = time.perf_counter()
    with av.open(str(path), metadata_errors="ignore") as container:
        if not container.streams.video:
            return Sampling("no_video", 0, 0, [], 0, 0, 0.0, interval_s, 0.0)
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else (container.duration or 0) / 1e6)
        # Demuxing (no decoding) tells where the keyframes are.
        times = sorted(max(0.0, float(p.pts * p.time_base)) for p in container.demux(stream)
                       if p.is_keyframe and p.pts is not None)
    step = max(interval_s, duration / max_frames if duration else interval_s)
    gaps = np.diff([0.0, *times, max(duration, times[-1] if times else 0.0)])
    mode = "keyframes" if times and float(np.max(gaps)) <= max_keyframe_gap_s else "interval"
    candidates = 0
    kept: list[SampledFrame] = []
    last = None
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if mode == "keyframes":
            stream.codec_context.skip_frame = "NONKEY"
        next_t = 0.0
        for frame in container.decode(stream):
            t = max(0.0, float(frame.time or 0.0))
            # Keyframes closer together than the step are thinned to the step; each candidate is
            # compared with the last frame kept as it is decoded, and only a changed one is kept.
            if t + 1e-6 >= next_t:
                candidates += 1
                image = _rgb(frame, width, height)
                thumb = _grey_thumb(image)
                change = 1.0 if last is None else change_between(thumb, last)
                if change >= min_change:
                    kept.append(SampledFrame(round(t, 3), image, bool(frame.key_frame),
                                             round(change, 4)))
                    last = thumb
                    if len(kept) > max_frames:
                        # A video longer than its header said (or without a duration): keep
                        # every other frame and double the step, so at most max_frames + 1
                        # frames are ever held, whatever the real duration.
                        kept, step = kept[::2], step * 2
                next_t = (int(t / step) + 1) * step
    if len(kept) > max_frames:
        kept = [kept[int(i * len(kept) / max_frames)] for i in range(max_frames)]
    return Sampling(mode, len(times), candidates, kept, width, height, round(duration, 3),
                    round(step, 3), time.perf_counter() - started)
