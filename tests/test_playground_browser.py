"""The playground page in a real browser (issue #18).

The real server (``advex.serve.create_app`` under uvicorn, in a thread) listens on a free
loopback port with small test limits; Debian's ``chromium`` is driven by the ``playwright``
Python package (``executable_path=shutil.which("chromium")``, ``--no-sandbox``; never
``playwright install``). Every test clicks through one panel and asserts on what a person sees:
the predicted label changes, the curve's marker follows the slider, highlighted edits appear,
an error message appears. Screenshots go to ``$ADVEX_TEST_ARTIFACTS`` (else pytest's tmp dir;
the path is printed).

Needs the ``[web]`` extra (fastapi, uvicorn, python-multipart, playwright) and ``apt-get install
chromium``; without them the module is skipped with the reason. The traffic-sign and spam panels
need ``../shared/datasets`` (or ``$ADVEX_DATASETS``) and are skipped without it.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from benchscripts import load_benchmark

pytest.importorskip("fastapi", reason="the [web] extra (fastapi) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the [web] extra (uvicorn) is not installed")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the [web] extra (playwright) is not installed"
)
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True
    )

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("ADVEX_DATASETS", ROOT.parent / "shared" / "datasets"))
GTSRB = DATASETS / "gtsrb-32x32"
SMS = DATASETS / "sms-spam-collection"
TIMEOUT_MS = 30_000  # a generous ceiling for one step on a shared 2-core machine; rarely approached
STEPS = "10"  # PGD steps in the tests: enough to flip an MNIST digit at eps 0.3, cheap


# ------------------------------------------------------------------ server and browser


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def server_url():
    from advex.serve import ServeConfig, create_app

    config = ServeConfig(
        gtsrb_root=GTSRB if GTSRB.is_dir() else None,
        gtsrb_model="gtsrb-cnn-small",  # the test model (the full recipe is for the page)
        sms_root=SMS if SMS.is_dir() else None,
        max_jobs=2,
        physical_steps=20,  # a small sticker for the stop-sign panel (fitted once, then cached)
        physical_fit_images=32,
        preload=True,  # load (in a fresh checkout: train) every model before the first page
    )
    app = create_app(config)
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 1200  # preloading trains uncached zoo models (fresh CI)
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the playground server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    env = os.environ.get("ADVEX_TEST_ARTIFACTS")
    path = Path(env) / "playground" if env else tmp_path_factory.mktemp("playground")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nplayground screenshots: {path}")
    return path


@pytest.fixture
def page(browser, server_url):
    """A fresh page on the playground, loaded, that records console errors and CSP violations."""
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def on_console(m) -> None:
        # 4xx answers are expected in the error tests; anything else logged as an error is not
        if m.type == "error" and "status of 4" not in m.text:
            problems.append(f"console {m.type}: {m.text}")

    pg.on("console", on_console)
    pg.goto(server_url + "/")
    pg.wait_for_selector("body[data-ready='1']")
    pg.wait_for_selector("#panel-input[data-model='mnist-smallcnn']")
    pg.problems = problems
    yield pg
    context.close()
    assert not problems, problems  # no script error, no CSP violation ("Refused to ...")


def _choose_sample(pg, i: int = 0) -> None:
    pg.focus(f"[data-testid=sample-{i}]")
    pg.keyboard.press("Enter")  # keyboard-usable: the samples are buttons
    pg.wait_for_selector("#current[data-state=done]")


def _attack(pg, runs_before: int | None = None) -> None:
    runs = runs_before if runs_before is not None else _runs(pg)
    pg.click("#attack-button")
    _wait_runs(pg, runs + 1)


def _runs(pg) -> int:
    return int(pg.get_attribute("#result", "data-runs") or 0)


def _wait_runs(pg, n: int) -> None:
    pg.wait_for_function(
        "n => Number(document.getElementById('result').dataset.runs || 0) >= n "
        "&& document.getElementById('result').dataset.state === 'done'",
        arg=n,
    )


def _wait_for_eps(pg, eps: float) -> None:
    """Wait until the rendered result is the one for ``eps`` (a re-attack the slider scheduled
    earlier can still land after a newer run has been counted)."""
    pg.wait_for_function(
        "e => Math.abs(Number(document.getElementById('result').dataset.eps) - e) < 1e-9 "
        "&& document.getElementById('result').dataset.state === 'done'",
        arg=eps,
    )


def _set_eps(pg, value: float) -> None:
    pg.fill("#eps-slider", str(value))  # fires 'input', as dragging does


# ------------------------------------------------------------------ panels


def test_attack_a_digit_flips_the_prediction(page, artifacts):
    pg = page
    assert pg.input_value("#model-select") == "mnist-smallcnn"
    _choose_sample(pg, 0)
    true_label = pg.inner_text("[data-testid=sample-0] .label")
    before = pg.inner_text("#current-pred")
    assert before == true_label  # the zoo model reads the first test digit correctly
    pg.select_option("#attack-select", "pgd")
    pg.fill("#steps-input", STEPS)
    _set_eps(pg, 0.3)
    pg.focus("#attack-button")
    pg.keyboard.press("Enter")
    _wait_runs(pg, 1)
    orig, adv = pg.inner_text("#orig-pred"), pg.inner_text("#adv-pred")
    assert orig == before
    assert adv != orig, "PGD at eps 0.3 should change the predicted digit"
    assert pg.get_attribute("#result", "data-success") == "true"
    assert pg.locator("#orig-bars li").count() == 5 and pg.locator("#adv-bars li").count() == 5
    for sel in ("#orig-image", "#pert-image", "#adv-image"):
        assert pg.evaluate("s => document.querySelector(s).naturalWidth", sel) > 0
    assert "round trip" in pg.inner_text("#result-stats")
    pg.screenshot(path=str(artifacts / "attack-digit.png"), full_page=True)

    # an error from the API (over the server's step budget) appears in the alert region
    assert pg.is_hidden("#alert")
    pg.evaluate("() => document.getElementById('steps-input').removeAttribute('max')")
    pg.fill("#steps-input", "100000")
    pg.click("#attack-button")
    pg.wait_for_selector("#alert:not([hidden])")
    assert "steps" in pg.inner_text("#alert-text").lower()
    assert pg.get_attribute("#alert", "role") == "alert"
    assert pg.get_attribute("#result", "data-state") == "error"


def test_slider_reattacks_and_the_curve_follows(page, artifacts):
    pg = page
    _choose_sample(pg, 1)
    pg.fill("#steps-input", STEPS)
    _set_eps(pg, 0.3)
    _attack(pg, 0)
    pg.wait_for_selector("#curve[data-state=done] [data-testid=curve-svg]")
    assert pg.locator("#curve circle").count() >= 4
    assert re.search(r"flips|does not flip", pg.inner_text("#curve-summary"))
    flipped = pg.inner_text("#adv-pred")
    marker_x = float(pg.get_attribute("[data-testid=curve-marker]", "x1"))

    # drag to a tiny budget with the keyboard: the marker moves at once, the attack re-runs
    runs = _runs(pg)
    pg.focus("#eps-slider")
    pg.keyboard.press("Home")
    pg.keyboard.press("ArrowRight")
    assert float(pg.get_attribute("[data-testid=curve-marker]", "x1")) < marker_x
    _wait_runs(pg, runs + 1)
    small = float(pg.input_value("#eps-slider"))
    _wait_for_eps(pg, small)
    assert float(pg.get_attribute("#result", "data-eps")) == pytest.approx(small)
    assert pg.inner_text("#adv-pred") == pg.inner_text("#orig-pred") != flipped  # too small to fool

    # superseded requests: jump to the top, then back before it can be shown -> the last one wins
    aborted: list[str] = []
    pg.on("requestfailed", lambda r: aborted.append(r.url) if "/api/attack" in r.url else None)
    runs = _runs(pg)
    pg.keyboard.press("End")
    pg.wait_for_timeout(300)  # past the debounce: the request for the largest eps is in flight
    pg.keyboard.press("Home")
    _wait_runs(pg, runs + 1)
    pg.wait_for_timeout(400)
    final = float(pg.input_value("#eps-slider"))
    assert float(pg.get_attribute("#result", "data-eps")) == pytest.approx(final)
    print(f"superseded attack requests aborted by the page: {len(aborted)}")
    pg.screenshot(path=str(artifacts / "slider-curve.png"), full_page=True)


def test_draw_a_digit(page, artifacts):
    pg = page
    pg.check("#kind-draw")
    box = pg.locator("#draw-canvas").bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    # a "7": the top bar, then the diagonal
    pg.mouse.move(x0 + 0.25 * w, y0 + 0.2 * h)
    pg.mouse.down()
    pg.mouse.move(x0 + 0.75 * w, y0 + 0.2 * h, steps=8)
    pg.mouse.move(x0 + 0.4 * w, y0 + 0.85 * h, steps=12)
    pg.mouse.up()  # lifting the pen classifies the drawing
    pg.wait_for_selector("#current[data-state=done]")
    pred = pg.inner_text("#current-pred")
    assert re.fullmatch(r"\d", pred), pred
    assert pg.locator("#current-bars li").count() == 5
    pg.screenshot(path=str(artifacts / "draw.png"), full_page=True)
    # the drawing can be attacked like any other input
    pg.fill("#steps-input", STEPS)
    _set_eps(pg, 0.3)
    _attack(pg, 0)
    assert pg.inner_text("#orig-pred") == pred


@pytest.mark.skipif(not GTSRB.is_dir(), reason=f"GTSRB data not found at {GTSRB}")
def test_stop_sign_views(page, artifacts):
    pg = page
    pg.fill("#views-input", "4")
    pg.click("#physical-button")
    pg.wait_for_selector("#physical[data-state=done]", timeout=120_000)
    views = pg.locator("#physical article.view")
    assert views.count() == 4
    for i in range(4):
        v = views.nth(i)
        assert v.locator(".view-clean-pred").inner_text().strip()
        assert v.locator(".view-sticker-pred").inner_text().strip()
        assert v.locator("img").count() == 2
    summary = pg.inner_text("[data-testid=physical-summary]")
    assert re.search(r"in \d of 4 views", summary), summary
    pg.locator("#panel-physical").screenshot(path=str(artifacts / "stop-sign.png"))


@pytest.mark.skipif(not SMS.is_dir(), reason=f"SMS spam data not found at {SMS}")
def test_spam_text_changes_are_highlighted(page, artifacts):
    pg = page
    pg.select_option("#model-select", "sms-spam-cnn")
    pg.wait_for_selector("#panel-input[data-model='sms-spam-cnn']")  # attacks + samples loaded
    pg.check("#kind-text")
    pg.click("#text-use")
    pg.wait_for_selector("#current[data-state=done]")
    assert pg.inner_text("#current-pred") == "spam"
    _attack(pg, 0)
    marks = pg.locator("#text-adv mark[data-testid=change]")
    assert marks.count() >= 1
    adv_text = pg.inner_text("#text-adv")
    for i in range(marks.count()):
        assert marks.nth(i).inner_text() in adv_text
    if pg.get_attribute("#result", "data-success") == "true":
        assert pg.inner_text("#text-adv-pred") != pg.inner_text("#text-orig-pred")
    assert "change" in pg.inner_text("#text-changes")
    pg.locator("#panel-result").screenshot(path=str(artifacts / "spam.png"))


def test_bad_upload_shows_the_error(page, artifacts):
    pg = page
    pg.check("#kind-upload")
    assert pg.is_hidden("#alert")
    pg.set_input_files(
        "#upload-input",
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image\n" * 10}],
    )
    pg.wait_for_selector("#alert:not([hidden])")
    message = pg.inner_text("#alert-text")
    assert "image" in message.lower(), message
    assert pg.get_attribute("#alert", "role") == "alert"
    assert pg.inner_text("#current-pred") == "—"
    pg.screenshot(path=str(artifacts / "bad-upload.png"))
    # a real image after the bad one works and clears the message; a GIF (which the server does
    # not take) is redrawn as a PNG by the page
    from PIL import Image, ImageDraw

    gif = Image.new("L", (56, 56), 0)
    ImageDraw.Draw(gif).line([(28, 8), (28, 48)], fill=255, width=6)  # a "1"
    buf = io.BytesIO()
    gif.save(buf, "GIF")
    one = {"name": "one.gif", "mimeType": "image/gif", "buffer": buf.getvalue()}
    pg.set_input_files("#upload-input", files=[one])
    pg.wait_for_selector("#current[data-state=done]")
    assert pg.is_hidden("#alert")
    assert re.fullmatch(r"\d", pg.inner_text("#current-pred"))
    assert pg.get_attribute("#current-image", "src").startswith("data:image/png;base64,")


def test_evaluate_a_batch_streams_progress(page, artifacts):
    pg = page
    pg.fill("#steps-input", STEPS)
    _set_eps(pg, 0.3)
    pg.fill("#eval-n", "12")
    pg.click("#eval-button")
    pg.wait_for_selector("#evaluate[data-state=done]")
    text = pg.inner_text("#eval-text")
    pattern = r"clean accuracy [\d.]+%, robust accuracy [\d.]+% on 12 test samples"
    assert re.search(pattern, text), text
    assert pg.locator("#eval-points li").count() == 12
    assert pg.get_attribute("#eval-progress", "value") == "12"
    # the plain CNN is not robust at eps 0.3: most samples are fooled
    assert pg.locator("#eval-points li.fooled").count() >= 6
    pg.locator("#panel-evaluate").screenshot(path=str(artifacts / "evaluate.png"))


def test_defend_toggle_compares_both_models(page, artifacts):
    pg = page
    _choose_sample(pg, 0)
    pg.check("#defend-toggle")
    pg.wait_for_selector("#current[data-state=done]")
    pg.fill("#steps-input", STEPS)
    _set_eps(pg, 0.2)
    _attack(pg, 0)
    rows = pg.locator("#defend-rows tr")
    assert rows.count() == 2
    base = pg.locator("[data-testid=defend-row-base] td").all_inner_texts()
    defended = pg.locator("[data-testid=defend-row-defended] td").all_inner_texts()
    # PGD-10 at eps 0.2 (seed 0) fools the plain CNN on this digit, not its FGSM-RS twin
    assert base[2] == "yes" and defended[2] == "no"
    assert pg.inner_text("#adv-pred") == pg.inner_text("#orig-pred")  # shown: the defended one
    assert pg.get_attribute("#result", "data-model") != pg.input_value("#model-select")
    print(f"defend toggle: base {base}, defended {defended}")
    pg.locator("#panel-result").screenshot(path=str(artifacts / "defend.png"))


def test_benchmark_round_trip_helper(page):
    """Smoke test of benchmarks/playground_browser.py's measurement (1 attack, 10 steps)."""
    bench = load_benchmark("playground_browser")
    out = bench.measure_round_trips(page, 1, steps=10)
    assert out["round_trip_ms"]["n"] == 1 and out["round_trip_ms"]["min"] > 0
    assert out["server_elapsed_ms"]["median"] <= out["round_trip_ms"]["median"]
    assert out["slider_move_to_result_ms"]["min"] >= 250  # the debounce is part of it


def test_phone_width_stacks_the_panels(browser, server_url, artifacts):
    context = browser.new_context(viewport={"width": 375, "height": 800}, device_scale_factor=1)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(server_url + "/")
        pg.wait_for_selector("body[data-ready='1']")
        _choose_sample(pg, 0)
        assert pg.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
        panels = ("panel-input", "panel-attack", "panel-result")
        boxes = [pg.locator(f"#{p}").bounding_box() for p in panels]
        assert boxes[0]["x"] == pytest.approx(boxes[1]["x"], abs=1)
        assert boxes[0]["y"] + boxes[0]["height"] <= boxes[1]["y"] <= boxes[2]["y"]
        assert all(b["width"] <= 375 for b in boxes)
        pg.screenshot(path=str(artifacts / "phone.png"), full_page=True)
    finally:
        context.close()
