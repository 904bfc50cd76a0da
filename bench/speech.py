"""python -m bench.speech [--only vad,memory] [--long-s 7200] [--work DIR]

Speech that ends well: two measurements the reliability issue asks for.

- ``vad``: word error rate (jiwer, against the text espeak-ng was given) of the default
  transcriber with and without voice activity detection, on sentences spoken by several
  espeak-ng voices, and the segments each setting invents on recordings where nobody speaks
  (digital silence, white noise, low hum, room tone).
- ``memory``: peak memory of the whole ``narra process`` process tree (sampled every 0.1 s) and
  its wall time on 10 s, 10 min and ``--long-s`` (default 2 h) of speech, each in a fresh home:
  flat in duration is the goal, since audio is decoded and transcribed as a stream of blocks.

Prints one table per section and writes everything to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, fresh_home, log

# Sentences nobody tuned the models on: everyday English of several shapes (numbers, names,
# questions), spoken below by voices of both sexes and two accents.
SENTENCES = [
    "The train to Edinburgh leaves from platform four at half past nine.",
    "Could you send me the quarterly report before Friday afternoon?",
    "Heavy rain is expected across the northern hills tonight.",
    "She planted tomatoes, beans and sunflowers along the garden wall.",
    "The museum opens at ten and closes early on public holidays.",
    "Please remember to switch off the lights when you leave the office.",
    "Our new bakery sells fresh bread, croissants and apple pie every morning.",
    "The committee will vote on the budget proposal next Tuesday.",
]
VOICES = ["en-us+m3", "en-us+f3", "en+m1", "en-gb+f2"]


_NUMBERS = dict(enumerate("zero one two three four five six seven eight nine ten eleven "
                           "twelve".split()))


def _norm(text: str) -> str:
    """Lower case, no punctuation, digits 0-12 as words (Whisper writes "platform 4")."""
    words = re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()
    return " ".join(_NUMBERS.get(int(w), w) if w.isdigit() else w for w in words)


def _wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(_norm(reference), _norm(hypothesis)))


def _resample(audio22: np.ndarray) -> np.ndarray:
    """22.05 kHz espeak-ng output to the transcriber's 16 kHz, with PyAV's resampler."""
    from fractions import Fraction

    import av

    frame = av.AudioFrame.from_ndarray(audio22[None, :].astype(np.float32), format="fltp",
                                       layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = 22_050, 0, Fraction(1, 22_050)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=16_000)
    out = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(out).astype(np.float32)


def _no_speech(seconds: float = 60.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = int(seconds * 16_000)
    t = np.arange(n) / 16_000
    return {
        "silence": np.zeros(n, np.float32),
        "white noise": (0.1 * rng.standard_normal(n)).astype(np.float32),
        "50 Hz hum": (0.05 * np.sin(2 * np.pi * 50 * t)).astype(np.float32),
        "room tone": np.convolve(0.02 * rng.standard_normal(n), np.ones(32) / 32, "same").astype(np.float32),
    }


def vad() -> dict:
    from narra_dagster.resources import FasterWhisperTranscriber
    from tests.support.media import speak, synthesize_speech

    out: dict = {"wer": {}, "invented_segments": {}}
    speech = []
    for voice in VOICES:
        for text in SENTENCES:
            speech.append((voice, text, _resample(synthesize_speech(text, voice=voice))))
    recording, _ = speak(SENTENCES)  # the sentences in one recording, with pauses
    long_audio = _resample(recording)
    for vad_filter in (False, True):
        model = FasterWhisperTranscriber(vad_filter=vad_filter)
        label = "vad on" if vad_filter else "vad off"
        refs, hyps, started = [], [], time.perf_counter()
        for voice, text, audio in speech:
            refs.append(text)
            hyps.append(" ".join(s.text for s in model.transcribe_blocks([(0.0, audio)]).segments))
        per_voice = {v: round(_wer(" ".join(r for (vv, _, _), r in zip(speech, refs) if vv == v),
                                   " ".join(h for (vv, _, _), h in zip(speech, hyps) if vv == v)), 4)
                     for v in VOICES}
        whole = " ".join(s.text for s in model.transcribe_blocks([(0.0, long_audio)]).segments)
        out["wer"][label] = {"all": round(_wer(" ".join(refs), " ".join(hyps)), 4),
                             "per_voice": per_voice,
                             "one_recording": round(_wer(" ".join(SENTENCES), whole), 4),
                             "seconds": round(time.perf_counter() - started, 1)}
        out["invented_segments"][label] = {
            name: len(model.transcribe_blocks([(0.0, audio)]).segments)
            for name, audio in _no_speech().items()}
        log(f"{label}: {out['wer'][label]} {out['invented_segments'][label]}")
    return out


def memory(work: Path, long_s: float) -> dict:
    from tests.support.media import write_long_speech
    from tests.support.memory import run_tree_measured

    rows = []
    for seconds in (10.0, 600.0, long_s):
        media = work / f"speech-{int(seconds)}s.opus"
        if not media.exists():
            log(f"making {seconds:.0f} s of speech")
            write_long_speech(media, seconds)
        env = fresh_home(work, f"home-{int(seconds)}")
        log(f"narra process on {seconds:.0f} s of speech")
        run = run_tree_measured([sys.executable, "-m", "narra_dagster.cli", "process", str(media),
                                 "--json"], env=env, cwd=REPO, timeout=4 * 3600)
        result = json.loads(run.stdout) if run.stdout.strip().startswith(("{", "[")) else {}
        rows.append({"speech_s": seconds, "exit": run.returncode, "wall_s": round(run.wall_s, 1),
                     "peak_tree_mb": round(run.peak_bytes / 2**20), "size_mb":
                     round(media.stat().st_size / 2**20, 1), "result": result,
                     "stderr_tail": run.stderr[-500:] if run.returncode else ""})
        log(f"{seconds:.0f} s: exit {run.returncode}, {run.wall_s:.0f} s, "
            f"peak {run.peak_bytes / 2**20:.0f} MB")
    return {"runs": rows}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.speech", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="vad,memory", help="sections: vad,memory")
    p.add_argument("--long-s", type=float, default=7200.0, help="the long recording, seconds")
    p.add_argument("--work", default=os.environ.get("NARRA_BENCH_WORK", str(REPO / ".bench-work")))
    p.add_argument("--out", default="bench-speech.json")
    args = p.parse_args()
    work = Path(args.work) / "speech"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    sections = set(args.only.split(","))
    if "vad" in sections:
        results["vad"] = vad()
        print("\nword error rate (lower is better) and segments invented where nobody speaks")
        print(f"{'setting':<8} {'WER all':>8} {'one rec.':>9} " +
              " ".join(f"{v:>9}" for v in VOICES) + "  invented (silence, noise, hum, room)")
        for label, w in results["vad"]["wer"].items():
            inv = results["vad"]["invented_segments"][label]
            print(f"{label:<8} {w['all']:>8.3f} {w['one_recording']:>9.3f} " +
                  " ".join(f"{w['per_voice'][v]:>9.3f}" for v in VOICES) + "  " +
                  ", ".join(str(n) for n in inv.values()))
    if "memory" in sections:
        results["memory"] = memory(work, args.long_s)
        print("\nnarra process on speech: wall time and the process tree's peak memory")
        print(f"{'speech':>8} {'file MB':>8} {'exit':>5} {'wall s':>8} {'peak MB':>8}")
        for r in results["memory"]["runs"]:
            print(f"{r['speech_s']:>8.0f} {r['size_mb']:>8.1f} {r['exit']:>5} {r['wall_s']:>8.1f} "
                  f"{r['peak_tree_mb']:>8}")
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
