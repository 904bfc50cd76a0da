"""Regenerate samples/sample_video.mp4 and samples/sample_video.json (what is said, and when).

    python scripts/make_sample_video.py [OUT.mp4]

Speech is synthesized by espeak-ng; the photos are scikit-image's (astronaut, coffee, chelsea,
rocket). The JSON beside the video lists each sentence with its start and end in seconds.
"""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the maker lives in tests/support/media.py, not in the package

from tests.support.media import make_talking_video, timeline_json  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "samples" / "sample_video.mp4")
timeline = make_talking_video(out)
out.with_suffix(".json").write_text(json.dumps(timeline_json(timeline), indent=1) + "\n")
print(f"wrote {out} ({out.stat().st_size} bytes)")
for s in timeline:
    print(f"  {s.start_s:6.2f}-{s.end_s:6.2f}s  {s.text}")
