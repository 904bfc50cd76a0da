"""Split the wall time of `narra process FILE` into Dagster's overhead and the work itself.

    python scripts/time_process.py [FILE]      (default: samples/sample_video.mp4)

Runs, each in a fresh process and a fresh NARRA_HOME: (1) `narra process FILE`, and (2) a plain
Python loop calling the same functions on the same file (probe, audio, transcription, chunking,
embedding, index upsert) with the same resources. Dagster overhead = (1) - (2).
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN = r'''
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from narra_dagster.defs.video import avio
from narra_dagster.defs.video.chunking import chunk_segments
from narra_dagster.core.intake import store_upload
from narra_dagster.resources import FasterWhisperTranscriber, LanceSearchIndex, LocalMediaStore, Ct2TextEmbedder
from narra_dagster.resources.search_index import IndexRow
import lancedb
t = {"imports_s": time.perf_counter() - t0}
def lap(name, start):
    t[name] = time.perf_counter() - start
s = time.perf_counter(); tr = FasterWhisperTranscriber(); tr._ensure_loaded(); em = Ct2TextEmbedder(); em._ensure_loaded(); lap("model_load_s", s)
store, index = LocalMediaStore(), LanceSearchIndex()
s = time.perf_counter(); up = store_upload(Path(sys.argv[1]), store); key = up.partition_key; lap("ingest_s", s)
s = time.perf_counter(); avio.probe(store.local_path(key, "source")); lap("probe_s", s)
s = time.perf_counter()
with store.writer(key, "audio.wav") as tmp:
    avio.extract_audio(store.local_path(key, "source"), tmp)
lap("audio_s", s)
audio = avio.read_wav(store.local_path(key, "audio.wav"))
s = time.perf_counter(); transcript = tr.transcribe(audio); lap("transcribe_s", s)
s = time.perf_counter(); chunks = chunk_segments(transcript.segments); lap("chunk_s", s)
s = time.perf_counter(); vectors = em.embed([c.text for c in chunks]); lap("embed_s", s)
s = time.perf_counter()
index.upsert_partition(key, "video", [IndexRow(media_id=key, kind="video", origin="video_index_rows", chunk_index=c.chunk_index, start_s=c.start_s, end_s=c.end_s, text=c.text, vector=v.tolist()) for c, v in zip(chunks, vectors)], origin="video_index_rows")
lap("index_s", s)
t["audio_duration_s"] = len(audio) / 16000
print(json.dumps(t))
'''


def _timed(cmd, env):
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    import os

    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "samples" / "sample_video.mp4").resolve()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        env_a = dict(os.environ, NARRA_HOME=a, DAGSTER_HOME=f"{a}/dagster")
        env_b = dict(os.environ, NARRA_HOME=b, DAGSTER_HOME=f"{b}/dagster")
        narra_s, out = _timed(["narra", "process", str(path), "--json"], env_a)
        steps = json.loads(out)[0]["steps"]
        plain_s, out = _timed([sys.executable, "-c", PLAIN, str(path)], env_b)
        plain = json.loads(out)
    model_s = plain["model_load_s"] + plain["transcribe_s"] + plain["embed_s"]
    print(f"file: {path.name}, audio {plain['audio_duration_s']:.1f} s")
    print(f"narra process wall:        {narra_s:6.2f} s   steps: " +
          ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    print(f"plain Python loop wall:    {plain_s:6.2f} s   " +
          ", ".join(f"{k} {v:.2f}" for k, v in plain.items() if k != "audio_duration_s"))
    print(f"model time (load + inference): {model_s:.2f} s; transcription real-time factor "
          f"{plain['transcribe_s'] / plain['audio_duration_s']:.3f}")
    print(f"Dagster overhead:          {narra_s - plain_s:6.2f} s ({(narra_s - plain_s) / narra_s:.0%} of narra's wall time)")


if __name__ == "__main__":
    main()
