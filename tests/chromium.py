"""Headless Chromium for the tests that look at a page as a person would: the system's
Chromium (Debian's `chromium` package; `make test` and .ci/run install it), driven by
Playwright, never a browser Playwright downloads itself.

A missing Chromium fails these tests with what to run; it never skips them. Each test
gets a new, empty profile; the flags keep Chromium off the network (no component
updates, sync, QUIC or background fetches): the pages under test are local files and
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

CHROMIUM_ENV = "CHROMIUM"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(
            "Chromium is not installed: these tests draw pages in headless Chromium. Install it with "
            "`apt-get install -y chromium` (make test and .ci/run do it), or point $CHROMIUM at a Chromium binary.",
            pytrace=False,
        )
    return found


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 1000) -> Iterator:
    """A Playwright page in a fresh headless Chromium with an empty profile."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            args=FLAGS,
            headless=True,
            viewport={"width": width, "height": height},
            offline=False,
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.errors = errors  # JavaScript errors the page raised
            yield page
        finally:
            context.close()


def drawn_charts(page) -> dict[str, dict]:
    """Per chart element (data-chart): what ECharts drew into its SVG: the number of
    series in its option, the data points they hold and the drawn shapes."""
    return page.evaluate(
        """() => {
      const out = {};
      document.querySelectorAll('[data-chart]').forEach(el => {
        const chart = window.echarts && echarts.getInstanceByDom(el);
        const svg = el.querySelector('svg');
        const option = chart ? chart.getOption() : {series: []};
        out[el.dataset.chart] = {
          series: option.series.length,
          points: option.series.map(s => (s.data || []).length),
          values: option.series.map(s => (s.data || []).map(d => (d && typeof d === 'object' && 'value' in d) ? d.value : d)),
          names: option.series.map(s => s.name),
          paths: svg ? svg.querySelectorAll('path').length : 0,
          width: el.getBoundingClientRect().width,
          height: el.getBoundingClientRect().height,
        };
      });
      return out;
    }"""
    )


def non_blank_fraction(page, png: bytes) -> float:
    """The share of a screenshot's pixels that are not background white, counted by the
    browser itself (the PNG drawn onto a canvas)."""
    import base64

    return page.evaluate(
        """async (data) => {
      const image = new Image();
      image.src = 'data:image/png;base64,' + data;
      await image.decode();
      const canvas = document.createElement('canvas');
      canvas.width = image.width; canvas.height = image.height;
      const context = canvas.getContext('2d');
      context.drawImage(image, 0, 0);
      const pixels = context.getImageData(0, 0, image.width, image.height).data;
      let inked = 0;
      for (let i = 0; i < pixels.length; i += 4) {
        if (pixels[i] < 235 || pixels[i + 1] < 235 || pixels[i + 2] < 235) inked++;
      }
      return inked / (image.width * image.height);
    }""",
        base64.b64encode(png).decode(),
    )
