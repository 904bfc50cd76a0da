"""A mixed folder, as a new user would drop it: videos, audio files, a photo, a PDF and a few
broken or misnamed files. One `narra process` call and the inbox watched by a real daemon must
give every file the same outcome."""

import io
import json
import shutil
import subprocess
from pathlib import Path

import pypdf
import pytest

from tests.support.media import make_talking_video, speak, write_audio

from .conftest import REPO, subprocess_env
from .services import daemon, wait_for

MIME_SPEC = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")


def _mixed_folder(folder: Path) -> dict[str, tuple[str, str | None]]:
    """Write the folder; return file name -> (expected status, expected error class)."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True)
    make_talking_video(folder / "talk.mp4", ["The lighthouse keeper waves from the rocks."],
                       ["rocket"])
    audio, _ = speak(["Please remember to water the garden every morning."])
    write_audio(audio, folder / "memo.wav", "wav")
    write_audio(audio[: len(audio) // 2], folder / "half memo.mp3", "mp3")
    Image.fromarray(skimage.data.chelsea()).save(folder / "cat.jpg", quality=90)
    writer = pypdf.PdfWriter()
    for page in pypdf.PdfReader(MIME_SPEC).pages[:2]:
        writer.add_page(page)
    writer.write(folder / "spec.pdf")
    # broken and misnamed
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.pdf").write_text("a text file that says it is a PDF\n" * 5)
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buffer, "JPEG")
    (folder / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.mp4", "PNG")
    (folder / "readme.txt").write_text("nothing narra can process\n")
    return {
        "talk.mp4": ("succeeded", None), "memo.wav": ("succeeded", None),
        "half memo.mp3": ("succeeded", None), "cat.jpg": ("succeeded", None),
        "spec.pdf": ("succeeded", None), "empty.mp4": ("failed", "empty_file"),
        "notes.pdf": ("failed", "not_pdf"), "cut.jpg": ("failed", "corrupt_image"),
        "astronaut.mp4": ("failed", "type_mismatch"), "readme.txt": ("failed", "unsupported_type"),
    }


@pytest.mark.daemon
def test_a_mixed_folder_ends_the_same_through_narra_process_and_the_inbox(tmp_path):
    expected = _mixed_folder(tmp_path / "drop")

    # 1. One `narra process` call over the folder.
    home_a = tmp_path / "a"
    done = subprocess.run(["narra", "process", "--json", str(tmp_path / "drop")],
                          env=subprocess_env(home_a), cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]  # some files are bad
    by_process = {r["source_name"]: (r["status"], r["error_class"])
                  for r in json.loads(done.stdout)}
    assert by_process == expected

    # 2. The same files dropped into the inbox, with the daemon running.
    home_b = tmp_path / "b"
    env = subprocess_env(home_b)
    (home_b / "dagster").mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", home_b / "dagster" / "dagster.yaml")
    inbox = home_b / "inbox"
    inbox.mkdir(parents=True)
    with daemon(env, tmp_path / "daemon.log") as proc:
        for path in sorted((tmp_path / "drop").iterdir()):
            shutil.copyfile(path, inbox / path.name)

        def finished():
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            status = subprocess.run(["narra", "status", "--json"], env=env, cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
            items = json.loads(status.stdout or "[]")
            rejected = list((inbox / ".rejected").glob("*.reason.txt"))
            if len(items) + len(rejected) < len(expected) or any(
                    i["state"] not in ("searchable", "failed") for i in items):
                return None
            return items

        items = wait_for(finished, 600, "every inbox item ending", interval_s=5,
                         on_timeout=lambda: (tmp_path / "daemon.log").read_text()[-3000:])
    by_inbox = {}
    for item in items:
        state = "succeeded" if item["state"] == "searchable" else "failed"
        by_inbox[item["source_name"]] = (state, (item["last_run"] or {}).get("error_class")
                                         if state == "failed" else None)
    for reason in (inbox / ".rejected").glob("*.reason.txt"):
        code = reason.read_text().split("]")[0].lstrip("[")
        by_inbox[reason.name.removesuffix(".reason.txt")] = ("failed", code)
    assert by_inbox == by_process
