"""The playground's JSON API (``advex serve``), through FastAPI's test client: every endpoint,
every error path (a JSON error naming the field, never a bare 500), the limits (body, image,
text, steps, ε, jobs, time budget), the security headers and the loopback default."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import threading
import time
import zlib

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("PIL")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from advex.serve import LOOPBACK_HOSTS, ServeConfig, create_app  # noqa: E402
from advex.serve.app import CSP  # noqa: E402
from advex.serve.jobs import Budget, BudgetedModel, JobPool, JobStopped  # noqa: E402
from advex.serve.limits import ApiError, to_data_url  # noqa: E402
from advex.serve.runner import text_changes  # noqa: E402

BASE = "http://127.0.0.1"


def _png_url(arr, mode="L") -> str:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _decode(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _error(r, status, code=None, field="__any__"):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and len(err["message"]) > 5
    if code is not None:
        assert err["code"] == code, err
    if field != "__any__":
        assert err["field"] == field, err
    assert r.headers["content-security-policy"] == CSP
    return err


@pytest.fixture(scope="module")
def gtsrb_root(datasets_root):
    root = datasets_root / "gtsrb-32x32"
    if not root.is_dir():
        pytest.skip("gtsrb-32x32 not in the shared datasets")
    return root


@pytest.fixture(scope="module")
def app(gtsrb_root, tmp_path_factory):
    cfg = ServeConfig(
        gtsrb_root=gtsrb_root,
        gtsrb_model="gtsrb-cnn-small",  # the test model (the full recipe is for the page)
        physical_steps=8,
        physical_fit_images=32,
        cache_dir=tmp_path_factory.mktemp("serve-cache"),
        max_jobs=2,
        max_queue=1,
    )
    return create_app(cfg)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=BASE) as c:
        yield c


def _attack(client, **kw):
    body = {"model": "mnist-smallcnn", "input": {"sample": 2}, "attack": "pgd", "eps": 0.2}
    body.update(kw)
    return client.post("/api/attack", json=body)


# ----------------------------------------------------------------------------------------------
# the listing endpoints
# ----------------------------------------------------------------------------------------------


def test_health_models_attacks(client):
    h = client.get("/api/health")
    assert h.status_code == 200
    j = h.json()
    assert j["status"] == "ok" and isinstance(j["version"], str)
    assert j["jobs"]["running"] == 0 and j["jobs"]["max_jobs"] == 2
    assert j["rss_mb"] is None or j["rss_mb"] > 10
    assert h.headers["content-security-policy"] == CSP
    assert h.headers["x-content-type-options"] == "nosniff"
    assert h.headers["x-frame-options"] == "DENY"
    assert h.headers["cache-control"] == "no-store"

    models = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert set(models) >= {"mnist-smallcnn", "gtsrb-cnn", "sms-spam-cnn"}
    mn = models["mnist-smallcnn"]
    assert mn["domain"] == "image" and mn["classes"] == [str(i) for i in range(10)]
    assert mn["input"] == {"channels": 1, "height": 28, "width": 28}
    assert mn["defended"] == "mnist-smallcnn-at" and mn["defended"] in models
    assert models["gtsrb-cnn"]["available"] and len(models["gtsrb-cnn"]["classes"]) == 43
    sms = models["sms-spam-cnn"]
    assert sms["domain"] == "text" and sms["input"] is None and sms["classes"] == ["ham", "spam"]

    img = {a["name"]: a for a in client.get("/api/attacks?domain=image").json()["attacks"]}
    assert set(img) == {"pgd", "fgsm", "mifgsm", "apgd", "square"}
    for a in img.values():
        assert a["norm"] == "linf" and a["eps"]["min"] <= a["eps"]["default"] <= a["eps"]["max"]
        assert 1 <= a["steps"]["default"] <= a["steps"]["max"]
    assert img["fgsm"]["steps"]["max"] == 1 and img["pgd"]["steps"]["max"] == 200
    txt = {a["name"]: a for a in client.get("/api/attacks?domain=text").json()["attacks"]}
    assert set(txt) == {"deepwordbug", "hotflip", "textfooler"}
    assert all(a["norm"] == "edits" for a in txt.values())
    _error(client.get("/api/attacks?domain=audio"), 422, "invalid_field", "domain")


def test_samples(client):
    r = client.get("/api/samples?model=mnist-smallcnn&n=12")
    assert r.status_code == 200
    s = r.json()["samples"]
    assert len(s) == 12 and {x["label"] for x in s} == set(range(10))
    assert all(x["label_name"] == str(x["label"]) for x in s)
    assert _decode(s[0]["image"]).size == (28, 28)
    g = client.get("/api/samples?model=gtsrb-cnn&n=3").json()["samples"]
    assert _decode(g[0]["image"]).size == (32, 32) and g[0]["label_name"] == "stop"
    t = client.get("/api/samples?model=sms-spam-cnn&n=4").json()["samples"]
    assert {x["label_name"] for x in t} == {"ham", "spam"} and all(x["text"] for x in t)
    _error(client.get("/api/samples?model=nope"), 404, "unknown_model", "model")
    _error(client.get("/api/samples?model=mnist-smallcnn&n=0"), 422, "invalid_field", "n")
    _error(client.get("/api/samples?model=mnist-smallcnn&n=x"), 422, None, "n")
    _error(client.get("/api/samples"), 422, "missing_field", "model")


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------


def test_predict_sample_drawing_and_text(client, mnist_model):
    from advex import data

    x, y = data.mnist5k("test").tensors()
    r = client.post("/api/predict", json={"model": "mnist-smallcnn", "input": {"sample": 7}})
    top = r.json()["top"]
    assert len(top) == 5 and top[0]["label"] == int(mnist_model(x[7:8]).argmax())
    assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
    # a canvas drawing: black digit on white, 280×280, RGBA -> normalised to MNIST
    with torch.no_grad():
        conf = torch.softmax(mnist_model(x[:50]), 1).max(1).values
    ok = [
        i for i in range(50) if conf[i] > 0.99 and int(mnist_model(x[i : i + 1]).argmax()) == y[i]
    ]
    for i in ok[:3]:
        big = torch.nn.functional.interpolate(x[i : i + 1], size=280, mode="bilinear")[0, 0]
        ink = ((1 - big).clamp(0, 1) * 255).to(torch.uint8).numpy()
        rgba = torch.stack([torch.from_numpy(ink)] * 3 + [torch.full((280, 280), 255)], -1)
        url = _png_url(rgba.to(torch.uint8).numpy(), "RGBA")
        r = client.post("/api/predict", json={"model": "mnist-smallcnn", "input": {"image": url}})
        assert r.status_code == 200 and r.json()["top"][0]["label"] == int(y[i])
    r = client.post(
        "/api/predict",
        json={"model": "sms-spam-cnn", "input": {"text": "WINNER!! Claim your free prize now"}},
    )
    assert r.json()["top"][0]["name"] == "spam"


# ----------------------------------------------------------------------------------------------
# attack and curve
# ----------------------------------------------------------------------------------------------


def test_attack_image_pgd_untargeted_and_targeted(client):
    r = _attack(client, steps=40)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["success"] is True and j["passes"] > 0 and j["elapsed_ms"] > 0
    assert j["adversarial"]["top"][0]["label"] != j["original"]["top"][0]["label"]
    assert j["perturbation"]["linf"] <= 0.2 + 1e-6 and j["perturbation"]["l2"] > 0
    assert _decode(j["adversarial"]["image"]).size == (28, 28)
    assert _decode(j["perturbation"]["image"]).size == (28, 28)
    t = _attack(client, eps=0.3, targeted=True, target="3").json()
    assert t["success"] and t["adversarial"]["top"][0]["label"] == 3 and t["target"] == 3
    label = j["label"]
    _error(_attack(client, targeted=True, target=label), 422, "target_is_prediction", "target")
    _error(_attack(client, targeted=True), 422, "missing_target", "target")
    _error(_attack(client, targeted=True, target=10), 422, "unknown_target", "target")
    _error(_attack(client, targeted=True, target="cat"), 404, "unknown_target", "target")
    z = _attack(client, eps=0.0).json()
    assert z["success"] is False and z["perturbation"]["linf"] == 0 and z["passes"] == 0


@pytest.mark.parametrize(
    "attack,steps", [("fgsm", 1), ("mifgsm", 10), ("apgd", 20), ("square", 300)]
)
def test_attack_image_every_attack(client, attack, steps):
    j = _attack(client, attack=attack, steps=steps, eps=0.25).json()
    assert j["perturbation"]["linf"] <= 0.25 + 1e-6
    assert isinstance(j["success"], bool) and j["attack"] == attack
    pred = j["adversarial"]["top"][0]["label"]
    assert j["success"] == (pred != j["label"])


def test_attack_gtsrb_and_defended_twin(client):
    j = client.post(
        "/api/attack",
        json={
            "model": "gtsrb-cnn",
            "input": {"sample": 0},
            "attack": "pgd",
            "eps": 0.03,
            "steps": 10,
        },
    ).json()
    assert "perturbation" in j, j
    assert j["perturbation"]["linf"] <= 0.03 + 1e-6
    assert _decode(j["adversarial"]["image"]).mode == "RGB"
    # the defended twin: the same PGD at ε = 0.15 moves the plain model, not the hardened one,
    # on most of 8 digits
    wins = {"mnist-smallcnn": 0, "mnist-smallcnn-at": 0}
    for m in wins:
        for s in range(8):
            r = client.post(
                "/api/attack",
                json={
                    "model": m,
                    "input": {"sample": s},
                    "attack": "pgd",
                    "eps": 0.15,
                    "steps": 20,
                },
            )
            wins[m] += r.json()["success"]
    assert wins["mnist-smallcnn"] >= 6 and wins["mnist-smallcnn-at"] <= 2, wins


def test_attack_text(client):
    spam = "WINNER!! You have won a free prize. Call 09061701461 now to claim your cash reward"
    r = client.post(
        "/api/attack",
        json={"model": "sms-spam-cnn", "input": {"text": spam}, "attack": "deepwordbug", "eps": 20},
    )
    j = r.json()
    assert r.status_code == 200 and j["original"]["top"][0]["name"] == "spam"
    assert j["success"] and j["adversarial"]["top"][0]["name"] == "ham" and j["queries"] > 0
    adv = j["adversarial"]["text"]
    assert adv != spam and j["changes"]
    for c in j["changes"]:
        assert adv[c["start"] : c["end"]] == c["after"] and c["kind"] == "char"
    h = client.post(
        "/api/attack",
        json={"model": "sms-spam-cnn", "input": {"sample": 0}, "attack": "hotflip", "eps": 3},
    ).json()
    assert h["char_edits"] <= 3 and h["attack"] == "hotflip"
    _error(
        client.post(
            "/api/attack",
            json={
                "model": "sms-spam-cnn",
                "input": {"text": spam},
                "attack": "deepwordbug",
                "eps": 2.5,
            },
        ),
        422,
        "eps_not_integer",
        "eps",
    )


def test_text_changes_spans():
    a, b = "you won a free prize now", "you on a fret prize"
    ch = text_changes(a, b, "char")
    assert [(c["before"], c["after"]) for c in ch] == [("won", "on"), ("free", "fret"), ("now", "")]
    assert all(b[c["start"] : c["end"]] == c["after"] for c in ch)


def test_curve(client):
    r = client.post(
        "/api/curve",
        json={
            "model": "mnist-smallcnn",
            "input": {"sample": 2},
            "attack": "pgd",
            "eps_values": [0.0, 0.1, 0.3],
            "steps": 20,
        },
    )
    pts = r.json()["points"]
    assert [p["eps"] for p in pts] == [0.0, 0.1, 0.3]
    assert pts[0]["success"] is False and pts[-1]["success"] is True
    assert pts[0]["prob_true"] > pts[-1]["prob_true"]
    for p in pts:
        assert set(p) == {"eps", "success", "pred", "pred_name", "prob_true", "prob_pred"}
    body = {"model": "mnist-smallcnn", "input": {"sample": 2}, "attack": "pgd"}
    e = _error(client.post("/api/curve", json={**body, "eps_values": [0.1] * 17}), 422)
    assert e["code"] == "too_many_points" and e["field"] == "eps_values"
    _error(
        client.post("/api/curve", json={**body, "eps_values": [0.1, 0.2, 0.9]}),
        422,
        "eps_out_of_range",
        "eps_values.2",
    )
    _error(client.post("/api/curve", json={**body, "eps_values": []}), 422, None, "eps_values")


def test_physical(client, app):
    r = client.get("/api/physical?views=3&seed=1")
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["available"] and j["source"] == "stop" and j["target"] == "speed limit (30km/h)"
    assert len(j["views"]) == 3
    assert _decode(j["sticker"]["image"]).mode == "RGBA"
    for v in j["views"]:
        assert set(v["condition"]) >= {"angle", "scale", "brightness"}
        assert len(v["stickered"]["top"]) == 5 and v["clean"]["image"] != v["stickered"]["image"]
    cached = list((app.state.config.cache_path / "serve").glob("rp2-stop-to-30-*.safetensors"))
    assert len(cached) == 1  # fitted once, kept as safetensors
    again = client.get("/api/physical?views=3&seed=1").json()
    assert again["views"] == j["views"]  # same seed, same views, no refit
    _error(client.get("/api/physical?views=13"), 422, "invalid_field", "views")
    _error(client.get("/api/physical?seed=-1"), 422, "invalid_field", "seed")


def test_unavailable_models_without_data(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    c = TestClient(create_app(ServeConfig(gtsrb_root=None, sms_root=empty)), base_url=BASE)
    models = {m["name"]: m for m in c.get("/api/models").json()["models"]}
    assert models["gtsrb-cnn"]["available"] is False and "--gtsrb" in models["gtsrb-cnn"]["reason"]
    assert models["sms-spam-cnn"]["available"] is False
    p = c.get("/api/physical").json()
    assert p["available"] is False and p["views"] == [] and p["reason"]
    _error(
        c.post("/api/predict", json={"model": "gtsrb-cnn", "input": {"sample": 0}}),
        409,
        "model_unavailable",
        "model",
    )


# ----------------------------------------------------------------------------------------------
# bad input: every error is JSON and names the problem
# ----------------------------------------------------------------------------------------------


def _truncated_png_header(w: int, h: int) -> bytes:
    """A PNG signature + IHDR claiming ``w``×``h`` and a few bytes of IDAT: a bomb's header."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_image_errors(client):
    def post(url):
        return client.post(
            "/api/predict", json={"model": "mnist-smallcnn", "input": {"image": url}}
        )

    png = "data:image/png;base64,"
    # decompression bomb: 100,000² pixels claimed by a 100-byte file; refused from the header
    bomb = png + base64.b64encode(_truncated_png_header(100_000, 100_000)).decode()
    _error(post(bomb), 413, "image_too_large", "input.image")
    # a real 1500×1500 PNG (compresses to a few kB) is over the 1024 px limit
    _error(post(_png_url(torch.zeros(1500, 1500, dtype=torch.uint8).numpy())), 413)
    _error(post(png + "!!!not base64!!!"), 422, "malformed_base64", "input.image")
    _error(post(png + base64.b64encode(b"GIF89a not a png").decode()), 422, "invalid_image")
    good = _png_url(torch.zeros(40, 40, dtype=torch.uint8).numpy())
    raw = base64.b64decode(good.split(",", 1)[1])
    _error(post(png + base64.b64encode(raw[:-30]).decode()), 422, "invalid_image")
    _error(post("data:image/gif;base64,R0lGODlh"), 415, "unsupported_image_type")
    _error(post("http://example.com/x.png"), 422, "invalid_image", "input.image")
    _error(post(png), 422, "invalid_image")
    assert post(good).status_code == 200  # a blank drawing is still an answer


def test_body_errors(client):
    big = {
        "model": "mnist-smallcnn",
        "input": {"image": "data:image/png;base64," + "A" * 2_100_000},
    }
    _error(client.post("/api/predict", json=big), 413, "body_too_large")

    def chunks():  # no Content-Length: counted while read
        for _ in range(30):
            yield b" " * 100_000

    _error(
        client.post("/api/predict", content=chunks(), headers={"content-type": "application/json"}),
        413,
        "body_too_large",
    )
    _error(
        client.post(
            "/api/attack", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
        "malformed_json",
    )
    _error(client.get("/api/nothing"), 404, "not_found")
    _error(client.delete("/api/attack"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "patch,status,code,field",
    [
        ({"eps": "0.1"}, 422, "invalid_field", "eps"),
        ({"eps": 0.9}, 422, "eps_out_of_range", "eps"),
        ({"eps": -0.1}, 422, "eps_out_of_range", "eps"),
        ({"steps": 2.5}, 422, "invalid_field", "steps"),
        ({"steps": 201}, 422, "steps_out_of_range", "steps"),
        ({"steps": 0}, 422, "steps_out_of_range", "steps"),
        ({"attack": "fgsm", "steps": 5}, 422, "steps_out_of_range", "steps"),
        ({"seed": -1}, 422, "invalid_field", "seed"),
        ({"targeted": "yes"}, 422, "invalid_field", "targeted"),
        ({"steps": True}, 422, "invalid_field", "steps"),
        ({"eps": None, "steps": "40"}, 422, "invalid_field", "steps"),
        ({"model": "resnet"}, 404, "unknown_model", "model"),
        ({"model": 3}, 422, "invalid_field", "model"),
        ({"attack": "deepfool"}, 404, "unknown_attack", "attack"),
        ({"attack": "deepwordbug"}, 404, "unknown_attack", "attack"),
        ({"input": {"sample": 100_000}}, 404, "unknown_sample", "input.sample"),
        ({"input": {"sample": "3"}}, 422, "invalid_field", "input.sample"),
        ({"input": {"sample": -1}}, 404, "unknown_sample", "input.sample"),
        ({"input": {}}, 422, "invalid_field", "input"),
        ({"input": {"sample": 1, "image": "x"}}, 422, "invalid_field", "input"),
        ({"input": {"path": "/etc/passwd"}}, 422, "unknown_field", "input.path"),
        ({"input": {"text": "hello"}}, 422, "wrong_input", "input"),
        ({"weights": "/tmp/model.pt"}, 422, "unknown_field", "weights"),
        ({"input": None}, 422, None, "input"),
    ],
)
def test_attack_request_errors(client, patch, status, code, field):
    _error(_attack(client, **patch), status, code, field)


def test_text_errors(client):
    def post(text, **kw):
        body = {"model": "sms-spam-cnn", "input": {"text": text}, "attack": "deepwordbug", **kw}
        return client.post("/api/attack", json=body)

    _error(post("x" * 2001), 413, "text_too_long", "input.text")
    _error(post("   "), 422, "empty_text", "input.text")
    _error(post(""), 422, "empty_text", "input.text")
    _error(post("a\x00b"), 422, "invalid_text", "input.text")
    _error(post("hi", eps=61), 422, "eps_out_of_range", "eps")
    _error(
        client.post(
            "/api/predict",
            json={"model": "sms-spam-cnn", "input": {"image": "data:image/png;base64,AAAA"}},
        ),
        422,
        "wrong_input",
        "input",
    )


def test_missing_field_and_unknown_field(client):
    _error(client.post("/api/attack", json={"model": "mnist-smallcnn"}), 422, "missing_field")
    _error(client.post("/api/predict", json=[1, 2]), 422)


def test_internal_error_is_json_not_bare_500(app, monkeypatch):
    c = TestClient(app, base_url=BASE, raise_server_exceptions=False)

    def boom(name):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(app.state.catalog, "model", boom)
    r = c.post("/api/predict", json={"model": "mnist-smallcnn", "input": {"sample": 0}})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["content-security-policy"] == CSP


# ----------------------------------------------------------------------------------------------
# jobs: cap, busy, time budget, disconnected clients; the cached models stay untouched
# ----------------------------------------------------------------------------------------------


def _occupy(pool: JobPool, n: int):
    """Fill ``n`` slots of ``pool`` with jobs that wait for the returned event."""
    release = threading.Event()

    def hold(budget):
        release.wait(10)
        return "held"

    threads = [
        threading.Thread(target=lambda: asyncio.run(pool.run(hold)), daemon=True) for _ in range(n)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while pool.stats()["running"] + pool.stats()["queued"] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return release, threads


def test_busy_is_429_and_the_cap_holds(tmp_path):
    app = create_app(ServeConfig(max_jobs=1, max_queue=0, cache_dir=tmp_path))
    c = TestClient(app, base_url=BASE)
    pool = app.state.pool
    release, threads = _occupy(pool, 1)
    try:
        assert c.get("/api/health").json()["jobs"]["running"] == 1
        e = _error(_attack(c), 429, "busy")
        assert "busy" in e["message"]
        # cheap requests are not jobs: still answered
        body = {"model": "mnist-smallcnn", "input": {"sample": 0}}
        assert c.post("/api/predict", json=body).status_code == 200
    finally:
        release.set()
        for t in threads:
            t.join(5)
    assert _attack(c).status_code == 200
    stats = c.get("/api/health").json()["jobs"]
    assert stats["peak_running"] == 1 and stats["rejected"] == 1 and stats["running"] == 0


def test_time_budget_stops_the_attack(tmp_path):
    app = create_app(ServeConfig(time_budget_s=0.05, cache_dir=tmp_path))
    c = TestClient(app, base_url=BASE)
    # a tiny ε the model resists: PGD runs all its 200 steps, far past 50 ms
    e = _error(_attack(c, eps=0.005, steps=200), 503, "time_budget", "steps")
    assert "time budget" in e["message"]
    stats = c.get("/api/health").json()["jobs"]
    assert stats["timed_out"] == 1 and stats["running"] == 0


def test_queued_job_of_a_disconnected_client_is_skipped():
    pool = JobPool(max_jobs=1, max_queue=1, time_budget_s=5, queue_timeout_s=5)
    release, threads = _occupy(pool, 1)
    ran = []

    async def gone():
        return True

    async def second():
        return await pool.run(lambda b: ran.append(1), is_disconnected=gone, poll_s=0.01)

    def go():
        try:
            asyncio.run(second())
        except ApiError as err:
            ran.append(err.code)

    t = threading.Thread(target=go)
    t.start()
    time.sleep(0.2)
    release.set()
    t.join(5)
    for th in threads:
        th.join(5)
    assert ran == ["client_closed"]  # the job itself never ran
    assert pool.stats()["cancelled"] == 1 and pool.stats()["running"] == 0
    pool.shutdown()


def test_budgeted_model_stops_at_the_next_call(mnist_model):
    b = Budget(10.0)
    b.start()
    m = BudgetedModel(mnist_model, b)
    x = torch.zeros(1, 1, 28, 28)
    assert m(x).shape == (1, 10)
    b.cancelled.set()
    with pytest.raises(JobStopped):
        m(x)


def test_cached_models_are_not_mutated(client, app):
    model = app.state.catalog.model("mnist-smallcnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _attack(client, steps=10).status_code == 200
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# the page, hosts and origins, the loopback default
# ----------------------------------------------------------------------------------------------


def test_static_page_and_traversal(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>advex</title>", encoding="utf-8")
    (tmp_path / "app.js").write_text("console.log(1)", encoding="utf-8")
    (tmp_path.parent / "secret.txt").write_text("no", encoding="utf-8")
    c = TestClient(create_app(ServeConfig(static_dir=tmp_path)), base_url=BASE)
    r = c.get("/")
    assert r.status_code == 200 and "advex" in r.text
    assert r.headers["content-security-policy"] == CSP
    assert c.get("/static/app.js").status_code == 200
    _error(c.get("/static/../secret.txt"), 404)
    _error(c.get("/static/%2e%2e/secret.txt"), 404)
    _error(c.get("/static/nope.js"), 404)
    missing = TestClient(create_app(ServeConfig(static_dir=tmp_path / "none")), base_url=BASE)
    _error(missing.get("/"), 404, "no_page")


def test_hosts_and_origins(client):
    _error(client.get("/api/health", headers={"host": "evil.example"}), 421, "host_not_allowed")
    assert client.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
    body = {"model": "mnist-smallcnn", "input": {"sample": 0}}
    _error(
        client.post("/api/predict", json=body, headers={"origin": "http://evil.example"}),
        403,
        "origin_not_allowed",
    )
    ok = client.post("/api/predict", json=body, headers={"origin": "http://127.0.0.1:8000"})
    assert ok.status_code == 200


def test_loopback_default_and_expose():
    from click.testing import CliRunner

    from advex.cli import main
    from advex.cli.serve import check_bind, serve

    assert ServeConfig().allowed_hosts == LOOPBACK_HOSTS
    defaults = {p.name: p.default for p in serve.params}
    assert defaults["host"] == "127.0.0.1"
    assert check_bind("127.0.0.1", False) is None and check_bind("localhost", False) is None
    assert "WARNING" in check_bind("0.0.0.0", True)
    r = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--expose" in r.output


def test_missing_web_extra_message(monkeypatch):
    from click.testing import CliRunner

    import advex.serve
    from advex.cli import main

    monkeypatch.setattr(advex.serve, "web_missing", lambda: 'install: pip install -e ".[web]"')
    r = CliRunner().invoke(main, ["serve"])
    assert r.exit_code == 1 and ".[web]" in r.output


def test_to_data_url_roundtrip():
    x = torch.rand(3, 5, 7)
    img = _decode(to_data_url(x))
    assert img.size == (7, 5) and img.mode == "RGB"


def test_budgeted_text_module_checks_every_call(client, app):
    from advex.serve.jobs import BudgetedTextModule

    base = app.state.catalog.model("sms-spam-cnn")
    b = Budget(10.0)
    b.start()
    clf = app.state.catalog.text_classifier("sms-spam-cnn", BudgetedTextModule(base.module, b))
    assert "gradients" in clf.exposes  # still white box (HotFlip)
    assert clf(["free prize"]).shape == (1, 2) and b.calls == 1
    b.cancelled.set()
    with pytest.raises(JobStopped):
        clf(["free prize"])


def test_evaluate_small_batch(client):
    def ev(model, **kw):
        body = {"model": model, "attack": "pgd", "eps": 0.2, "steps": 10, "n": 10, **kw}
        return client.post("/api/evaluate", json=body)

    plain, hard = ev("mnist-smallcnn").json(), ev("mnist-smallcnn-at").json()
    for r in (plain, hard):
        assert r["n"] == 10 and len(r["points"]) == 10 and r["passes"] > 0
        assert r["robust_accuracy"] == sum(p["robust"] for p in r["points"]) / 10
        assert r["clean_accuracy"] >= 0.9
    assert plain["robust_accuracy"] <= 0.2 < 0.6 <= hard["robust_accuracy"], (plain, hard)
    t = client.post(
        "/api/evaluate", json={"model": "sms-spam-cnn", "attack": "deepwordbug", "eps": 5, "n": 4}
    ).json()
    assert t["n"] == 4 and t["queries"] > 0
    _error(ev("mnist-smallcnn", n=101), 422, "invalid_field", "n")
    _error(ev("mnist-smallcnn", n=0), 422, "invalid_field", "n")
    _error(ev("mnist-smallcnn", eps=0.7), 422, "eps_out_of_range", "eps")
    _error(ev("mnist-smallcnn", input={"sample": 1}), 422, "unknown_field", "input")


def test_evaluate_streams_progress(client):
    import json

    body = {"model": "mnist-smallcnn", "attack": "pgd", "eps": 0.2, "steps": 5, "n": 15}
    with client.stream("POST", "/api/evaluate?stream=true", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["content-security-policy"] == CSP
        lines = [json.loads(line) for line in r.iter_lines() if line]
    progress = [x["progress"] for x in lines[:-1]]
    assert [p["done"] for p in progress] == [10, 15] and all(p["n"] == 15 for p in progress)
    final = lines[-1]["result"]
    assert final["n"] == 15 and final["robust_accuracy"] == progress[-1]["robust"] / 15
    plain = client.post("/api/evaluate", json=body).json()  # same numbers without streaming
    assert plain["points"] == final["points"]


def test_uploads_jpeg_sign_and_transparent_canvas(client, mnist_model):
    from advex import data

    # a JPEG photo of a sign, any size: resized to the model's 32×32
    stop = client.get("/api/samples?model=gtsrb-cnn&n=1").json()["samples"][0]
    img = _decode(stop["image"]).convert("RGB").resize((96, 96), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    r = client.post("/api/predict", json={"model": "gtsrb-cnn", "input": {"image": url}})
    assert r.status_code == 200 and r.json()["top"][0]["name"] == "stop"
    # a canvas with a transparent background and black strokes: still read as the digit
    x, y = data.mnist5k("test").tensors()
    i = int((mnist_model(x[:20]).argmax(1) == y[:20]).nonzero()[0])
    big = torch.nn.functional.interpolate(x[i : i + 1], size=200, mode="bilinear")[0, 0]
    alpha = (big.clamp(0, 1) * 255).to(torch.uint8)
    rgba = torch.stack([torch.zeros_like(alpha)] * 3 + [alpha], -1).numpy()
    r = client.post(
        "/api/predict",
        json={"model": "mnist-smallcnn", "input": {"image": _png_url(rgba, "RGBA")}},
    )
    assert r.json()["top"][0]["label"] == int(y[i])


def test_defended_twin_recipe(app, tiny_model):
    """mnist-smallcnn-at: the FGSM-RS step stays in the ε-ball and the box; the zoo card
    records what it was trained for and how robust it came out."""
    from advex import zoo
    from advex.zoo.robust import AT_RECIPE, fgsm_rs_loss

    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = tiny_model

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.m(x)

    xb = torch.rand(16, 1, 8, 8)
    yb = torch.randint(0, 10, (16,))
    loss, logits = fgsm_rs_loss(lambda step: 0.1)(Spy(), xb, yb, torch.Generator().manual_seed(0))
    x_adv = seen[-1]
    assert loss.requires_grad and logits.shape == (16, 10)
    assert float((x_adv - xb).abs().max()) <= 0.1 + 1e-6 and not torch.equal(x_adv, xb)
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    app.state.catalog.model("mnist-smallcnn-at")  # trained and cached on first use
    card = zoo.load_card("mnist-smallcnn-at")
    assert card["recipe_id"] == zoo.recipe_fingerprint(AT_RECIPE)
    assert card["accuracy"] >= AT_RECIPE["min_accuracy"]
    assert card["robust_accuracy"]["pgd40_eps0.1"] > 0.8  # the plain model: about 0.54


def test_expose_flag_warns_and_opens_hosts(monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    from advex.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    r = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--expose", "--no-preload"])
    assert r.exit_code == 0, r.output
    assert "WARNING" in r.output and "0.0.0.0" in r.output
    assert calls[0][0] == "threads" and calls[0][1] >= 1  # cores // jobs, not the caller's
    app, kw = calls[1]
    assert kw["host"] == "0.0.0.0" and app.state.config.allowed_hosts is None
    calls.clear()
    r = CliRunner().invoke(main, ["serve", "--no-preload", "--port", "8123"])
    app, kw = calls[1]
    assert kw == {**kw, "host": "127.0.0.1", "port": 8123} and "WARNING" not in r.output
    assert app.state.config.allowed_hosts == LOOPBACK_HOSTS
