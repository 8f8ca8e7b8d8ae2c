"""The HTML report driven in real headless Chromium (Playwright, Debian's chromium): the list's
search and sort respond to typing and clicking, a feature page loads beside it with its contexts,
quantile sections and neighbours, and a neighbour link leads to that feature's page."""

import shutil
from pathlib import Path

import pytest

from interp_sae.browser import top_tokens
from interp_sae.report import FEATURES_FOLDER, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed: `apt-get install -y chromium` (Debian package `chromium`)",
)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(inspection, tmp_path_factory):
    results, feature = inspection
    return results, feature, write_report(results, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser.new_page(viewport={"width": 1300, "height": 900})
        browser.close()


def listed(page) -> list[int]:
    return [int(f) for f in page.locator("#list tbody tr").evaluate_all("rows => rows.map(r => r.dataset.f)")]


def test_the_report_is_an_index_and_one_page_per_feature_with_nothing_to_fetch(report):
    results, _, index = report
    pages = sorted((index.parent / FEATURES_FOLDER).glob("*.html"))
    assert len(pages) == results["n_features"]
    for path in [index, *pages]:
        text = path.read_text()
        assert "http://" not in text and "https://" not in text


def test_search_filters_by_top_token_and_by_number(report, page):
    results, _, index = report
    page.goto(index.as_uri())
    assert len(listed(page)) == results["n_features"]

    token = top_tokens(results["features"][listed(page)[0]])[0].strip()
    page.fill("#search", token)
    expected = {f["feature"] for f in results["features"] if any(token.lower() in t.lower() for t in top_tokens(f))}
    promoted = {
        f["feature"]
        for f in results["features"]
        if any(token.lower() in x["token"].lower() for x in (f["logits"] or {}).get("promoted", []))
    }
    assert set(listed(page)) == expected | promoted and 0 < len(expected) < results["n_features"]
    assert f"q={token}" in page.evaluate("location.hash") or "q=" in page.evaluate("location.hash")

    page.fill("#search", "#7")
    assert listed(page) == [7]


def test_clicking_a_header_sorts_and_clicking_again_flips(report, page):
    results, _, index = report
    page.goto(index.as_uri())
    by_max = sorted(results["features"], key=lambda f: (-f["max"], f["feature"]))
    page.click("#list th[data-sort=max]")
    assert listed(page) == [f["feature"] for f in by_max]
    page.click("#list th[data-sort=max]")
    assert listed(page) == [f["feature"] for f in sorted(results["features"], key=lambda f: (f["max"], f["feature"]))]

    page.click("#list th[data-sort=loss_effect]")
    effects = [results["features"][j]["loss_effect"] for j in listed(page)]
    assert effects == sorted(effects, reverse=True) and len(set(effects)) > 1

    page.reload()  # the order lives in the address
    assert page.evaluate("location.hash").endswith("sort=-loss_effect")
    assert [results["features"][j]["loss_effect"] for j in listed(page)] == effects


def test_a_feature_page_loads_beside_the_list_and_its_neighbours_link_on(report, page, tmp_path):
    results, feature, index = report
    page.goto(index.as_uri())
    page.click(f"#list tbody tr[data-f='{feature}']")
    frame = page.frame_locator("#page")
    assert frame.locator("#feature-title").inner_text() == f"Feature {feature}"
    shown = frame.locator("#contexts").inner_text()
    for example in results["features"][feature]["top_examples"]:
        assert "".join(example["tokens"]).strip() in shown
    assert "mean Δ loss per token" in frame.locator("body").inner_text()  # the ablation section
    sections = results["features"][feature]["activation_quantiles"]
    assert frame.locator(".quantile").count() == len(sections) > 0

    neighbour = results["features"][feature]["neighbours"]["decoder"][0]["feature"]
    frame.locator(f"#neighbours-decoder a[href='{neighbour}.html']").click()
    assert frame.locator("#feature-title").inner_text() == f"Feature {neighbour}"
    assert page.locator("#list tbody tr.sel").get_attribute("data-f") == str(neighbour)  # the list follows
    assert f"feature={neighbour}" in page.evaluate("location.hash")

    screenshot = Path(tmp_path) / "report.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000
