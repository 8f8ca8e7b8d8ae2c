"""The HTML report rendered by headless Chromium: a known feature's contexts appear, a screenshot is kept."""

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from interp_sae.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed: `apt-get install -y chromium` (Debian package `chromium`)",
)


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="interp-sae-chromium-")
    try:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_a_known_features_contexts_offline(inspection, tmp_path_factory):
    results, feature = inspection
    out = tmp_path_factory.mktemp("report")
    page = write_report(results, out)
    assert "http://" not in page.read_text() and "https://" not in page.read_text()  # nothing to fetch
    url = f"{page.as_uri()}#feature={feature}"

    dom = chromium("--dump-dom", url).stdout
    assert f'<h1 id="feature-title">Feature {feature}</h1>' in dom
    contexts = re.search(r'<div id="contexts">(.*?)</div>\s*<h2>', dom, re.S).group(1)
    shown = html.unescape(re.sub(r"<[^>]+>", "", contexts))
    for example in results["features"][feature]["top_examples"]:
        assert "".join(example["tokens"]) in shown
    assert "mean Δ loss per token" in dom  # the ablation section rendered
    assert len(re.findall(r'<li data-f="\d+"', dom)) == results["n_features"]

    screenshot = Path(out) / "report.png"
    chromium("--window-size=1300,1000", f"--screenshot={screenshot}", url)
    assert screenshot.stat().st_size > 10_000
    print(f"report screenshot: {screenshot}")
