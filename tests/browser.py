"""A page checked in a real headless browser, with the network shut off.

:func:`check_page` opens a local HTML file in Debian's ``chromium`` (driven by Playwright, which
never downloads a browser of its own here) and reports what a reader would meet: console errors,
uncaught exceptions, every request the page tried that would leave the machine (each one refused),
whether each figure (``[data-figure]``) was drawn, and a screenshot. :func:`is_blank` says whether
a screenshot shows anything at all.

Also a script, for the README's screenshot of a report::

    python tests/browser.py REPORT.html OUT.png [--width 1200 --height 900] [--at SECTION]

writes a screenshot of the page's top (the first viewport, or the one at a section) as a small PNG, prints what the check
found, and exits 1 when the page has a problem.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Schemes that never leave the machine; a request for anything else is refused and recorded.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

# A screenshot is blank when fewer than this share of its pixels differ noticeably from its
# commonest colour: a white page, or one with a single line of text, is blank; a page with even
# one drawn figure (its plot area alone is ~15% of a 1200x900 view) is far above it.
BLANK_SHARE = 0.005
# How far (0-255, in any channel) a pixel may be from the commonest colour and still count as it:
# above anti-aliasing and compression noise, below the faintest grid line.
BLANK_TOLERANCE = 24

# Loading a report (parsing Plotly's 4 MB and running every figure's script) takes 1-5 s here;
# past this, something is wrong with the browser rather than the page.
LOAD_TIMEOUT = 120.0

# Whether each [data-figure] div was drawn, measured in the page. Marks are the SVG shapes of the
# traces themselves (not axes or grid lines); WebGL traces (scattergl, parcoords) draw on canvases
# instead, which count when any pixel is not transparent. Plotly keeps the drawing buffer, so a
# canvas can be read back after it was shown. The tool bar (Plotly's modebar) is in the page
# from the start, shown on hover; its buttons are named by their tooltips.
_MEASURE_FIGURES = """
() => {
  const MARK_LAYERS = ".mlayer, .pielayer, .funnelarealayer, .sunburstlayer, .treemaplayer, "
    + ".iciclelayer, .indicatorlayer, .table";
  const sized = (e) => { const b = e.getBBox(); return b.width > 0 || b.height > 0; };
  const painted = (canvas) => {
    if (!canvas.width || !canvas.height) return false;
    const copy = document.createElement("canvas");
    copy.width = canvas.width; copy.height = canvas.height;
    const context = copy.getContext("2d");
    context.drawImage(canvas, 0, 0);
    const pixels = context.getImageData(0, 0, copy.width, copy.height).data;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) return true;
    return false;
  };
  return [...document.querySelectorAll("[data-figure]")].map((div, index) => {
    const svg = div.querySelector(".main-svg");
    const box = svg ? svg.getBoundingClientRect() : { width: 0, height: 0 };
    const marks = [...div.querySelectorAll(".main-svg :is(" + MARK_LAYERS + ") :is(path, image, rect, circle, polygon, polyline, line)")]
      .filter(sized).length;
    const canvases = [...div.querySelectorAll("canvas")].filter(painted).length;
    const title = div.querySelector(".gtitle");
    return {
      id: div.id || `#${index + 1}`,
      title: title ? title.textContent : "",
      width: box.width, height: box.height,
      marks: marks, painted_canvases: canvases,
      background: div._fullLayout ? div._fullLayout.plot_bgcolor : "",
      tools: [...div.querySelectorAll(".modebar-btn")].map((button) => button.getAttribute("data-title") || ""),
    };
  });
}
"""

# Every figure div has Plotly's SVG: every Plotly.newPlot on the page has run.
_FIGURES_STARTED = """
() => [...document.querySelectorAll("[data-figure]")].every((div) => div.querySelector(".main-svg"))
"""

# Two animation frames: whatever Plotly drew has been laid out and painted.
_TWO_FRAMES = "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"


@dataclass(frozen=True)
class FigureCheck:
    """One ``[data-figure]`` div as the browser drew it."""

    id: str
    title: str  # the figure's title as shown ("" when it has none)
    width: float  # of Plotly's SVG, in CSS pixels (0 when Plotly never drew here)
    height: float
    marks: int  # SVG shapes drawn by the traces
    painted_canvases: int  # WebGL canvases with at least one pixel drawn
    background: str  # the plot area's colour as drawn (the page's template sets it)
    tools: list[str]  # the titles of its tool bar's buttons ("Zoom", "Download plot as a PNG", ...), in order

    @property
    def drawn(self) -> bool:
        """Plotly drew here, and the traces left marks (not only axes)."""
        return self.width > 0 and self.height > 0 and (self.marks > 0 or self.painted_canvases > 0)


@dataclass
class PageCheck:
    """What loading a page found; :meth:`problems` lists each failure in one line."""

    url: str
    title: str = ""
    text: str = field(default="", repr=False)  # the body's text as rendered (document.body.innerText)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    blocked_requests: list[str] = field(default_factory=list)  # every non-local URL the page asked for
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt: a script ran that should not
    figures: list[FigureCheck] = field(default_factory=list)
    wait_error: str = ""  # set when some figure never started drawing in time
    screenshot: bytes = field(default=b"", repr=False)  # PNG
    blank: bool = True  # is_blank(screenshot)
    seconds: float = 0.0  # from launching the browser to closing it

    def problems(self) -> list[str]:
        """Everything a reader would call broken, one line each; empty for a good page."""
        found = [f"console error: {m}" for m in self.console_errors]
        found += [f"page error: {m}" for m in self.page_errors]
        found += [f"request refused (the page must not fetch): {u}" for u in self.blocked_requests]
        found += [f"dialog opened: {m}" for m in self.dialogs]
        if self.wait_error:
            found.append(self.wait_error)
        found += [f"figure {f.id} ({f.title!r}) not drawn" for f in self.figures if not f.drawn]
        if self.blank:
            found.append("screenshot is blank")
        return found


def missing() -> str | None:
    """Why the browser checks cannot run here (no Chromium, no Playwright, no Pillow), or None."""
    if shutil.which("chromium") is None:
        return "no chromium on PATH (Debian: apt-get install chromium)"
    try:
        import PIL  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install -e '.[test]')"
    return None


def check_page(
    path: str | Path,
    *,
    width: int = 1200,
    height: int = 900,
    full_page: bool = True,
    timeout: float = 20.0,
    at: str | None = None,
) -> PageCheck:
    """Open ``path`` in headless Chromium offline and report what it did (see :class:`PageCheck`).

    Every request for anything but a local file (or data:/blob: URL) is refused before it leaves
    the browser, and recorded. Once the page has loaded, the check waits until every figure div
    holds Plotly's SVG (at most ``timeout`` seconds more, else :attr:`PageCheck.wait_error` names
    the figures still empty), then two
    animation frames, then measures the figures and takes the screenshot (the whole page, or the
    first ``width`` x ``height`` view when ``full_page`` is false, scrolled to the element whose
    id is ``at`` when given).
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    url = Path(path).resolve().as_uri()
    check = PageCheck(url=url)

    def refuse(route) -> None:
        request_url = route.request.url
        if request_url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            check.blocked_requests.append(request_url)
            route.abort("blockedbyclient")

    def refuse_socket(socket) -> None:
        check.blocked_requests.append(socket.url)
        socket.close()

    def console(message) -> None:
        if message.type == "error":
            check.console_errors.append(message.text)

    def dialog(opened) -> None:
        check.dialogs.append(f"{opened.type}: {opened.message}")
        opened.dismiss()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"),
            # Names resolve nowhere: a last guard for anything that escapes the routes below.
            args=["--host-resolver-rules=MAP * ~NOTFOUND"],
        )
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, offline=True)
            context.route("**/*", refuse)
            context.route_web_socket("**/*", refuse_socket)
            page = context.new_page()
            page.on("console", console)
            page.on("pageerror", lambda error: check.page_errors.append(str(error)))
            page.on("dialog", dialog)
            page.goto(url, wait_until="load", timeout=LOAD_TIMEOUT * 1000)
            try:
                page.wait_for_function(_FIGURES_STARTED, timeout=timeout * 1000)
            except PlaywrightTimeout:
                empty = page.evaluate(
                    "() => [...document.querySelectorAll('[data-figure]')]"
                    ".filter((d) => !d.querySelector('.main-svg')).map((d, i) => d.id || `#${i + 1}`)"
                )
                check.wait_error = f"figures never drawn within {timeout:g} s: {', '.join(empty)}"
            page.evaluate(_TWO_FRAMES)
            check.figures = [FigureCheck(**figure) for figure in page.evaluate(_MEASURE_FIGURES)]
            check.title = page.title()
            check.text = page.evaluate("() => document.body ? document.body.innerText : ''")
            if at is not None:
                page.evaluate("(id) => document.getElementById(id).scrollIntoView()", at)
                page.evaluate(_TWO_FRAMES)
            check.screenshot = page.screenshot(full_page=full_page, type="png")
            check.blank = is_blank(check.screenshot)
        finally:
            browser.close()
    check.seconds = time.monotonic() - started
    return check


def is_blank(png: bytes) -> bool:
    """Whether a screenshot shows nothing: under :data:`BLANK_SHARE` of its pixels differ (by more
    than :data:`BLANK_TOLERANCE` in a channel) from its commonest colour."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32).reshape(-1, 3)
    packed = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]  # one number per colour: a fast unique
    colours, counts = np.unique(packed, return_counts=True)
    commonest = pixels[np.flatnonzero(packed == colours[np.argmax(counts)])[0]]
    differ = np.abs(pixels - commonest).max(axis=1) > BLANK_TOLERANCE
    return float(differ.mean()) < BLANK_SHARE


def small_png(png: bytes) -> bytes:
    """The same picture in at most 256 colours: a README screenshot a few times smaller."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a report page offline in Chromium and save a screenshot of its top.")
    parser.add_argument("page", type=Path, help="the HTML file (hpo report's output)")
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--width", type=int, default=1200, help="viewport width in CSS pixels")
    parser.add_argument("--height", type=int, default=900, help="viewport height in CSS pixels")
    parser.add_argument("--at", help="the id of the element to scroll to first (a section: coarse-to-fine, layers, ...)")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"no such file: {args.page}", file=sys.stderr)
        return 2
    reason = missing()
    if reason:
        print(f"cannot check the page: {reason}", file=sys.stderr)
        return 2
    check = check_page(args.page, width=args.width, height=args.height, full_page=False, at=args.at)
    args.out.write_bytes(small_png(check.screenshot))
    drawn = sum(f.drawn for f in check.figures)
    print(f"{drawn} of {len(check.figures)} figures drawn in {check.seconds:.1f} s; "
          f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    for problem in check.problems():
        print(problem, file=sys.stderr)
    return 1 if check.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
