"""Probing and audio extraction with PyAV (FFmpeg's libraries, no ffmpeg program needed).

Every PyAV or FFmpeg error on a user's file becomes a :class:`BadInputError` with a code and a
sentence a person understands: an empty file, a file that is not media at all, a truncated or
corrupt file, a container without audio or video streams.
"""

from __future__ import annotations

import wave
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np

from narra_dagster.core import limits
from narra_dagster.core.errors import BadInputError

AUDIO_RATE = 16_000

# ISO-BMFF brands of still images (HEIC/HEIF/AVIF): those files are the image kind's.
_STILL_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"avif")
EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv",
              ".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".mka", ".wma")


def recognise(head: bytes) -> bool:
    """True when a file's first bytes (at least 16; 512 are plenty) are an audio or video
    container: ISO-BMFF (MP4, MOV, M4A), Matroska/WebM, AVI, WAV, MPEG-TS, MPEG-PS, FLV, Ogg,
    FLAC, MP3 (ID3 tag or MPEG audio frame sync) or ADTS AAC, from their magic numbers."""
    if len(head) < 4:
        return False
    if head[4:8] == b"ftyp":
        return head[8:12] not in _STILL_BRANDS
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"WAVE"):
        return True
    if head.startswith((b"\x1a\x45\xdf\xa3", b"OggS", b"fLaC", b"FLV", b"ID3", b"\x00\x00\x01\xba")):
        return True
    if head[0] == 0x47 and len(head) > 188 and head[188] == 0x47:  # MPEG-TS sync bytes
        return True
    # MPEG audio frame sync (11 bits set); ADTS AAC is the 12-bit 0xFFF variant
    return head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def _open(path: Path):
    import av

    size = path.stat().st_size
    if size == 0:
        raise BadInputError("the file is empty (0 bytes)", code="empty_file")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError as exc:
        with open(path, "rb") as fh:
            looks_like_media = recognise(fh.read(512))
        if looks_like_media:
            raise BadInputError(
                "the file starts like an audio/video container but cannot be opened: it is "
                f"truncated or corrupt (FFmpeg: {exc.strerror})", code="corrupt_media") from exc
        raise BadInputError(
            f"not an audio or video file: its bytes match no media format (FFmpeg: {exc.strerror})",
            code="not_media",
        ) from exc
    except av.error.FFmpegError as exc:
        raise BadInputError(f"FFmpeg cannot open the file: {exc}", code="corrupt_media") from exc


def declared_seconds(path: Path) -> float | None:
    """The duration a file's container header declares (seconds), or None when it declares
    none or cannot be opened. Reads the header only (milliseconds for any length); a hostile
    header can lie, so this only sizes batch runs, never limits work (see :func:`probe`)."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return container.duration / av.time_base if container.duration else None
    except Exception:  # noqa: BLE001 - any unreadable file: unknown, its own stage will say why
        return None


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def probe(path: Path, *, max_seconds: float | None = None) -> dict[str, Any]:
    """Describe a media file and check that its streams decode.

    Decodes the first frame of each audio and video stream (cheap) and demuxes every packet to
    the end, so a file truncated mid-stream is caught here rather than halfway through a model.
    Packets past ``max_seconds`` (default ``NARRA_MEDIA_MAX_SECONDS``) end the probe as
    ``too_large``: what counts is the timestamps found, not the duration a header declares.

    Returns:
        ``{"container", "size_bytes", "duration_s", "bit_rate", "streams": [...],
        "video": {codec, width, height (pixels), fps, frames} | None,
        "audio": {codec, sample_rate (Hz), channels} | None}``.

    Raises:
        BadInputError: ``empty_file``, ``not_media``, ``corrupt_media``, ``no_streams`` or
            ``too_large``.
    """
    import av

    if max_seconds is None:
        max_seconds = limits.current().media_max_seconds
    with _open(path) as container:
        streams = []
        for s in container.streams:
            info: dict[str, Any] = {"index": s.index, "type": s.type,
                                    "codec": s.codec_context.name if s.codec_context else None}
            if s.type == "video":
                info.update(width=s.codec_context.width, height=s.codec_context.height,
                            fps=_float(s.average_rate or s.guessed_rate), frames=s.frames or None)
            elif s.type == "audio":
                info.update(sample_rate=s.codec_context.sample_rate, channels=s.codec_context.channels)
            if s.duration is not None and s.time_base is not None:
                info["duration_s"] = float(s.duration * s.time_base)
            streams.append(info)
        video = next((s for s in streams if s["type"] == "video"), None)
        audio = next((s for s in streams if s["type"] == "audio"), None)
        if video is None and audio is None:
            raise BadInputError("the file has neither an audio nor a video stream", code="no_streams")
        wanted = [s for s in container.streams if s.type in ("audio", "video")]
        decoded: set[int] = set()
        last_pts_s = 0.0
        try:
            for packet in container.demux(wanted):
                if packet.pts is not None and packet.time_base is not None:
                    last_pts_s = max(last_pts_s, float(packet.pts * packet.time_base))
                    if last_pts_s > max_seconds:
                        raise BadInputError(
                            f"the media runs past the {max_seconds:g} s limit "
                            "(NARRA_MEDIA_MAX_SECONDS)", code="too_large")
                if packet.stream.index not in decoded and packet.size:
                    if packet.decode():
                        decoded.add(packet.stream.index)
        except av.error.FFmpegError as exc:
            raise BadInputError(
                f"the file is corrupt or truncated near {last_pts_s:.1f} s (FFmpeg: {exc})",
                code="corrupt_media",
            ) from exc
        missing = [s.index for s in wanted if s.index not in decoded]
        if missing:
            raise BadInputError(
                f"stream(s) {missing} contain no decodable frame: the file is corrupt or truncated",
                code="corrupt_media",
            )
        duration = (container.duration / av.time_base) if container.duration else last_pts_s
        return {
            "container": container.format.name,
            "size_bytes": path.stat().st_size,
            "duration_s": float(duration),
            "bit_rate": container.bit_rate or None,
            "streams": streams,
            "video": video,
            "audio": audio,
        }


def extract_audio(path: Path, out_wav: Path, *, max_seconds: float | None = None) -> dict[str, Any]:
    """Decode the first audio stream, mix to mono and resample to 16 kHz 16-bit PCM WAV.

    Streams: each decoded frame is resampled and appended to the WAV as it comes, so memory
    stays at a few frames whatever the duration. A file without an audio stream gives a valid
    WAV with zero samples.

    Args:
        max_seconds: decoded audio longer than this fails as ``too_large`` (a header may lie
            about the duration; the decoded samples do not). Default: ``NARRA_MEDIA_MAX_SECONDS``.

    Returns:
        ``{"has_audio": bool, "samples": int, "duration_s": float, "sample_rate": 16000}``.

    Raises:
        BadInputError: ``corrupt_media`` when decoding fails, ``too_large`` past ``max_seconds``.
    """
    import av

    if max_seconds is None:
        max_seconds = limits.current().media_max_seconds
    max_samples = int(max_seconds * AUDIO_RATE)
    samples = 0
    with _open(path) as container, wave.open(str(out_wav), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(AUDIO_RATE)
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is not None:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)

            def write(frames) -> None:
                nonlocal samples
                for out in frames:
                    pcm = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                    samples += len(pcm)
                    if samples > max_samples:
                        raise BadInputError(
                            f"the audio is longer than the {max_seconds:g} s limit "
                            "(NARRA_MEDIA_MAX_SECONDS)", code="too_large")
                    wav.writeframes(pcm.tobytes())

            try:
                for frame in container.decode(stream):
                    frame.pts = None  # let the resampler count samples; source pts can jump
                    write(resampler.resample(frame))
                write(resampler.resample(None))
            except av.error.FFmpegError as exc:
                raise BadInputError(f"the audio track cannot be decoded: {exc}",
                                    code="corrupt_media") from exc
    return {"has_audio": stream is not None, "samples": samples,
            "duration_s": samples / AUDIO_RATE, "sample_rate": AUDIO_RATE}


def wav_seconds(path: Path) -> float:
    """Duration of a WAV file in seconds, from its header (no samples read)."""
    with wave.open(str(path)) as wav:
        return wav.getnframes() / wav.getframerate()


# Blocks are cut at the quietest 100 ms within the last CUT_SEARCH_S seconds of each block, so a
# word is rarely split between two blocks (a pause between sentences is the quietest moment).
CUT_SEARCH_S = 20.0
_CUT_FRAME = AUDIO_RATE // 10


def iter_wav_blocks(path: Path, block_s: float) -> Iterator[tuple[float, np.ndarray]]:
    """Read a 16-bit mono WAV as consecutive blocks of about ``block_s`` seconds.

    Each block but the last ends at the quietest 100 ms frame (lowest RMS) in its last
    :data:`CUT_SEARCH_S` seconds; the rest is carried into the next block. At most one block and
    its carry-over are in memory: float32, ``block_s + CUT_SEARCH_S`` seconds, 4 bytes a sample
    (300 s: about 20 MB).

    Yields:
        ``(offset_s, audio)``: the block's start in seconds from the file's start, and float32
        [n_samples] in [-1, 1] at 16 kHz. Nothing for an empty WAV.
    """
    block = int(block_s * AUDIO_RATE)
    search = min(int(CUT_SEARCH_S * AUDIO_RATE), block // 2)
    offset = 0
    carry = np.zeros(0, np.float32)
    with wave.open(str(path)) as wav:
        while True:
            raw = wav.readframes(max(0, block - len(carry)))
            fresh = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0
            audio = np.concatenate([carry, fresh]) if len(carry) else fresh
            if len(audio) == 0:
                return
            if len(audio) < block:  # the end of the file
                yield offset / AUDIO_RATE, audio
                return
            tail = audio[len(audio) - search:]
            frames = len(tail) // _CUT_FRAME
            rms = np.sqrt((tail[: frames * _CUT_FRAME].reshape(frames, _CUT_FRAME) ** 2).mean(axis=1))
            cut = len(audio) - search + int(np.argmin(rms)) * _CUT_FRAME + _CUT_FRAME // 2
            yield offset / AUDIO_RATE, audio[:cut]
            offset += cut
            carry = audio[cut:].copy()


def read_wav(path: Path) -> np.ndarray:
    """Read a 16-bit mono WAV as float32 [n] in [-1, 1] (the transcribers' input)."""
    with wave.open(str(path)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


