"""The HTML report: self-contained, its totals equal ``summary()``'s, and it works in a real browser.

References: :func:`convatlas.analysis.summary` (the totals and the rows); the browser is Debian's headless
``chromium`` driven by ``chromium-driver`` through selenium (``make test`` installs both), with the network closed
to it: the page must render without console errors, request nothing but itself, show the totals, sort and fold.
"""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pytest
from PIL import Image, ImageStat

from convatlas.analysis import summary
from convatlas.atlas.report import TOTALS, build_report, write_report
from convatlas.models import create_model

SIZE = (3, 64, 64)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    model = create_model("convnext_tiny")
    path = tmp_path_factory.mktemp("report") / "report.html"
    result = write_report(model, SIZE, path, erf_samples=1)
    return model, path, result


class Links(HTMLParser):
    """Every URL-valued attribute and every element of the page."""

    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "poster", "data") and value is not None:
                self.urls.append(value)


def test_report_is_one_self_contained_file(report):
    _, path, result = report
    text = path.read_text(encoding="utf-8")
    assert text == result.html
    parser = Links()
    parser.feed(text)
    assert all(url.startswith("data:") for url in parser.urls), parser.urls
    assert "link" not in parser.tags  # no external stylesheet
    assert "<script>" in text and "<style>" in text
    # the only absolute URL is the SVG namespace, which no browser fetches
    assert set(re.findall(r"https?://[^\s\"'<>)]+", text)) == {"http://www.w3.org/2000/svg"}
    assert parser.tags.count("svg") >= 4  # diagram, receptive-field chart, two bar charts
    assert 'id="field"' in text  # the receptive fields on the astronaut, inline PNG


def test_totals_on_the_page_equal_summary(report):
    model, path, _ = report
    reference = summary(model, SIZE)
    text = path.read_text(encoding="utf-8")
    for key, _, attr in TOTALS:
        found = re.search(rf'id="{key}" data-value="(\d+)">([^<]*)<', text)
        assert found, key
        assert int(found.group(1)) == getattr(reference, attr)
        if "bytes" not in key:
            assert int(found.group(2).replace(",", "")) == getattr(reference, attr)
    rows = re.findall(r'<tr data-index="\d+" data-depth="(\d+)" data-path="([^"]*)"', text)
    assert [(int(d), p) for d, p in rows] == [(r.depth, r.path) for r in reference.rows]


def test_stages_add_up_to_the_totals(report):
    _, _, result = report
    net, table = result.network, result.summary
    assert sum(stage.params for stage in net.stages) == table.total_params
    assert sum(stage.macs for stage in net.stages) + net.outside_macs == table.total_macs
    assert [s.name for s in net.stages] == ["stride 4", "stride 8", "stride 16", "stride 32", "head"]


def test_report_without_a_picture_for_token_models(tmp_path):
    result = build_report(create_model("kim_cnn"), (32,), erf_samples=4)
    assert result.field_png is None
    assert any("no receptive-field picture" in note for note in result.notes)
    assert 'id="total-params"' in result.html


def test_existing_report_is_not_replaced(tmp_path):
    path = tmp_path / "r.html"
    path.write_text("mine")
    with pytest.raises(FileExistsError):
        write_report(create_model("kim_cnn"), (16,), path, erf_samples=0)
    assert path.read_text() == "mine"


# ------------------------------------------------------------------------------------------------------------------
# A real browser


def _browser_or_skip():
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium; make test does)")
    from convatlas.atlas.browser import open_chromium

    try:
        return open_chromium(logs=True)
    except FileNotFoundError as err:
        pytest.skip(f"headless Chromium is not installed ({err}); make test installs chromium and chromium-driver")


@pytest.fixture(scope="module")
def browser(report):
    driver = _browser_or_skip()
    _, path, _ = report
    try:
        driver.get("about:blank")
        driver.get_log("performance")  # forget the browser's own start-up pages
        driver.get(path.resolve().as_uri())
        yield driver
    finally:
        driver.quit()


def test_report_in_headless_chromium(browser, report):
    import json

    from selenium.webdriver.common.by import By

    model, path, _ = report
    reference = summary(model, SIZE)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    # nothing but the page itself was requested
    requested = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.append(message["params"]["request"]["url"])
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested
    # the totals as the browser shows them
    for key, _, attr in TOTALS:
        element = browser.find_element(By.ID, key)
        assert int(element.get_attribute("data-value")) == getattr(reference, attr)
        if "bytes" not in key:
            assert int(element.text.replace(",", "")) == getattr(reference, attr)
    # a screenshot that is not blank: many colours, real contrast
    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    stat = ImageStat.Stat(image)
    assert max(stat.stddev) > 20
    assert len(image.getcolors(1 << 20) or []) > 200
    # the field picture decoded and laid out
    field = browser.find_element(By.ID, "field")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", field) > 500


def test_table_sorts_and_folds_in_the_browser(browser, report):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _, _, result = report
    rows = result.summary.rows
    table = browser.find_element(By.ID, "layers")
    headers = table.find_elements(By.CSS_SELECTOR, "thead th")
    headers[3].click()  # params, ascending
    headers[3].click()  # descending
    first = table.find_element(By.CSS_SELECTOR, "tbody tr")
    assert first.get_attribute("data-path") == max(rows, key=lambda r: (r.params, -rows.index(r))).path
    browser.find_element(By.ID, "tree-order").click()
    first = table.find_element(By.CSS_SELECTOR, "tbody tr")
    assert first.get_attribute("data-path") == rows[0].path
    # fold "stages": every row under it disappears, the others stay
    stages = table.find_element(By.CSS_SELECTOR, 'tbody tr[data-path="stages"]')
    stages.find_element(By.CSS_SELECTOR, ".toggle").click()
    shown = [r.get_attribute("data-path") for r in table.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]
    assert shown == [r.path for r in rows if not r.path.startswith("stages.")]
    browser.find_element(By.ID, "expand-all").click()
    Select(browser.find_element(By.ID, "depth")).select_by_value("1")
    shown = [r.get_attribute("data-path") for r in table.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]
    assert shown == [r.path for r in rows if r.depth == 1]
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
