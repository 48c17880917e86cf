"""Regenerate the README's pictures from a finished `make demo` (same data folder):

    .venv/bin/python scripts/readme_assets.py [--chromium /usr/bin/chromium]

1. `docs/segment_example.png`: a test clip of the synthetic world written as an mp4 (H.264 + AAC, the
   clip's own sound) and segmented by `auralsam2 segment` with the demo's AVSBench model; the strip
   shows the overlay video's frames.
2. `docs/report.png`: the top of `auralsam2 report`, opened from disk in headless Chromium.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _demo_checkpoint(home: Path) -> Path:
    found = sorted((home / "runs" / "demo").glob("full-*/best.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"no demo checkpoint under {home / 'runs' / 'demo'}: run `make demo` first")
    return found[-1]


def _test_clip_video(home: Path, out: Path) -> Path:
    """The first multi-source test clip of the demo's world as an mp4 with its sound."""
    import csv

    import numpy as np
    import soundfile as sf
    from PIL import Image

    from auralsam2.video import write_frames_video

    root = home / "world" / "AVSBench"
    with (root / "metadata.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == "test" and r["label"] == "v2")
    clip = root / row["label"] / row["uid"]
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((clip / "frames").glob("*.jpg"),
                                                                        key=lambda p: int(p.stem))]
    audio, rate = sf.read(clip / "audio.wav", dtype="int16", always_2d=True)
    return write_frames_video(out, frames, fps=25, audio=audio, sample_rate=rate, repeat=25)


def segment_example(home: Path) -> Path:
    import av
    import numpy as np
    from PIL import Image

    work = home / "readme"
    work.mkdir(parents=True, exist_ok=True)
    video = _test_clip_video(home, work / "clip.mp4")
    subprocess.run([str(ROOT / ".venv" / "bin" / "auralsam2"), "segment", str(video), "--checkpoint",
                    str(_demo_checkpoint(home)), "--out", str(work / "segment")], check=True)
    with av.open(str(work / "segment" / "overlay.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    strip = np.concatenate(frames[:5], axis=1)
    DOCS.mkdir(exist_ok=True)
    target = DOCS / "segment_example.png"
    Image.fromarray(strip).save(target)
    return target


def report_screenshot(home: Path, chromium: str) -> Path:
    from playwright.sync_api import sync_playwright

    from flows.report import run_report

    index = run_report(home / "report", home)
    DOCS.mkdir(exist_ok=True)
    target = DOCS / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.goto(index.as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2")
        page.screenshot(path=str(target))
        browser.close()
    return target


def main() -> None:
    from auralsam2.paths import data_home

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    home = data_home()
    print(f"wrote {segment_example(home)}")
    print(f"wrote {report_screenshot(home, args.chromium)}")


if __name__ == "__main__":
    main()
