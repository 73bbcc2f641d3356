"""Drive the demo in headless Chromium, tab by tab, and save a screenshot of each.

    python benchmarks/demo_screenshots.py                      # docs/images/demo_*.png from a fresh app
    python benchmarks/demo_screenshots.py --url http://127.0.0.1:7860 --out /tmp/shots

In every tab it sets inputs, clicks the run button (or an example, which runs when clicked) and waits until the
result is really there: the video
element can play (``readyState >= 2``, a duration above 0) or the image has loaded (``naturalWidth > 0``). In
the text-to-video tab it then clicks a point of a frame and waits until the attention view shows another
picture. Any step that does not happen in time raises, so `tests/ui/test_browser.py` runs this same tour.
Needs Playwright (``pip install playwright``, no browser download) and Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 240_000  # a shared 2-core machine can be slow; each wait ends as soon as its condition holds

VIDEO_PLAYS = """sel => { const v = document.querySelector(sel + ' video');
    return !!v && v.readyState >= 2 && v.duration > 0; }"""
IMAGE_LOADED = """sel => { const i = document.querySelector(sel + ' img');
    return !!i && i.complete && i.naturalWidth > 0; }"""
IMAGE_CHANGED = """([sel, old]) => { const i = document.querySelector(sel + ' img');
    return !!i && i.complete && i.naturalWidth > 0 && i.src !== old; }"""
TEXT_PRESENT = """([sel, text]) => { const e = document.querySelector(sel);
    return !!e && e.innerText.includes(text); }"""


def launch_browser(playwright):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("Debian's chromium is needed: apt-get install -y chromium")
    return playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)


def _wait(page, script, arg, what: str) -> None:
    try:
        page.wait_for_function(script, arg=arg, timeout=TIMEOUT_MS, polling=250)
    except Exception as exc:
        raise AssertionError(f"{what} did not happen within {TIMEOUT_MS / 1000:.0f} s") from exc


def _set_slider(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _image_src(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} img").get_attribute("src") or ""


def text_to_video(page, shots: Path, name: str, steps: int | None) -> dict:
    page.get_by_role("tab", name="Text to video").click()
    page.locator("#t2v-prompt textarea").fill("a red circle moves right")
    if steps is not None:
        _set_slider(page, "t2v-steps", steps)
    page.locator("#t2v-generate").click()
    _wait(page, VIDEO_PLAYS, "#t2v-video", "the generated clip playing")
    _wait(page, IMAGE_LOADED, "#view-picker", "the frame to click on")
    _wait(page, IMAGE_LOADED, "#view-image", "the attention view")
    before = _image_src(page, "view-image")
    picker = page.locator("#view-picker img")
    picker.scroll_into_view_if_needed()
    box = picker.bounding_box()
    picker.click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.2})  # a point near the top right
    _wait(page, IMAGE_CHANGED, ["#view-image", before], "a new attention view after the click")
    _wait(page, TEXT_PRESENT, ["#view-caption", "w=6"], "the caption of the clicked token")
    caption = page.locator("#view-caption").inner_text()
    page.locator("#t2v-compare").click()
    _wait(page, VIDEO_PLAYS, "#cmp-dense", "the dense clip of the compare run playing")
    _wait(page, VIDEO_PLAYS, "#cmp-sparse", "the sparse clip of the compare run playing")
    _wait(page, TEXT_PRESENT, ["#cmp-summary", "PSNR"], "the compare numbers")
    # the compare run shows its own attention view, at the middle of the frame; click the same point again
    _wait(page, TEXT_PRESENT, ["#view-caption", "w=4)"], "the attention view of the compare run")
    before = _image_src(page, "view-image")
    picker.click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.2})
    _wait(page, IMAGE_CHANGED, ["#view-image", before], "the attention view of the compare run after the click")
    page.screenshot(path=str(shots / name), full_page=True)
    return {"caption": caption}


def events_to_video(page, shots: Path, name: str, steps: int | None) -> dict:
    page.get_by_role("tab", name="Events to video").click()
    _set_slider(page, "ev-frames", 4)
    if steps is not None:
        _set_slider(page, "ev-steps", steps)
    page.get_by_text("held-out photograph, moving camera (clip)").click()  # an example runs when clicked
    _wait(page, VIDEO_PLAYS, "#ev-video", "the reconstruction playing")
    _wait(page, IMAGE_LOADED, "#ev-events", "the event images")
    _wait(page, TEXT_PRESENT, ["#ev-summary", "SSIM"], "the SSIM numbers")
    page.screenshot(path=str(shots / name), full_page=True)
    return {"summary": page.locator("#ev-summary").inner_text()}


def motion_energy(page, shots: Path, name: str, steps: int | None) -> dict:
    page.get_by_role("tab", name="Motion energy").click()
    page.get_by_text("photo moving right and up, 2.2 px/frame").click()  # an example runs when clicked
    _wait(page, IMAGE_LOADED, "#me-flow", "the flow picture")
    _wait(page, IMAGE_LOADED, "#me-energy", "the energy maps")
    _wait(page, TEXT_PRESENT, ["#me-summary", "px/frame"], "the motion in words")
    summary = page.locator("#me-summary").inner_text()
    # the default model's own kind of clip as the reference of "Generate with this motion"
    page.get_by_text("blue triangle moving up").click()
    _wait(page, TEXT_PRESENT, ["#me-summary", "of 64x64"], "the triangle clip analysed")
    page.locator("#me-prompt input").fill("a red circle")  # one line: an <input>
    if steps is not None:
        _set_slider(page, "me-steps", steps)
    page.locator("#me-generate").click()
    _wait(page, VIDEO_PLAYS, "#me-generated", "the clip generated with the reference's motion playing")
    _wait(page, TEXT_PRESENT, ["#me-generated-summary", "moving as the"], "the generated clip's settings")
    page.screenshot(path=str(shots / name), full_page=True)
    return {"summary": summary, "generated": page.locator("#me-generated-summary").inner_text()}


def attention_speed(page, shots: Path, name: str, label: str = "8,160 tokens") -> dict:
    page.get_by_role("tab", name="Attention speed").click()
    page.get_by_text(label).click()  # an example runs when clicked
    _wait(page, IMAGE_LOADED, "#sp-partition", "the partition picture")
    _wait(page, TEXT_PRESENT, ["#sp-summary", "tokens"], "the timing summary")
    page.screenshot(path=str(shots / name), full_page=True)
    return {"summary": page.locator("#sp-summary").inner_text()}


def tour(url: str, shots: Path, *, prefix: str = "demo_", speed_grid: str = "8,160 tokens",
         steps: int | None = None) -> dict:
    """Run every tab of the demo at ``url`` in headless Chromium; screenshots ``shots/{prefix}{tab}.png``.
    ``steps``: denoising steps of the text and event tabs (None keeps the page's defaults, 20 and 25)."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    results = {}
    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
            page.get_by_role("tab", name="Text to video").wait_for(timeout=TIMEOUT_MS)
            for tab, fn in (("text_to_video", text_to_video), ("events", events_to_video),
                            ("motion", motion_energy)):
                start = time.perf_counter()
                results[tab] = fn(page, shots, f"{prefix}{tab}.png", steps)
                results[tab]["seconds"] = round(time.perf_counter() - start, 1)
            start = time.perf_counter()
            results["speed"] = attention_speed(page, shots, f"{prefix}speed.png", speed_grid)
            results["speed"]["seconds"] = round(time.perf_counter() - start, 1)
        finally:
            browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running demo (default: start one in this process)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder for demo_*.png")
    args = parser.parse_args(argv)
    demo = None
    url = args.url
    if url is None:
        import torch

        from vmoba.ui import build_app
        from vmoba.ui.app import launch

        torch.set_num_threads(1)
        demo = build_app()
        _, url, _ = launch(demo, port=0 or None, prevent_thread_lock=True, quiet=True)
    try:
        results = tour(url, Path(args.out))
    finally:
        if demo is not None:
            from vmoba.ui.app import close_app

            close_app(demo)
    for tab, result in results.items():
        print(f"{tab}: {result['seconds']} s; " + " ".join(str(v) for k, v in result.items() if k != "seconds")[:200])
    return 0


if __name__ == "__main__":
    sys.exit(main())
