"""The FastAPI application: the JSON API of the playground and its static page.

Built by :func:`create_app`; the contract (routes, fields, errors) is in docs/playground.md.
Every error is answered as ``{"error": {"code", "message", "field"}}`` with a 4xx status;
every response carries the Content-Security-Policy and the other security headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .catalog import Catalog
from .config import ServeConfig
from .jobs import JobPool
from .limits import ApiError, check_text, decode_image, image_to_tensor, to_data_url
from .physical import StickerPanel
from .runner import (
    attack_image,
    attack_text,
    evaluate_batch,
    image_attacks,
    predict_image,
    predict_text,
    public,
    text_attacks,
    top_k,
)

__all__ = ["create_app", "CSP", "SECURITY_HEADERS"]

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


# ----------------------------------------------------------------------------------------------
# request bodies (strict: no coercion, no unknown fields)
# ----------------------------------------------------------------------------------------------


class InputBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sample: int | None = None
    image: str | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("sample", "image", "text") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of sample, image or text"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())
    model: str
    input: InputBody


class AttackBody(PredictBody):
    attack: str
    eps: float | None = None
    steps: int | None = None
    targeted: bool = False
    target: int | str | None = None
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class EvaluateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())
    model: str
    attack: str
    eps: float | None = None
    steps: int | None = None
    n: int = Field(default=20, ge=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class CurveBody(PredictBody):
    attack: str
    eps_values: list[float] = Field(min_length=1)
    steps: int | None = None
    targeted: bool = False
    target: int | str | None = None
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


# ----------------------------------------------------------------------------------------------
# the guard: body size, host and origin checks, security headers (plain ASGI)
# ----------------------------------------------------------------------------------------------


def _error_response(status: int, code: str, message: str, field: str | None = None):
    return JSONResponse(
        {"error": {"code": code, "message": message, "field": field}}, status_code=status
    )


def _host_only(value: str) -> str:
    v = value.strip().lower()
    if v.startswith("["):  # [::1]:8000
        return v.split("]")[0] + "]"
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


class GuardMiddleware:
    """Rejects a body over ``max_body`` (413, before it is all read), a Host header not in
    ``allowed_hosts`` (421: DNS rebinding), a cross-site Origin on a write (403); adds the
    security headers to every response."""

    def __init__(self, app, max_body: int, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.max_body = max_body
        self.allowed = None if allowed_hosts is None else {_host_only(h) for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secure(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _SEC]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if scope["path"].startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed is not None:
            host = _host_only(headers.get("host", ""))
            if host not in self.allowed:
                resp = _error_response(
                    421,
                    "host_not_allowed",
                    f"Host {headers.get('host', '')!r} is not served here (the server answers "
                    "only loopback names; start it with --expose to serve others)",
                )
                return await resp(scope, receive, send_secure)
            origin = headers.get("origin")
            if origin and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                o = origin.split("://", 1)[-1]
                if origin == "null" or _host_only(o) not in self.allowed:
                    resp = _error_response(
                        403, "origin_not_allowed", f"requests from {origin!r} are not allowed"
                    )
                    return await resp(scope, receive, send_secure)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            too_big = _error_response(
                413,
                "body_too_large",
                f"the request body is over the limit of {self.max_body:,} bytes",
            )
            if length is not None:
                try:
                    n = int(length)
                except ValueError:
                    return await _error_response(
                        400, "bad_content_length", "the Content-Length header is not a number"
                    )(scope, receive, send_secure)
                if n > self.max_body:
                    return await too_big(scope, receive, send_secure)
            chunks, total = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body = message.get("body", b"")
                total += len(body)
                if total > self.max_body:
                    return await too_big(scope, receive, send_secure)
                chunks.append(body)
                if not message.get("more_body", False):
                    break
            replayed = False

            async def receive_replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            return await self._guarded(scope, receive_replay, send_secure)
        return await self._guarded(scope, receive, send_secure)

    async def _guarded(self, scope, receive, send):
        """Run the app; an unexpected exception becomes a JSON 500 with the security headers
        (logged with its traceback), never a bare text page."""
        started = False

        async def send_tracking(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as err:
            _log.exception("advex serve: internal error on %s", scope.get("path"))
            if started:
                raise
            resp = _error_response(
                500, "internal_error", f"internal error ({type(err).__name__}); see the server log"
            )
            await resp(scope, receive, send)


_SEC = {k.encode() for k in SECURITY_HEADERS}
_log = logging.getLogger("advex.serve")


# ----------------------------------------------------------------------------------------------
# the app
# ----------------------------------------------------------------------------------------------


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("advex")
    except Exception:  # pragma: no cover - not installed
        import advex

        return getattr(advex, "__version__", "unknown")


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:  # pragma: no cover - not Linux
        return None
    return None  # pragma: no cover


def _field_of(loc) -> str | None:
    loc = list(loc)
    if loc and loc[0] in ("body", "query", "path"):
        loc = loc[1:]
    parts = [str(p) for p in loc]
    # drop pydantic's union-branch names ("int", "str", "function-after[...]")
    parts = [
        p for p in parts if not p.startswith(("function-", "union")) and p not in ("int", "str")
    ]
    return ".".join(parts) or None


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The playground app: ``GET /``, ``/static/*`` and the JSON API under ``/api``.

    >>> from fastapi.testclient import TestClient
    >>> client = TestClient(create_app(ServeConfig(max_jobs=1)), base_url="http://127.0.0.1")
    >>> client.get("/api/models").json()["models"][0]["name"]
    'mnist-smallcnn'
    """
    config = config or ServeConfig()
    if config.torch_threads:
        torch.set_num_threads(int(config.torch_threads))
    catalog = Catalog(config)
    pool = JobPool(config.max_jobs, config.max_queue, config.time_budget_s, config.queue_timeout_s)
    sticker_panel = StickerPanel(config, catalog)
    img_attacks = image_attacks(config.max_steps)
    txt_attacks = text_attacks(config.max_steps)
    started = time.time()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if config.preload:
            await run_in_threadpool(preload, catalog, sticker_panel)
        yield
        pool.shutdown()

    app = FastAPI(
        title="advex playground",
        version=_version(),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(
        GuardMiddleware, max_body=config.max_body_bytes, allowed_hosts=config.allowed_hosts
    )
    app.state.config = config
    app.state.catalog = catalog
    app.state.pool = pool
    app.state.physical = sticker_panel

    # -- errors ----------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        errors = err.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        field = _field_of(first.get("loc", ()))
        kind = first.get("type", "")
        if kind == "json_invalid":
            return _error_response(400, "malformed_json", "the request body is not valid JSON")
        code = {
            "missing": "missing_field",
            "extra_forbidden": "unknown_field",
            "model_attributes_type": "invalid_type",
            "dict_type": "invalid_type",
        }.get(kind, "invalid_field")
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        where = f"field {field!r}" if field else "the request body"
        body = {"error": {"code": code, "message": f"{where}: {msg}", "field": field}}
        body["error"]["details"] = [
            {"field": _field_of(e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in errors[:10]
        ]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        msg = (
            f"no such route: {request.method} {request.url.path}"
            if err.status_code == 404
            else f"{request.method} is not allowed on {request.url.path}"
            if err.status_code == 405
            else str(err.detail)
        )
        return _error_response(err.status_code, code, msg)

    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def _refused(request: Request, err: Exception):
        # bad values the checks above missed reach advex as ValueError/TypeError: a 422
        return _error_response(422, "invalid_input", f"advex refused the input: {err}")

    # -- helpers -------------------------------------------------------------------------------
    def attack_spec(info, name: Any):
        table = img_attacks if info.domain == "image" else txt_attacks
        if not isinstance(name, str) or name.lower() not in table:
            raise ApiError(
                404,
                "unknown_attack",
                f"unknown attack {name!r} for {info.domain} models; available: {', '.join(table)}",
                "attack",
            )
        spec = table[name.lower()]
        if spec.reason is not None:
            raise ApiError(409, "attack_unavailable", f"{spec.name}: {spec.reason}", "attack")
        return spec

    def check_eps(spec, info, eps, field="eps"):
        if eps is None:
            eps = info.eps_default if info.eps_default is not None else spec.eps_default
        if not math.isfinite(eps) or not spec.eps_min <= eps <= spec.eps_max:
            raise ApiError(
                422,
                "eps_out_of_range",
                f"eps {eps} is outside {spec.name}'s range [{spec.eps_min}, {spec.eps_max}]",
                field,
            )
        if spec.norm == "edits" and float(eps) != int(eps):
            raise ApiError(
                422,
                "eps_not_integer",
                f"eps of {spec.name} counts {spec.unit}: a whole number",
                field,
            )
        return float(eps)

    def check_steps(spec, steps):
        if steps is None:
            return spec.steps_default
        if not 1 <= steps <= spec.steps_max:
            raise ApiError(
                422,
                "steps_out_of_range",
                f"steps {steps} is outside {spec.name}'s range [1, {spec.steps_max}]",
                "steps",
            )
        return int(steps)

    def check_target(info, targeted: bool, target):
        if not targeted:
            return None
        if target is None:
            raise ApiError(
                422, "missing_target", "a targeted attack needs a target class", "target"
            )
        if isinstance(target, str):
            if target in info.classes:
                return info.classes.index(target)
            if target.isdigit() and int(target) < len(info.classes):
                return int(target)
            raise ApiError(
                404,
                "unknown_target",
                f"{target!r} is not a class of {info.name}",
                "target",
            )
        if not 0 <= target < len(info.classes):
            raise ApiError(
                422,
                "unknown_target",
                f"target {target} is outside the classes 0..{len(info.classes) - 1} of {info.name}",
                "target",
            )
        return int(target)

    def resolve_input(info, inp: InputBody):
        """``x (1, C, H, W)`` for an image model or the text for a text model."""
        if info.domain == "text":
            if inp.image is not None:
                raise ApiError(422, "wrong_input", f"{info.name} reads text, not images", "input")
            if inp.sample is not None:
                return catalog.sample(info.name, inp.sample)[1]
            return check_text(inp.text, max_chars=config.max_text_chars)
        if inp.text is not None:
            raise ApiError(422, "wrong_input", f"{info.name} reads images, not text", "input")
        if inp.sample is not None:
            return catalog.sample(info.name, inp.sample)[1]
        img = decode_image(inp.image, max_side=config.max_image_side)
        s = info.input
        return image_to_tensor(img, s["channels"], s["height"], s["width"], digits=info.digits)

    async def prepare(body: PredictBody):
        info = catalog.info(body.model)

        def work():
            catalog.model(info.name)  # loads it (trains on first use) outside the job budget
            return resolve_input(info, body.input)

        return info, await run_in_threadpool(work)

    # -- routes ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        page = config.static_path / "index.html"
        if not page.is_file():
            raise ApiError(404, "no_page", "the page is not installed (static/index.html)")
        return FileResponse(page, media_type="text/html; charset=utf-8")

    @app.get("/static/{name:path}", include_in_schema=False)
    async def static(name: str):
        root = config.static_path.resolve()
        path = (root / name).resolve()
        if root not in path.parents or not path.is_file():
            raise ApiError(404, "not_found", f"no static file {name!r}", "path")
        return FileResponse(path)

    @app.get("/api/health")
    async def health():
        return {
            "status": "ok",
            "version": _version(),
            "jobs": pool.stats(),
            "rss_mb": _rss_mb(),
            "uptime_s": round(time.time() - started, 1),
            "loaded_models": catalog.loaded(),
            "torch_threads": torch.get_num_threads(),
            "limits": {
                "max_body_bytes": config.max_body_bytes,
                "max_image_side": config.max_image_side,
                "max_text_chars": config.max_text_chars,
                "max_steps": config.max_steps,
                "max_curve_points": config.max_curve_points,
                "max_samples": config.max_samples,
                "max_eval": config.max_eval,
                "time_budget_s": config.time_budget_s,
            },
        }

    @app.get("/api/models")
    async def models():
        return {"models": [m.to_json() for m in catalog.models.values()]}

    @app.get("/api/attacks")
    async def attacks(domain: str = Query("image")):
        if domain not in ("image", "text"):
            raise ApiError(
                422, "invalid_field", f"domain must be 'image' or 'text', got {domain!r}", "domain"
            )
        table = img_attacks if domain == "image" else txt_attacks
        return {"attacks": [a.to_json() for a in table.values()]}

    @app.get("/api/samples")
    async def samples(model: str = Query(...), n: int = Query(12)):
        info = catalog.info(model)
        if not 1 <= n <= config.max_samples:
            raise ApiError(
                422, "invalid_field", f"n must be in [1, {config.max_samples}], got {n}", "n"
            )

        def work():
            out = []
            for i, label, item in catalog.samples(info.name, n):
                rec: dict[str, Any] = {"id": i, "label": label, "label_name": info.classes[label]}
                if info.domain == "text":
                    rec["text"] = item
                else:
                    rec["image"] = to_data_url(item)
                out.append(rec)
            return out

        return {"samples": await run_in_threadpool(work)}

    @app.post("/api/predict")
    async def predict(body: PredictBody):
        info, x = await prepare(body)

        def work():
            if info.domain == "text":
                probs = predict_text(catalog.text_classifier(info.name), [x])
            else:
                probs = predict_image(catalog.model(info.name), x)
            return {"top": top_k(probs[0], info.classes)}

        return await run_in_threadpool(work)

    @app.post("/api/attack")
    async def attack(body: AttackBody, request: Request):
        info = catalog.info(body.model)
        spec = attack_spec(info, body.attack)
        eps = check_eps(spec, info, body.eps)
        steps = check_steps(spec, body.steps)
        target = check_target(info, body.targeted, body.target)
        info, x = await prepare(body)
        if info.domain == "text":

            def job(budget):
                return attack_text(catalog, info.name, x, spec.name, eps, target, body.seed, budget)

        else:
            model = catalog.model(info.name)

            def job(budget):
                return attack_image(
                    model, info.classes, x, spec.name, eps, steps, target, body.seed, budget
                )

        result = await pool.run(job, request.is_disconnected)
        out = public(result)
        out.update(model=info.name, attack=spec.name, eps=eps, steps=steps)
        return out

    @app.post("/api/curve")
    async def curve(body: CurveBody, request: Request):
        info = catalog.info(body.model)
        spec = attack_spec(info, body.attack)
        if len(body.eps_values) > config.max_curve_points:
            raise ApiError(
                422,
                "too_many_points",
                f"{len(body.eps_values)} eps values; the limit is {config.max_curve_points}",
                "eps_values",
            )
        values = [
            check_eps(spec, info, e, f"eps_values.{i}") for i, e in enumerate(body.eps_values)
        ]
        steps = check_steps(spec, body.steps)
        target = check_target(info, body.targeted, body.target)
        info, x = await prepare(body)
        model = None if info.domain == "text" else catalog.model(info.name)

        def job(budget):
            points = []
            for eps in values:
                if info.domain == "text":
                    r = attack_text(
                        catalog, info.name, x, spec.name, eps, target, body.seed, budget
                    )
                else:
                    r = attack_image(
                        model, info.classes, x, spec.name, eps, steps, target, body.seed, budget
                    )
                pred = int(r["_p_adv"].argmax())
                points.append(
                    {
                        "eps": eps,
                        "success": bool(r["success"]),
                        "pred": pred,
                        "pred_name": info.classes[pred],
                        "prob_true": round(float(r["_p_adv"][r["label"]]), 6),
                        "prob_pred": round(float(r["_p_adv"][pred]), 6),
                    }
                )
            return points

        points = await pool.run(job, request.is_disconnected)
        return {"points": points, "model": info.name, "attack": spec.name, "steps": steps}

    @app.post("/api/evaluate")
    async def evaluate(body: EvaluateBody, request: Request, stream: bool = Query(False)):
        info = catalog.info(body.model)
        spec = attack_spec(info, body.attack)
        eps = check_eps(spec, info, body.eps)
        steps = check_steps(spec, body.steps)
        if body.n > config.max_eval:
            raise ApiError(
                422, "invalid_field", f"n must be at most {config.max_eval}, got {body.n}", "n"
            )

        def load():
            catalog.model(info.name)
            return catalog.samples(info.name, body.n)

        rows = await run_in_threadpool(load)
        extra = {"model": info.name, "attack": spec.name, "eps": eps, "steps": steps}
        if not stream:

            def job(budget):
                return evaluate_batch(catalog, info, rows, spec.name, eps, steps, body.seed, budget)

            out = await pool.run(job, request.is_disconnected)
            out.update(extra)
            return out

        # streamed: one JSON line per chunk of samples ({"progress": ...}), then
        # {"result": ...} or {"error": ...}; "busy" is still a plain 429 (checked before)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def report(d):
            loop.call_soon_threadsafe(queue.put_nowait, d)

        def job_streamed(budget):
            return evaluate_batch(
                catalog, info, rows, spec.name, eps, steps, body.seed, budget, progress=report
            )

        fut, budget = pool.submit(job_streamed)

        async def lines():
            waiter = asyncio.ensure_future(pool.wait(fut, budget))
            try:
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait(
                        {getter, waiter}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter in done:
                        yield json.dumps({"progress": getter.result()}) + "\n"
                        continue
                    getter.cancel()
                    while not queue.empty():
                        yield json.dumps({"progress": queue.get_nowait()}) + "\n"
                    try:
                        out = waiter.result()
                        out.update(extra)
                        yield json.dumps({"result": out}) + "\n"
                    except ApiError as err:
                        yield json.dumps(err.body()) + "\n"
                    return
            finally:  # the client left (the response was cancelled): stop the job
                budget.cancelled.set()
                waiter.cancel()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get("/api/physical")
    async def physical(views: int = Query(6), seed: int = Query(0)):
        if not 1 <= views <= 12:
            raise ApiError(422, "invalid_field", f"views must be in [1, 12], got {views}", "views")
        if not 0 <= seed <= 10**6:
            raise ApiError(
                422, "invalid_field", f"seed must be in [0, 1000000], got {seed}", "seed"
            )
        info = catalog.models["gtsrb-cnn"]
        if not info.available:
            return {
                "available": False,
                "reason": info.reason,
                "source": "stop",
                "target": info.classes[1],
                "sticker": None,
                "views": [],
            }
        return await run_in_threadpool(sticker_panel.views, views, seed)

    return app


def preload(catalog: Catalog, panel: StickerPanel | None = None) -> dict[str, str]:
    """Load every available model (training and caching those not cached yet) and fit (or
    read) the stop-sign sticker."""
    out = {}
    for name, info in catalog.models.items():
        if not info.available:
            out[name] = f"unavailable: {info.reason}"
            continue
        t0 = time.perf_counter()
        catalog.model(name)
        out[name] = f"ready ({time.perf_counter() - t0:.1f} s)"
    if panel is not None and catalog.models["gtsrb-cnn"].available:
        t0 = time.perf_counter()
        panel.state()
        out["physical"] = f"sticker ready ({time.perf_counter() - t0:.1f} s)"
    return out
