"""The HTML pages the toolkit writes render in a real browser (issue 25).

Headless Chromium (:mod:`tests.browser`) opens the SAE feature dashboard
(``sae features --out``) and the cross-model feature page (``universality
compare --dashboard``), each made by its command on the bundled zoo with small
sizes, and the test asserts the page raised no console error, uncaught
exception or failed load, and that every ``<img>`` loaded (natural width > 0).
Skipped, saying why, where no Chromium is installed (``apt-get install
chromium``; ``.ci/run`` installs it when it can). ``docs/_tools/screenshots.py``
regenerates the screenshots in ``docs/`` with the same driver.
"""

from __future__ import annotations

import pytest

from tests.browser import chromium, render
from tests.cli import exit_code

pytestmark = pytest.mark.skipif(chromium() is None,
                                reason="no headless Chromium (apt-get install chromium) to render the HTML pages")


def _assert_clean(rendered, min_images):
    assert rendered.errors == [], rendered.errors
    assert len(rendered.images) >= min_images, rendered.images
    broken = [i for i in rendered.images if not i["complete"] or i["width"] == 0]
    assert broken == [], broken
    assert rendered.size[1] > 900  # a page of content, not a blank one


def test_the_driver_sees_console_errors_and_broken_images(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>bad</title></head><body><img src='missing.png'>"
                    "<script>console.error('boom'); notDefined();</script></body></html>")
    rendered = render(page)
    assert rendered.title == "bad"
    assert any("boom" in e for e in rendered.errors)
    assert any("notDefined" in e for e in rendered.errors)
    assert rendered.images[0]["width"] == 0


def test_sae_feature_dashboard_renders(tmp_path, capsys):
    out = tmp_path / "dash"
    code = exit_code(["sae", "features", "--model", "0", "--source", "bundled", "--sae", "bundled",
                      "--top", "3", "--num-samples", "24", "--out", out])
    assert code == 0, capsys.readouterr().err[-2000:]
    rendered = render(out / "index.html", screenshot=True)
    assert rendered.title.startswith("SAE features")
    _assert_clean(rendered, min_images=3)
    assert rendered.screenshot[:8] == b"\x89PNG\r\n\x1a\n"


def test_cross_model_feature_page_renders(tmp_path, capsys):
    out = tmp_path / "families"
    code = exit_code(["universality", "compare", "--models", "0", "1", "2", "3", "--source", "bundled", "--tokens", "3232",
                      "--sae", "bundled", "--dashboard", out, "--no-cka", "--no-random-init", "--controls", "none",
                      "--resamples", "20", "--top", "3"])
    assert code == 0, capsys.readouterr().err[-2000:]
    rendered = render(out / "index.html")
    assert "families" in rendered.title
    _assert_clean(rendered, min_images=4)
    # the members of a family sit side by side at one size (four models: one row, none blown up)
    shown = {i["shown"] for i in rendered.images if i["parent"] == "member"}
    assert len(shown) == 1 and 0 < shown.pop() < 400, rendered.images
