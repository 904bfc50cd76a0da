"""Make short talking videos from real parts: espeak-ng speech over scikit-image photos.

Used by ``scripts/make_sample_video.py`` (the sample shipped in ``samples/``) and by the tests,
which need speech whose text and timing are known. Needs the ``espeak-ng`` program (Debian
package espeak-ng) and scikit-image (the ``dev`` extra).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

SAMPLE_SENTENCES = [
    "Welcome to this short demo about space, coffee and cats.",
    "An astronaut floats high above the blue planet.",
    "A fresh cup of coffee is waiting on the kitchen table.",
    "The orange cat sleeps all afternoon in the warm sun.",
    "A rocket launches from the coast with a bright trail of fire.",
]
SAMPLE_PHOTOS = ["astronaut", "astronaut", "coffee", "chelsea", "rocket"]
_AUDIO_RATE = 22_050  # espeak-ng's native output rate


@dataclass
class SpokenSentence:
    """A sentence in a generated video and when it is spoken, in seconds from the start."""

    text: str
    start_s: float
    end_s: float


def synthesize_speech(text: str, *, words_per_minute: int = 140, voice: str = "en-us+m3") -> np.ndarray:
    """Speak ``text`` with espeak-ng.

    The default voice and rate gave the lowest word error rate with Whisper tiny.en among the
    espeak-ng English voices tried here (about 5% on plain sentences, against 9-25% for the
    plain ``en`` and ``en-us`` voices).

    Returns:
        float32 [n] mono samples at 22,050 Hz in [-1, 1].

    Raises:
        RuntimeError: when espeak-ng is not installed or fails.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-s", str(words_per_minute), "-w", str(out), text],
                       check=True, capture_output=True)
        with wave.open(str(out)) as wav:
            if wav.getframerate() != _AUDIO_RATE or wav.getnchannels() != 1:
                raise RuntimeError(f"unexpected espeak-ng output format: {wav.getparams()}")
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def to_16k(audio22: np.ndarray) -> np.ndarray:
    """espeak-ng's 22.05 kHz output resampled to the transcriber's 16 kHz with PyAV's resampler
    (float32 mono in, float32 mono out)."""
    import av

    frame = av.AudioFrame.from_ndarray(audio22[None, :].astype(np.float32), format="fltp",
                                       layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = _AUDIO_RATE, 0, Fraction(1, _AUDIO_RATE)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=16_000)
    out = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(out).astype(np.float32)


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image
    from skimage import data

    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    image.thumbnail(size)
    canvas = Image.new("RGB", size, (16, 16, 16))
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return np.asarray(canvas)


def make_talking_video(
    out_path: Path,
    sentences: list[str] = SAMPLE_SENTENCES,
    photos: list[str] = SAMPLE_PHOTOS,
    *,
    size: tuple[int, int] = (320, 240),
    fps: int = 4,
    gap_s: float = 0.7,
    lead_in_s: float = 0.5,
) -> list[SpokenSentence]:
    """Write an MP4 (H.264 video, AAC mono audio) where photo i is shown while sentence i is spoken.

    Args:
        out_path: where to write the ``.mp4``.
        sentences: the text to speak, one sentence per photo.
        photos: names of ``skimage.data`` photos (astronaut, coffee, chelsea, rocket...).
        size: frame width and height in pixels (even numbers, for yuv420p).
        fps: video frame rate; a slide show needs few frames, which keeps the file small.
        gap_s: silence between sentences, seconds.
        lead_in_s: silence before the first sentence, seconds.

    Returns:
        When each sentence is spoken (seconds, from the synthesized audio itself).
    """
    import av

    if len(photos) != len(sentences):
        raise ValueError("one photo per sentence")
    audio, timeline = speak(sentences, gap_s=gap_s, lead_in_s=lead_in_s)
    duration = len(audio) / _AUDIO_RATE
    frames = [_photo(name, size) for name in photos]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out_path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "30", "preset": "medium"}
        sound = container.add_stream("aac", rate=_AUDIO_RATE, layout="mono")
        sound.bit_rate = 48_000
        for i in range(int(np.ceil(duration * fps))):
            t = i / fps
            current = next((k for k, s in enumerate(timeline) if t < s.end_s + gap_s), len(frames) - 1)
            frame = av.VideoFrame.from_ndarray(frames[current], format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        block = 1024  # AAC frame size
        for start in range(0, len(audio), block):
            samples = audio[start : start + block]
            if len(samples) < block:
                samples = np.pad(samples, (0, block - len(samples)))
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
            frame.sample_rate = _AUDIO_RATE
            frame.pts = start
            frame.time_base = Fraction(1, _AUDIO_RATE)
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    return timeline


def timeline_json(timeline: list[SpokenSentence]) -> list[dict]:
    """The timeline as JSON-ready dicts (text, start_s, end_s rounded to milliseconds)."""
    return [{k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(s).items()}
            for s in timeline]


# Audio-only containers: (container format, codec, sample format, sample rate in Hz, samples per
# frame). Opus runs at 48 kHz only; the others take espeak-ng's 22.05 kHz as it is.
AUDIO_CONTAINERS = {
    "wav": ("wav", "pcm_s16le", "s16", _AUDIO_RATE, 4096),
    "mp3": ("mp3", "libmp3lame", "fltp", _AUDIO_RATE, 1152),
    "flac": ("flac", "flac", "s16", _AUDIO_RATE, 4096),
    "opus": ("ogg", "libopus", "flt", 48_000, 960),
    "m4a": ("ipod", "aac", "fltp", _AUDIO_RATE, 1024),
}


def speak(sentences: list[str], *, gap_s: float = 0.7, lead_in_s: float = 0.5,
          ) -> tuple[np.ndarray, list[SpokenSentence]]:
    """espeak-ng speech of ``sentences`` as float32 mono at 22.05 kHz, with when each is spoken."""
    timeline: list[SpokenSentence] = []
    pieces = [np.zeros(int(lead_in_s * _AUDIO_RATE), np.float32)]
    cursor = lead_in_s
    for text in sentences:
        speech = synthesize_speech(text)
        timeline.append(SpokenSentence(text, cursor, cursor + len(speech) / _AUDIO_RATE))
        pieces += [speech, np.zeros(int(gap_s * _AUDIO_RATE), np.float32)]
        cursor += len(speech) / _AUDIO_RATE + gap_s
    return np.concatenate(pieces), timeline


def write_audio(audio: np.ndarray | Iterable[np.ndarray], path: Path, container: str) -> Path:
    """Encode float32 mono 22.05 kHz audio into an audio-only file with PyAV.

    Args:
        audio: the samples, or an iterable of consecutive pieces of them (encoded as they come,
            so a recording of hours never has to be in memory).
        container: a key of :data:`AUDIO_CONTAINERS` (``wav``, ``mp3``, ``flac``, ``opus``
            (Ogg), ``m4a`` (AAC in MP4)).
    """
    import av

    fmt, codec, sample_format, rate, block = AUDIO_CONTAINERS[container]
    pieces = [audio] if isinstance(audio, np.ndarray) else audio
    resampler = av.AudioResampler(format=sample_format, layout="mono", rate=rate)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fifo = av.AudioFifo()

        def drain(final: bool) -> None:
            while fifo.samples >= block or (final and fifo.samples):
                frame = fifo.read(min(block, fifo.samples))
                if frame.samples < block and codec in ("aac", "libmp3lame", "libopus"):
                    frame = _pad(frame, block, sample_format, rate)
                for packet in stream.encode(frame):
                    out.mux(packet)

        pts = 0
        for piece in pieces:
            source = av.AudioFrame.from_ndarray(piece[None, :].astype(np.float32), format="fltp",
                                                layout="mono")
            source.sample_rate = _AUDIO_RATE
            source.pts = pts
            source.time_base = Fraction(1, _AUDIO_RATE)
            pts += len(piece)
            for frame in resampler.resample(source):
                fifo.write(frame)
            drain(final=False)
        for frame in resampler.resample(None):
            fifo.write(frame)
        drain(final=True)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_long_speech(path: Path, seconds: float, container: str = "opus",
                      sentences: list[str] | None = None) -> Path:
    """A recording of ``seconds`` of speech: ``sentences`` (default the sample's) spoken by
    espeak-ng once, then repeated with their pauses until the duration is reached, encoded as it
    goes (a 2-hour Ogg/Opus file is about 30 MB and takes about a minute here)."""
    bank, _ = speak(sentences or SAMPLE_SENTENCES)
    total = int(seconds * _AUDIO_RATE)

    def pieces() -> Iterator[np.ndarray]:
        left = total
        while left > 0:
            piece = bank[:left]
            left -= len(piece)
            yield piece

    return write_audio(pieces(), path, container)


def _pad(frame, block: int, sample_format: str, rate: int):
    import av

    array = frame.to_ndarray()
    padded = np.zeros((array.shape[0], block), array.dtype)
    padded[:, : array.shape[1]] = array
    out = av.AudioFrame.from_ndarray(padded, format=sample_format, layout="mono")
    out.sample_rate, out.pts, out.time_base = rate, frame.pts, frame.time_base
    return out


def flate_bomb_pdf(path: Path, inflated_mib: int = 128) -> Path:
    """A one-page PDF whose content stream is ``inflated_mib`` MiB of no-op operators
    (``q Q``) compressed with FlateDecode: about 1 KB on disk per MiB inflated."""
    import zlib

    unit = b"q Q " * (1 << 18)  # 1 MiB
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(unit) for _ in range(inflated_mib)) + compressor.flush()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
               b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(data) + data
               + b"\nendstream"]
    out, offsets = bytearray(b"%PDF-1.7\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path
