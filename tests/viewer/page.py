"""One OHIF page in headless Chromium, with the helpers the viewer tests share."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.node.test_route_deliver import wait_for
from tests.support.ohif import ViewerServer, chromium_page
from tests.viewer.sr_content import SR_ANNOTATIONS_JS

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
except ImportError:  # pragma: no cover - the viewer tests skip (or fail in CI) without it
    PlaywrightTimeoutError = TimeoutError  # type: ignore[misc,assignment]

UI_TIMEOUT_MS = 90_000
"""Bound on each wait for the viewer's UI (2 shared cores: OHIF needs ~5 s idle)."""


# Scroll the single viewport to a SOP Instance UID and return Cornerstone's
# transform from image pixel indices (column, row) to page (CSS) pixels.
_SHOW_JS = """
async (sop) => {
  const cs = window.cornerstone;
  const elements = cs.getEnabledElements();
  const el = elements.find(e => e.viewportId === 'default') || elements[0];
  if (!el) return {error: 'no viewport'};
  const vp = el.viewport;
  const ids = vp.getImageIds();
  if (sop) {
    const idx = ids.findIndex(i => i.includes('/instances/' + sop + '/'));
    if (idx < 0) return {error: 'image not in viewport: ' + sop};
    if (vp.getCurrentImageIdIndex() !== idx) {
      await vp.setImageIdIndex(idx);
    }
  }
  const imageId = vp.getCurrentImageId();
  const toPage = (p) => {
    const c = vp.worldToCanvas(cs.utilities.imageToWorldCoords(imageId, p));
    return c;
  };
  const r = vp.canvas.getBoundingClientRect();
  const o = toPage([0, 0]), x = toPage([1, 0]), y = toPage([0, 1]);
  return {
    imageId, index: vp.getCurrentImageIdIndex(), count: ids.length,
    origin: [o[0] + r.left, o[1] + r.top],
    col: [x[0] - o[0], x[1] - o[1]], row: [y[0] - o[0], y[1] - o[1]],
    rect: [r.left, r.top, r.width, r.height],
  };
}
"""


# Whether OHIF's SR viewport draws every finding (tracking UIDs); if not yet, render the
# viewports again and answer null (see Viewer.sr_drawn).
_SR_DRAWN_JS = """
(uids) => {
  const drawn = (__ANNOTATIONS__)();
  if (uids.every(u => drawn.annotations[u])) return drawn;
  for (const e of window.cornerstone.getEnabledElements()) e.viewport.render();
  return null;
}
""".replace("__ANNOTATIONS__", SR_ANNOTATIONS_JS)


class Viewer:
    """One OHIF page in a fresh Chromium profile, with the helpers the checks need."""

    def __init__(
        self, page: Any, server: ViewerServer, study_uid: str, save: Callable[[str, bytes], Path]
    ) -> None:
        self.page = page
        self.server = server
        self.study_uid = study_uid
        self.save = save
        self.console: list[str] = []
        self.first_run_done = False
        """Whether this profile has dismissed OHIF's first-run dialogs (remembered)."""
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.set_default_timeout(UI_TIMEOUT_MS)

    def open(self, query: str = "") -> None:
        """Open the study; get past the first-run tour and the investigational-use notice.

        A fresh profile shows both; OHIF remembers their dismissal, so a later
        open in the same profile waits for neither (only clicks one that shows
        up anyway within a few seconds).
        """
        url = f"{self.server.url}/viewer?StudyInstanceUIDs={self.study_uid}{query}"
        self.page.goto(url, timeout=UI_TIMEOUT_MS)
        for text in ("Skip all", "Confirm and hide"):
            button = self.page.get_by_text(text, exact=True)
            if not self.first_run_done:
                button.click()
                continue
            try:
                button.click(timeout=3_000)
            except PlaywrightTimeoutError:
                pass
        self.first_run_done = True

    def thumbnail(self, description: str) -> Any:
        """The study browser's entry of the series with this SeriesDescription."""
        entries = self.page.locator('[data-cy^="study-browser-thumbnail"]')
        return entries.filter(has_text=description).first

    def overlay_text(self) -> str:
        return str(self.page.locator('[data-cy="viewport-overlay-top-left"]').first.inner_text())

    def wait_js(self, what: str, expression: str, timeout_s: float = 60.0) -> Any:
        return wait_for(
            what, lambda: self.page.evaluate(expression), timeout_s=timeout_s, poll_s=0.5
        )

    def sr_drawn(self, what: str, tracking_uids: list[str]) -> dict[str, Any]:
        """What OHIF's SR viewport draws (:data:`SR_ANNOTATIONS_JS`), once it draws the
        finding of every tracking UID.

        The SR viewport draws only the findings it has registered for its element
        (``setTrackingUniqueIdentifiersForElement``, in a React effect once the element is
        enabled), and registering them requests no render.  When the image's first
        renders come before that effect (an image already in the cache, as after the
        study's first image; a busy CPU), nothing is drawn until the viewport renders
        again, on the reader's first scroll, zoom or window change.  While a finding is
        missing, each poll renders the viewports again, as that first touch would.
        """
        probe = f"() => ({_SR_DRAWN_JS})({json.dumps(tracking_uids)})"
        return dict(self.wait_js(what, probe))

    def show(self, sop_instance_uid: str | None = None) -> dict[str, Any]:
        """Scroll the viewport to *sop_instance_uid* (if given); its image-to-screen transform."""
        result = self.page.evaluate(_SHOW_JS, sop_instance_uid)
        assert "error" not in result, result
        return dict(result)

    def stable_screenshot(self, name: str, timeout_s: float = 30.0) -> np.ndarray:
        """A screenshot once rendering has settled (two equal frames in a row); saved."""
        deadline = time.monotonic() + timeout_s
        previous: np.ndarray | None = None
        while True:
            time.sleep(0.5)
            png = self.page.screenshot()
            frame = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            if previous is not None and np.array_equal(frame, previous):
                self.save(name, png)
                return frame
            if time.monotonic() > deadline:
                self.save(name, png)
                raise AssertionError(f"the viewer did not settle within {timeout_s} s ({name})")
            previous = frame

    def log_tail(self) -> str:
        """The browser console's last warnings and errors."""
        notable = [line for line in self.console if not line.startswith(("log:", "timeEnd:"))]
        return "\n".join(line[:300] for line in notable[-20:])

    def open_series(self, description: str, modality: str) -> None:
        """Open the study and double-click a series into the viewport."""
        self.open()
        self.thumbnail(description).dblclick()
        badge = self.page.locator('[data-cy="ModalityLoadBadge-default"]')
        badge.filter(has_text=modality).wait_for()

    def track_report(self, expected: int) -> None:
        """Accept the viewer's offer to track the open SR's measurements, open its
        measurement panel and wait until it counts ``expected`` of them."""
        prompt = "Do you want to continue tracking measurements"
        self.page.get_by_text(prompt, exact=False).wait_for()
        self.page.get_by_role("button", name="Yes", exact=True).click()
        self.page.locator('[data-cy="trackedMeasurements-btn"]').click()
        self.page.get_by_text(f"Measurements ({expected})", exact=True).wait_for()

    def body_text(self) -> str:
        """The page's text, whitespace collapsed (labels wrap in the panels)."""
        return " ".join(str(self.page.locator("body").inner_text()).split())


@contextmanager
def open_viewer(
    server: ViewerServer,
    study_uid: str,
    save: Callable[[str, bytes], Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Viewer]:
    """A fresh Chromium profile on an OHIF page; its last screen and console are kept."""
    with chromium_page(tmp_path / "chromium-profile") as page:
        view = Viewer(page, server, study_uid, save)
        try:
            yield view
        finally:
            name = request.node.name.removeprefix("test_")
            try:
                save(f"{name}-last.png", page.screenshot(timeout=10_000))
            finally:
                save(f"{name}-console.txt", "\n".join(view.console).encode())
