"""The operations dashboard renders in headless Chromium from disk: its charts are drawn (DOM and pixels).

The page is written from a warehouse filled from the sandbox, opened as a file://
URL with no network, once with --dump-dom (the DOM after the inline script ran)
and once with --screenshot; the test decodes the PNG itself (zlib, no imaging
library) and counts coloured pixels inside each chart's box.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from indicators.dashboard import write_dashboard
from tests.indicator_data import pull_and_compute

WINDOW = (1280, 4200)


def chromium() -> str:
    """The Chromium binary; `./run test` installs it (Debian package `chromium`) when it is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed: apt-get install -y chromium (./run test installs it as root)")


def _browser(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


class _Charts(HTMLParser):
    """Collects every <svg class="chart"> with its attributes and the marks (rect, path, circle) inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, Any]] = {}
        self.body: dict[str, str | None] = {}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.body = attributes
        if tag == "svg" and "chart" in (attributes.get("class") or ""):
            self._open = str(attributes["id"])
            self.charts[self._open] = {"attrs": attributes, "marks": []}
        elif self._open and tag in ("rect", "path", "circle"):
            self.charts[self._open]["marks"].append((tag, attributes))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._open = None


def _drawn(tag: str, attrs: dict[str, str | None]) -> bool:
    if tag == "rect":
        return float(attrs.get("width") or 0) > 0 and float(attrs.get("height") or 0) > 0
    if tag == "circle":
        return float(attrs.get("r") or 0) > 0
    return len(re.findall(r"[ML]", attrs.get("d") or "")) >= 2


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, raw rows without filter bytes) of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        header = body if kind == b"IHDR" else header
        chunks += [body] if kind == b"IDAT" else []
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, "8-bit RGB or RGBA, not interlaced"
    bpp, raw = (3 if colour == 2 else 4), zlib.decompress(b"".join(chunks))
    stride, out, previous = width * bpp, bytearray(), bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        out += line
        previous = line
    return width, height, bpp, bytes(out)


def coloured_pixels(png: tuple[int, int, int, bytes], box: tuple[int, int, int, int]) -> int:
    """Pixels in the box whose colour is saturated (chart marks), not white, grey or black (text, axes)."""
    width, height, bpp, pixels = png
    x0, y0, w, h = box
    count = 0
    for y in range(max(0, y0), min(height, y0 + h)):
        row = y * width * bpp
        for x in range(max(0, x0), min(width, x0 + w)):
            r, g, b = pixels[row + x * bpp:row + x * bpp + 3]
            count += max(r, g, b) - min(r, g, b) > 60
    return count


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_dashboard_draws_its_charts_in_headless_chromium(lgsp_env: Any, tmp_path: Path) -> None:
    catalog, wh = pull_and_compute(lgsp_env.database_url)
    page = write_dashboard(wh, catalog, tmp_path / "dashboard" / "index.html")
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?https?:""", html), \
        "self-contained: nothing fetched from the network"

    rendered = _browser(page, tmp_path, "--dump-dom").stdout
    dom = _Charts()
    dom.feed(rendered)
    assert dom.body.get("data-drawn") == "true", "the inline script ran to the end"
    expected = {"chart-communes", *(f"chart-{kind}-{name}" for kind in ("trend", "latest")
                                    for name in catalog.indicators),
                *(f"chart-ranking-{name}" for name in catalog.rankings)}
    assert expected <= set(dom.charts)
    for chart_id in expected:
        chart = dom.charts[chart_id]
        drawn = [m for m in chart["marks"] if _drawn(*m)]
        assert int(chart["attrs"]["data-marks"] or 0) > 0 and drawn, f"{chart_id} drew nothing"
    assert len([m for m in dom.charts["chart-communes"]["marks"] if m[0] == "rect"]) == 30  # top and bottom 15

    screenshot = tmp_path / "dashboard.png"
    _browser(page, tmp_path, f"--screenshot={screenshot}")
    png = decode_png(screenshot.read_bytes())
    assert png[:2] == WINDOW
    for chart_id in ["chart-communes", "chart-trend-online_submission_rate", "chart-latest-on_time_settlement_rate",
                     "chart-ranking-commune_service_index"]:
        x, y, w, h = (int(v) for v in str(dom.charts[chart_id]["attrs"]["data-box"]).split(","))
        assert w > 0 and h > 0 and y + h <= WINDOW[1], f"{chart_id} is on the screenshot"
        assert coloured_pixels(png, (x, y, w, h)) > 200, f"{chart_id}: no coloured marks in its box"
    assert re.search(r'id="synthetic"[^>]*>Synthetic data: [^<]*not real data', rendered), "the page says so"
    levels = re.findall(r'<div class="levels">Theo cấp thực hiện / by procedure level, \d{4}: Cấp tỉnh \d+\.\d%'
                        r' · Cấp xã \d+\.\d%</div>', rendered)  # a year per level, on each dossier rate's card
    assert len(levels) == sum("procedure_level" in spec.units and spec.measure == "rate"
                              for spec in catalog.indicators.values()) == 8, levels
    states = dict(re.findall(r'<tr data-pipeline="(\w+)">.*?<td class="state (\w+)">', rendered))
    assert states == {**{p: "never" for p in catalog.pipelines}, "tthc_dossiers": "fresh", "documents": "fresh",
                      "dvcqg_procedures": "fresh", "land_parcels": "fresh"}
    quality = dict(re.findall(r'<tr data-pipeline="(\w+)">.*?<td class="quality">([^<]*)</td>', rendered))
    assert quality["population_citizens"] == "0.0% (timeliness)", "never synced: not timely"
    assert re.fullmatch(r"9\d\.\d% \(validity\)", quality["documents"]), quality["documents"]
    assert re.search(r'id="reports"[^>]*>government_report: \d+ report\(s\) due, \d+ overdue', rendered)
    # the procedure catalogue synced, the admin units not: every dossier and parcel names a commune the platform
    # lacks yet
    assert re.search(r'id="references"[^>]*>Liên kết dữ liệu / References: '
                     r'dossier.commune_code -&gt; admin_unit.code: (\d+) of \1 rows name a missing record '
                     r'\(pending\)[;<]', rendered)
    assert re.search(r'land_parcel.commune_code -&gt; admin_unit.code: (\d+) of \1 rows name a missing record '
                     r'\(pending\)[;<]', rendered)
    # no household synced: the rule across rows reads no group yet
    assert re.search(r'id="group-checks"[^>]*>Quy tắc giữa các bản ghi / Rules across records: Mỗi hộ có đúng một '
                     r'chủ hộ trong số các thành viên hiện tại: 0 of 0 groups hold it \(ok\); ', rendered)
