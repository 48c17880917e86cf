"""`auralsam2 report` after a real pipeline run (Prefect, MLflow, DuckDB) and a prompt-engineering
evaluation, opened from disk in a real headless Chromium (the system's, driven by Playwright): no
console errors, every chart drawn, the ablation table and the overlay images there. The screenshot
is kept in `test-artifacts/report.png` (or `$AURALSAM2_TEST_ARTIFACTS`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auralsam2.config import PROJECT_ROOT
from data_specs.synth import SynthConfig, generate_world
from flows.ablate import SummarySelection

RUN = ["train.max_steps=2", "train.epochs=1", "train.mask_prompt_warmup_epochs=1", "data.max_val_items=2",
       "eval.splits=[test]", "eval.decodings=[iou_select]", "eval.overlays=2", "experiment=report_test",
       "data.ingest=ingest/report_test", "data.cache=cache/report_test"]  # its own world: its own folders


def _chromium() -> str:
    for name in (os.environ.get("AURALSAM2_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = name and shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("no Chromium found: .ci/run installs Debian's `chromium`; set AURALSAM2_CHROMIUM to a browser")
    pytest.skip("no Chromium on this machine (apt-get install chromium, or set AURALSAM2_CHROMIUM)")


def _invoke(args: list[str]) -> str:
    from flows.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    from flows.pipeline import run_pipeline

    world = tmp_path_factory.mktemp("world")
    generate_world(world, SynthConfig(seed=12, clips=4, size=96), progress=False)
    selection = SummarySelection(split="test", protocol="avsbench_official", decoding="iou_select")
    result = run_pipeline(PROJECT_ROOT / "configs" / "demo_tiny.yaml", RUN, raw=world / "AVSBench",
                          ablate_grid="smoke", selection=selection)
    _invoke(["evaluate", result["train"]["best_checkpoint"], "--split", "test", "--prompts", "points+box,mask"])
    out = tmp_path_factory.mktemp("report") / "report"
    printed = _invoke(["report", "--out", str(out)])
    assert f"report written to {out / 'index.html'}" in printed
    return out, result


def test_report_files_open_from_disk(report):
    out, result = report
    html = (out / "index.html").read_text()
    assert (out / "assets" / "plotly.min.js").stat().st_size > 1_000_000  # bundled, no CDN
    assert "https://" not in html.split("<body>")[0]  # nothing fetched from the network
    assert "report_test/" in html and result["ablation"]["parent_run_id"]
    for image in (out / "assets" / "overlays").rglob("*.png"):
        assert image.stat().st_size > 0
    assert list((out / "assets" / "overlays").rglob("*.png"))


def test_report_renders_in_a_real_browser(report):
    from playwright.sync_api import sync_playwright

    out, result = report
    problems: list[str] = []
    artifacts = Path(os.environ.get("AURALSAM2_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
        page.goto((out / "index.html").as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 4", timeout=30_000)
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)

        # the ablation grid of this pipeline run, beside the paper's columns
        table = page.locator("table.ablation[data-dataset='avss']").first
        header = table.locator("tr").first.inner_text()
        assert "paper J" in header and "J&F" in header
        rows = [r["row"] for r in result["ablation"]["rows"]]
        body = page.locator("#ablation").evaluate("e => e.parentElement.innerText")
        assert all(row in body for row in rows)
        # a chart per section: ablation, curves, runs, prompts
        for section in ("ablation", "curves", "runs", "prompts"):
            count = page.evaluate(f"""() => {{
                const start = document.getElementById('{section}');
                let n = 0, e = start.nextElementSibling;
                while (e && e.tagName !== 'H2') {{ n += e.querySelectorAll('.main-svg').length; e = e.nextElementSibling; }}
                return n; }}""")
            assert count > 0, section
        prompts = page.locator("#prompts-table").inner_text()
        assert "sam2" in prompts and "points+box" in prompts and "0.726" in prompts  # paper Table 6
        # the overlay thumbnails loaded
        widths = page.eval_on_selector_all("figure.clip img", "imgs => imgs.map(i => i.naturalWidth)")
        assert widths and all(w > 0 for w in widths)
        assert page.locator("#ingest-table tr").count() >= 2 and page.locator("#cache-table tr").count() >= 2
        browser.close()
    assert not problems, problems
    assert (artifacts / "report.png").stat().st_size > 50_000
