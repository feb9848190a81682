/* advex playground — the page. Plain JS, no build step, nothing fetched from outside this server.
 *
 * Talks to the JSON API described in notes/api_contract.md (GET /api/models, /api/attacks,
 * /api/samples, /api/physical; POST /api/predict, /api/attack, /api/curve). Every element is
 * built with createElement/textContent (never innerHTML with server data), and nothing uses
 * inline scripts or style attributes, so the server's strict Content-Security-Policy holds.
 */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SEED = 0;
  const SLIDER_DEBOUNCE_MS = 250;
  const CURVE_POINTS = 8;

  const state = {
    models: [],
    model: null, // the selected entry of /api/models
    attacks: {}, // domain -> list of /api/attacks entries
    attack: null,
    kind: "samples", // samples | draw | upload | text
    input: null, // INPUT of the contract: {sample} | {image} | {text}
    inputLabel: null, // the true label of a test sample, else null
    attackCtl: null, // AbortController of the attack in flight
    curveCtl: null,
    predictCtl: null,
    evalCtl: null,
    attackSeq: 0,
    curveSeq: 0,
    curve: null, // last /api/curve points and the eps they were computed for
    drawn: false,
    runs: 0, // rendered attack results (tests wait on data-runs)
  };

  // ------------------------------------------------------------------ API + messages

  class ApiError extends Error {
    constructor(message, code, field, status) {
      super(message);
      this.code = code;
      this.field = field;
      this.status = status;
    }
  }

  async function api(path, options) {
    const opts = options || {};
    const init = { method: opts.method || "GET", headers: { Accept: "application/json" }, signal: opts.signal };
    if (opts.body !== undefined) {
      init.method = opts.method || "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError("Could not reach the advex server (is `advex serve` still running?).", "network", null, 0);
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      payload = null;
    }
    if (!response.ok) {
      const e = payload && payload.error;
      const message = e && e.message ? e.message : `The server answered ${response.status} ${response.statusText}.`;
      throw new ApiError(message, e && e.code, e && e.field, response.status);
    }
    return payload;
  }

  function isAbort(err) {
    return err && err.name === "AbortError";
  }

  function showError(err) {
    if (isAbort(err)) return;
    const message = err && err.message ? err.message : String(err);
    $("alert-text").textContent = message;
    $("alert").hidden = false;
    setStatus("");
  }

  function clearError() {
    $("alert").hidden = true;
    $("alert-text").textContent = "";
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // ------------------------------------------------------------------ small DOM helpers

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "text") node.textContent = v;
        else if (k === "className") node.className = v;
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function pct(p) {
    return `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;
  }

  function fmt(x, digits) {
    const s = Number(x).toFixed(digits === undefined ? 3 : digits);
    return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
  }

  function decimals(step) {
    const s = String(step);
    return s.includes(".") ? s.split(".")[1].length : 0;
  }

  /** Top-k confidence bars into an <ol>. `trueLabel` (optional) is marked. */
  function renderBars(list, top, trueLabel, k) {
    list.replaceChildren();
    (top || []).slice(0, k || 5).forEach((t, i) => {
      const fill = el("span", { className: "fill" });
      fill.style.width = `${Math.max(0, Math.min(1, t.prob)) * 100}%`; // CSSOM: allowed by the CSP
      const li = el("li", { className: i === 0 ? "top1" : null }, [
        el("span", { className: "name", text: t.name + (trueLabel === t.label ? " (true)" : "") }),
        el("span", { className: "track", "aria-hidden": "true" }, [fill]),
        el("span", { className: "prob", text: pct(t.prob) }),
      ]);
      li.setAttribute("aria-label", `${t.name}: ${pct(t.prob)}`);
      list.append(li);
    });
  }

  function topName(top) {
    return top && top.length ? top[0].name : "—";
  }

  function waitImages(images) {
    return Promise.all(
      images.map((img) => (img.decode ? img.decode().catch(() => undefined) : Promise.resolve())),
    );
  }

  // ------------------------------------------------------------------ models and attacks

  function activeModelName(defended) {
    const m = state.model;
    if (!m) return null;
    const useDefended = defended === undefined ? $("defend-toggle").checked : defended;
    return useDefended && m.defended ? m.defended : m.name;
  }

  async function loadModels() {
    const data = await api("/api/models");
    state.models = data.models || [];
    const select = $("model-select");
    select.replaceChildren();
    for (const m of state.models) {
      const label = m.available ? m.title || m.name : `${m.title || m.name} (unavailable)`;
      select.append(el("option", { value: m.name, disabled: !m.available, text: label }));
    }
    const first = state.models.find((m) => m.available);
    if (first) select.value = first.name;
    await selectModel(select.value);
  }

  async function attacksFor(domain) {
    if (!state.attacks[domain]) {
      const data = await api(`/api/attacks?domain=${encodeURIComponent(domain)}`);
      state.attacks[domain] = data.attacks || [];
    }
    return state.attacks[domain];
  }

  async function selectModel(name) {
    const m = state.models.find((x) => x.name === name) || null;
    state.model = m;
    delete $("panel-input").dataset.model; // set again once this model's attacks and samples are in
    $("samples-grid").replaceChildren();
    state.input = null;
    state.inputLabel = null;
    resetResult();
    state.curve = null;
    $("curve").replaceChildren();
    $("curve-summary").textContent = "";
    $("current-image").hidden = true;
    $("current-text").hidden = true;
    if (!m) return;
    $("model-note").textContent = m.available
      ? (m.description ? `${m.description} ` : "") +
        `${m.classes.length} classes` +
        (m.input ? `, input ${m.input.channels}×${m.input.height}×${m.input.width}` : "") + "."
      : m.reason || "Not available on this server.";

    const defend = $("defend-toggle");
    defend.disabled = !m.defended;
    if (!m.defended) defend.checked = false;
    $("defend-note").textContent = m.defended
      ? `Defended twin: ${m.defended}.`
      : "This model has no defended twin on this server.";

    const target = $("target-select");
    target.replaceChildren();
    m.classes.forEach((c, i) => target.append(el("option", { value: String(i), text: `${i}: ${c}` })));

    // which kinds of input make sense for this model
    const isText = m.domain === "text";
    const isDigits = !isText && m.input && m.input.channels === 1;
    $("kind-text").disabled = !isText;
    $("kind-draw").disabled = !isDigits;
    $("kind-upload").disabled = isText;
    if ((state.kind === "text" && !isText) || (state.kind !== "text" && state.kind !== "samples" && isText) ||
        (state.kind === "draw" && !isDigits)) {
      setKind("samples");
    } else {
      setKind(state.kind);
    }

    const attacks = await attacksFor(m.domain);
    const sel = $("attack-select");
    sel.replaceChildren();
    for (const a of attacks) {
      const off = a.available === false;
      sel.append(el("option", { value: a.name, disabled: off, text: (a.title || a.name) + (off ? " (unavailable)" : "") }));
    }
    const usable = attacks.filter((a) => a.available !== false);
    const preferred = usable.find((a) => a.name === "pgd") || usable[0] || null;
    if (preferred) sel.value = preferred.name;
    selectAttack(sel.value);
    if (m.available) await loadSamples();
    if (state.model === m) $("panel-input").dataset.model = m.name;
  }

  function selectAttack(name) {
    const list = state.model ? state.attacks[state.model.domain] || [] : [];
    const a = list.find((x) => x.name === name) || null;
    state.attack = a;
    state.curve = null;
    $("curve").replaceChildren();
    $("curve-summary").textContent = "";
    $("attack-note").textContent = a ? [a.description, a.reason].filter(Boolean).join(" ") : "";
    if (!a) return;
    const slider = $("eps-slider");
    slider.min = String(a.eps.min);
    slider.max = String(a.eps.max);
    slider.step = String(a.eps.step);
    // the model's usual budget (e.g. 0.03 for traffic signs) when it has one, else the attack's
    const modelEps = state.model && state.model.eps_default;
    const useModelEps = a.norm === "linf" && typeof modelEps === "number" && modelEps >= a.eps.min && modelEps <= a.eps.max;
    slider.value = String(useModelEps ? modelEps : a.eps.default);
    slider.dataset.default = slider.value;
    updateEpsLabel();
    $("steps-label").textContent =
      a.steps_unit === "queries" ? "Queries" : a.steps_unit === "unused" ? "Steps (not used by this attack)" : "Steps";
    const steps = $("steps-input");
    steps.disabled = a.steps_unit === "unused";
    steps.max = String(a.steps.max);
    steps.value = String(a.steps.default);
    const targeted = $("targeted-toggle");
    targeted.disabled = !a.targeted;
    if (!a.targeted) targeted.checked = false;
    $("target-select").disabled = !targeted.checked;
  }

  function epsValue() {
    return Number($("eps-slider").value);
  }

  function updateEpsLabel() {
    const a = state.attack;
    const unit = a && a.norm === "edits" ? " edits" : a ? ` (${a.norm === "l2" ? "L2" : "L∞"})` : "";
    $("eps-value").textContent = fmt(epsValue(), a ? Math.max(2, decimals(a.eps.step)) : 3) + unit;
  }

  // ------------------------------------------------------------------ inputs

  function setKind(kind) {
    state.kind = kind;
    const radio = $(`kind-${kind}`);
    if (radio) radio.checked = true;
    for (const k of ["samples", "draw", "upload", "text"]) $(`input-${k}`).hidden = k !== kind;
  }

  async function loadSamples() {
    const grid = $("samples-grid");
    grid.replaceChildren();
    const m = state.model;
    let data;
    try {
      data = await api(`/api/samples?model=${encodeURIComponent(m.name)}&n=12`);
    } catch (err) {
      showError(err);
      return;
    }
    if (state.model !== m) return; // the user switched model meanwhile
    (data.samples || []).forEach((s, index) => {
      const content = s.image
        ? [el("img", { src: s.image, alt: "" })]
        : [el("span", { className: "sample-text", text: s.text.length > 70 ? `${s.text.slice(0, 70)}…` : s.text })];
      const button = el("button", {
        type: "button",
        className: "sample",
        "data-testid": `sample-${index}`, // position in the grid; the id is the dataset's
        "data-sample-id": s.id,
        "aria-pressed": "false",
        "aria-label": `Sample ${s.id}, true label ${s.label_name}`,
      }, [...content, el("span", { className: "label", text: s.label_name })]);
      button.addEventListener("click", () => chooseSample(s, button));
      grid.append(button);
    });
  }

  function chooseSample(s, button) {
    for (const b of $("samples-grid").querySelectorAll("button")) b.setAttribute("aria-pressed", "false");
    button.setAttribute("aria-pressed", "true");
    setInput({ sample: s.id }, s.label, s.image || null, s.text || null).catch(() => undefined); // shown in the alert
  }

  function setInput(input, label, image, text) {
    state.input = input;
    state.inputLabel = label === undefined ? null : label;
    state.curve = null;
    $("curve").replaceChildren();
    $("curve-summary").textContent = "";
    resetResult();
    const img = $("current-image");
    const txt = $("current-text");
    img.hidden = !image;
    if (image) img.src = image;
    txt.hidden = !text;
    txt.textContent = text || "";
    return predict();
  }

  async function predict() {
    if (!state.model || !state.input) return;
    if (state.predictCtl) state.predictCtl.abort();
    const ctl = new AbortController();
    state.predictCtl = ctl;
    clearError();
    $("current-pred").textContent = "…";
    try {
      const data = await api("/api/predict", { body: { model: activeModelName(), input: state.input }, signal: ctl.signal });
      $("current-pred").textContent = topName(data.top);
      renderBars($("current-bars"), data.top, state.inputLabel);
      $("current").dataset.state = "done";
      return data;
    } catch (err) {
      if (isAbort(err)) return;
      $("current-pred").textContent = "—";
      $("current-bars").replaceChildren();
      showError(err);
      throw err;
    } finally {
      if (state.predictCtl === ctl) state.predictCtl = null;
    }
  }

  // drawing: white digit on black, like MNIST
  function setupCanvas() {
    const canvas = $("draw-canvas");
    const ctx = canvas.getContext("2d");
    const clear = () => {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      state.drawn = false;
    };
    clear();
    let drawing = false;
    let last = null;
    const pos = (ev) => {
      const r = canvas.getBoundingClientRect();
      return [((ev.clientX - r.left) * canvas.width) / r.width, ((ev.clientY - r.top) * canvas.height) / r.height];
    };
    canvas.addEventListener("pointerdown", (ev) => {
      drawing = true;
      last = pos(ev);
      canvas.setPointerCapture(ev.pointerId);
      ctx.fillStyle = "#fff";
      ctx.beginPath();
      ctx.arc(last[0], last[1], 9, 0, 2 * Math.PI);
      ctx.fill();
      state.drawn = true;
      ev.preventDefault();
    });
    canvas.addEventListener("pointermove", (ev) => {
      if (!drawing) return;
      const p = pos(ev);
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 18;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.beginPath();
      ctx.moveTo(last[0], last[1]);
      ctx.lineTo(p[0], p[1]);
      ctx.stroke();
      last = p;
      ev.preventDefault();
    });
    const end = () => {
      if (!drawing) return;
      drawing = false;
      useDrawing().catch(() => undefined);
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    $("draw-clear").addEventListener("click", clear);
    $("draw-use").addEventListener("click", () => useDrawing().catch(() => undefined));
  }

  function useDrawing() {
    if (!state.drawn) {
      showError("The canvas is empty: draw a digit first.");
      return Promise.resolve();
    }
    const url = $("draw-canvas").toDataURL("image/png");
    return setInput({ image: url }, null, url, null);
  }

  function setupUpload() {
    $("upload-input").addEventListener("change", (ev) => {
      const file = ev.target.files && ev.target.files[0];
      if (!file) return;
      const reader = new FileReader();
      reader.onerror = () => showError(`Could not read the file ${file.name}.`);
      reader.onload = async () => {
        // PNG and JPEG go as they are; another image type the browser can decode (GIF, WebP,
        // BMP, ...) is redrawn as a PNG; anything else goes as it is and the server says why
        // it is refused (the page shows its answer)
        let url = String(reader.result);
        if (/^image\//.test(file.type) && !/^image\/(png|jpeg)$/.test(file.type)) url = await asPng(url);
        setInput({ image: url }, null, null, null)
          .then(() => {
            $("current-image").src = url;
            $("current-image").hidden = false;
          })
          .catch(() => {
            state.input = null;
          });
      };
      reader.readAsDataURL(file);
    });
  }

  /** A data URL redrawn as PNG through a canvas; the original when the browser cannot decode it. */
  function asPng(url) {
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => {
        try {
          const c = document.createElement("canvas");
          c.width = img.naturalWidth;
          c.height = img.naturalHeight;
          c.getContext("2d").drawImage(img, 0, 0);
          resolve(c.toDataURL("image/png"));
        } catch (err) {
          resolve(url);
        }
      };
      img.onerror = () => resolve(url);
      img.src = url;
    });
  }

  // ------------------------------------------------------------------ attack

  function attackBody(model, eps) {
    const targeted = $("targeted-toggle").checked;
    return {
      model,
      input: state.input,
      attack: state.attack.name,
      eps: eps === undefined ? epsValue() : eps,
      steps: Number($("steps-input").value),
      targeted,
      target: targeted ? Number($("target-select").value) : null,
      seed: SEED,
    };
  }

  function resetResult() {
    $("result-empty").hidden = false;
    $("image-result").hidden = true;
    $("text-result").hidden = true;
    $("defend-result").hidden = true;
    $("result-stats").textContent = "";
    $("current-pred").textContent = "—";
    $("current-bars").replaceChildren();
    delete $("current").dataset.state;
    delete $("result").dataset.state;
  }

  function ready() {
    if (!state.model || !state.attack) return false;
    if (!state.input) {
      showError("Choose an input first: a test sample, a drawing, an image or a message.");
      return false;
    }
    return true;
  }

  /** Attack the current input; resolves true once a result is rendered (false if superseded/failed). */
  async function runAttack() {
    if (!ready()) return false;
    if (state.attackCtl) state.attackCtl.abort(); // a newer request supersedes the one in flight
    const ctl = new AbortController();
    state.attackCtl = ctl;
    const seq = ++state.attackSeq;
    const result = $("result");
    result.setAttribute("aria-busy", "true");
    result.dataset.state = "running";
    clearError();
    setStatus(`Attacking with ${state.attack.title || state.attack.name} at ε = ${fmt(epsValue())}…`);
    const t0 = performance.now();
    const m = state.model;
    const defended = $("defend-toggle").checked && m.defended;
    const eps = epsValue();
    try {
      const requests = [api("/api/attack", { body: attackBody(m.name, eps), signal: ctl.signal })];
      if (defended) requests.push(api("/api/attack", { body: attackBody(m.defended, eps), signal: ctl.signal }));
      const answers = await Promise.all(requests);
      if (seq !== state.attackSeq) return false;
      const main = defended ? answers[1] : answers[0];
      const images = renderResult(main);
      if (defended) renderDefend(answers[0], answers[1]);
      else $("defend-result").hidden = true;
      await waitImages(images);
      if (seq !== state.attackSeq) return false;
      const roundTrip = performance.now() - t0;
      state.runs += 1;
      const stats = [
        main.success ? "The attack succeeded: the prediction changed." : "The attack did not change the prediction.",
        main.perturbation ? `‖δ‖∞ = ${fmt(main.perturbation.linf)}, ‖δ‖₂ = ${fmt(main.perturbation.l2)}` : null,
        main.passes !== undefined ? `${main.passes} model passes` : null,
        main.queries !== undefined ? `${main.queries} queries` : null,
        `server ${fmt(main.elapsed_ms, 0)} ms`,
        `round trip ${fmt(roundTrip, 0)} ms`,
      ].filter(Boolean);
      $("result-stats").textContent = stats.join(" · ");
      result.dataset.state = "done";
      result.dataset.runs = String(state.runs);
      result.dataset.roundtripMs = roundTrip.toFixed(1);
      result.dataset.success = String(Boolean(main.success));
      result.dataset.eps = String(eps);
      result.dataset.serverMs = String(main.elapsed_ms);
      result.dataset.passes = String(main.passes !== undefined ? main.passes : main.queries);
      result.dataset.model = defended ? m.defended : m.name;
      setStatus(`Done: ${topName(main.original.top)} → ${topName(main.adversarial.top)}.`);
      // the curve (several attacks) starts once the first result for this input is shown, so
      // it never delays that result; the slider then only moves its marker
      if (!state.curve && !state.curveCtl) runCurve();
      else drawCurve();
      return true;
    } catch (err) {
      if (!isAbort(err) && seq === state.attackSeq) {
        result.dataset.state = "error";
        showError(err);
      }
      return false;
    } finally {
      if (seq === state.attackSeq) {
        result.removeAttribute("aria-busy");
        state.attackCtl = null;
      }
    }
  }

  function renderResult(r) {
    $("result-empty").hidden = true;
    if (r.original.image !== undefined) {
      $("text-result").hidden = true;
      $("image-result").hidden = false;
      $("orig-image").src = r.original.image;
      $("pert-image").src = r.perturbation.image;
      $("adv-image").src = r.adversarial.image;
      $("orig-pred").textContent = topName(r.original.top);
      $("adv-pred").textContent = topName(r.adversarial.top);
      $("pert-norms").textContent = `L∞ ${fmt(r.perturbation.linf)}, L2 ${fmt(r.perturbation.l2)}`;
      renderBars($("orig-bars"), r.original.top, state.inputLabel);
      renderBars($("adv-bars"), r.adversarial.top, state.inputLabel);
      return [$("orig-image"), $("pert-image"), $("adv-image")];
    }
    $("image-result").hidden = true;
    $("text-result").hidden = false;
    $("text-orig-pred").textContent = topName(r.original.top);
    $("text-adv-pred").textContent = topName(r.adversarial.top);
    $("text-orig").textContent = r.original.text;
    renderHighlighted($("text-adv"), r.adversarial.text, r.changes || []);
    renderBars($("text-orig-bars"), r.original.top, state.inputLabel, 3);
    renderBars($("text-adv-bars"), r.adversarial.top, state.inputLabel, 3);
    const changes = r.changes || [];
    $("text-changes").textContent = changes.length
      ? `${changes.length} change${changes.length > 1 ? "s" : ""}: ` +
        changes.map((c) => `“${c.before}” → “${c.after}” (${c.kind})`).join(", ")
      : "No characters or words were changed.";
    return [];
  }

  /** The adversarial message with each change in a <mark> (its title says what was there). */
  function renderHighlighted(node, text, changes) {
    node.replaceChildren();
    const sorted = [...changes].sort((a, b) => a.start - b.start);
    let at = 0;
    for (const c of sorted) {
      const start = Math.max(at, Math.min(text.length, c.start));
      const end = Math.max(start, Math.min(text.length, c.end));
      if (start > at) node.append(document.createTextNode(text.slice(at, start)));
      const mark = el("mark", {
        className: `change change-${c.kind}`,
        "data-testid": "change",
        title: `was “${c.before}”`,
        text: text.slice(start, end) || "∅",
      });
      node.append(mark);
      at = end;
    }
    if (at < text.length) node.append(document.createTextNode(text.slice(at)));
  }

  function renderDefend(base, defended) {
    const rows = $("defend-rows");
    rows.replaceChildren();
    // each cell: the prediction (and, for images, the picture it was made on)
    const cell = (part, what) => {
      const text = `${topName(part.top)} (${pct(part.top[0].prob)})`;
      if (!part.image) return el("td", { text });
      return el("td", {}, [el("img", { className: "thumb", src: part.image, alt: what }), el("span", { text })]);
    };
    const row = (name, r) =>
      el("tr", { "data-testid": `defend-row-${name === state.model.name ? "base" : "defended"}` }, [
        el("th", { scope: "row", text: name }),
        cell(r.original, `Original input for ${name}`),
        cell(r.adversarial, `Adversarial input against ${name}`),
        el("td", { className: r.success ? "bad" : "good", text: r.success ? "yes" : "no" }),
      ]);
    rows.append(row(state.model.name, base), row(state.model.defended, defended));
    $("defend-result").hidden = false;
  }

  // ------------------------------------------------------------------ confidence vs eps

  function curveEps() {
    // CURVE_POINTS budgets on the slider's grid, from the attack's smallest (the clean input
    // when that is 0) to 3x the larger of the slider's and the model's usual budget (MNIST
    // 0.2 -> up to 0.5 L-inf; traffic signs 0.03 -> 0.09), capped at the attack's largest
    const a = state.attack;
    const lo = a.eps.min;
    const usual = Math.max(epsValue(), Number($("eps-slider").dataset.default || a.eps.default));
    const hi = Math.min(a.eps.max, Math.max(lo + 4 * a.eps.step, 3 * usual));
    const step = a.eps.step > 0 ? a.eps.step : (hi - lo) / 100;
    const values = [];
    for (let i = 0; i < CURVE_POINTS; i++) {
      const v = lo + Math.round(((hi - lo) * i) / (CURVE_POINTS - 1) / step) * step;
      values.push(Number(Math.min(hi, v).toFixed(Math.max(3, decimals(step)))));
    }
    return [...new Set(values)];
  }

  async function runCurve() {
    if (!ready()) return;
    if (state.curveCtl) state.curveCtl.abort();
    const ctl = new AbortController();
    state.curveCtl = ctl;
    const seq = ++state.curveSeq;
    const box = $("curve");
    box.setAttribute("aria-busy", "true");
    box.dataset.state = "running";
    clearError();
    setStatus("Computing the curve…");
    const body = attackBody(activeModelName());
    delete body.eps;
    body.eps_values = curveEps();
    try {
      const data = await api("/api/curve", { body, signal: ctl.signal });
      if (seq !== state.curveSeq) return;
      state.curve = data.points || [];
      drawCurve();
      box.dataset.state = "done";
      setStatus("Curve ready.");
    } catch (err) {
      if (isAbort(err)) return;
      if (seq === state.curveSeq) {
        box.dataset.state = "error";
        showError(err);
      }
    } finally {
      if (seq === state.curveSeq) {
        box.removeAttribute("aria-busy");
        state.curveCtl = null;
      }
    }
  }

  function drawCurve() {
    const box = $("curve");
    const points = state.curve;
    if (!points || !points.length || !state.attack) return;
    const W = 560, H = 260, L = 48, R = 16, T = 16, B = 40;
    const lo = points[0].eps;
    const hi = points[points.length - 1].eps;
    const x = (e) => L + ((Math.min(hi, Math.max(lo, e)) - lo) / (hi - lo || 1)) * (W - L - R);
    const y = (p) => T + (1 - p) * (H - T - B);
    const first = points.find((p) => p.success);
    const label = first
      ? `Confidence against ε: the prediction flips to ${first.pred_name} at ε = ${fmt(first.eps)}.`
      : "Confidence against ε: the prediction does not flip at any ε tried.";
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, "data-testid": "curve-svg", class: "curve-svg" });
    // axes and grid
    for (const p of [0, 0.25, 0.5, 0.75, 1]) {
      root.append(svg("line", { x1: L, x2: W - R, y1: y(p), y2: y(p), class: "grid" }));
      const t = svg("text", { x: L - 6, y: y(p) + 4, "text-anchor": "end", class: "tick" });
      t.textContent = `${p * 100}%`;
      root.append(t);
    }
    for (const pnt of points) {
      const t = svg("text", { x: x(pnt.eps), y: H - B + 16, "text-anchor": "middle", class: "tick" });
      t.textContent = fmt(pnt.eps, hi < 0.2 ? 3 : 2);
      root.append(t);
    }
    const xl = svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis-label" });
    xl.textContent = "ε";
    root.append(xl);
    const path = (key) => points.map((p, i) => `${i ? "L" : "M"}${x(p.eps).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
    root.append(svg("path", { d: path("prob_true"), class: "line-true" }));
    root.append(svg("path", { d: path("prob_pred"), class: "line-pred" }));
    for (const p of points) {
      const c = svg("circle", { cx: x(p.eps), cy: y(p.prob_pred), r: 4, class: p.success ? "pt fooled" : "pt" });
      const title = svg("title", {});
      title.textContent = `ε ${fmt(p.eps)}: predicted ${p.pred_name} (${pct(p.prob_pred)}), true class ${pct(p.prob_true)}`;
      c.append(title);
      root.append(c);
    }
    const e = epsValue(); // beyond the plotted range the marker waits at the edge
    const marker = svg("line", { x1: x(e), x2: x(e), y1: T, y2: H - B, class: "marker", "data-testid": "curve-marker", "data-eps": e });
    root.append(marker);
    const legend = el("p", { className: "legend" }, [
      el("span", { className: "key key-true", text: "confidence in the original class" }),
      el("span", { className: "key key-pred", text: "confidence in the predicted class (red dot: fooled)" }),
    ]);
    box.replaceChildren(root, legend);
    box.dataset.eps = String(e);
    $("curve-summary").textContent = label.replace("Confidence against ε: t", "T");
  }

  // ------------------------------------------------------------------ evaluate a batch (streamed)

  async function runEvaluate() {
    if (!state.model || !state.attack) return;
    if (state.evalCtl) state.evalCtl.abort();
    const ctl = new AbortController();
    state.evalCtl = ctl;
    const box = $("evaluate");
    const bar = $("eval-progress");
    const text = $("eval-text");
    const list = $("eval-points");
    const n = Math.max(1, Math.min(100, Math.round(Number($("eval-n").value) || 30)));
    const model = activeModelName();
    box.dataset.state = "running";
    box.setAttribute("aria-busy", "true");
    $("eval-cancel").disabled = false;
    list.replaceChildren();
    bar.max = n;
    bar.value = 0;
    bar.hidden = false;
    text.textContent = `Attacking ${n} test samples of ${model}…`;
    clearError();
    const body = attackBody(model);
    delete body.input;
    delete body.targeted;
    delete body.target;
    body.n = n;
    try {
      const response = await fetch("/api/evaluate?stream=true", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/x-ndjson" },
        body: JSON.stringify(body),
        signal: ctl.signal,
      });
      if (!response.ok) {
        let e = null;
        try {
          e = (await response.json()).error;
        } catch (err) {
          e = null;
        }
        throw new ApiError(e && e.message ? e.message : `The server answered ${response.status}.`, e && e.code, e && e.field, response.status);
      }
      // newline-delimited JSON: {"progress": {...}} lines, then {"result": ...} or {"error": ...}
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let result = null;
      for (;;) {
        const { value, done } = await reader.read();
        if (value) buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, cut).trim();
          buffer = buffer.slice(cut + 1);
          if (!line) continue;
          const msg = JSON.parse(line);
          if (msg.error) throw new ApiError(msg.error.message, msg.error.code, msg.error.field, 200);
          if (msg.progress) {
            const p = msg.progress;
            bar.value = p.done;
            bar.textContent = `${p.done} of ${p.n}`;
            text.textContent = `${p.done} of ${p.n} attacked: robust so far ${p.robust} of ${p.done} (clean ${p.clean}).`;
          }
          if (msg.result) result = msg.result;
        }
        if (done) break;
      }
      if (!result) throw new ApiError("The evaluation ended without a result.", "no_result", null, 200);
      bar.value = result.n;
      const cost = result.passes !== undefined ? `${result.passes} model passes` : `${result.queries} queries`;
      text.textContent =
        `${model}, ${state.attack.title || state.attack.name} at ε = ${fmt(body.eps)}: ` +
        `clean accuracy ${pct(result.clean_accuracy)}, robust accuracy ${pct(result.robust_accuracy)} ` +
        `on ${result.n} test samples (the attack fooled ${pct(result.success_rate)} of those read correctly; ` +
        `${cost}, ${fmt(result.elapsed_ms / 1000, 1)} s).`;
      const names = state.model.classes;
      for (const pt of result.points) {
        const kind = pt.clean_pred !== pt.label ? "wrong" : pt.robust ? "robust" : "fooled";
        const say = kind === "wrong" ? `misread as ${names[pt.clean_pred]}` : kind === "robust" ? "robust" : `fooled: ${names[pt.adv_pred]}`;
        list.append(el("li", { className: kind, title: `sample ${pt.id}, true ${names[pt.label]}: ${say}`, text: `${names[pt.label]}→${names[pt.adv_pred]}` }));
      }
      box.dataset.state = "done";
      box.dataset.robust = String(result.robust_accuracy);
    } catch (err) {
      if (isAbort(err)) {
        text.textContent = "Cancelled.";
        box.dataset.state = "cancelled";
      } else {
        box.dataset.state = "error";
        text.textContent = "";
        showError(err);
      }
    } finally {
      if (state.evalCtl === ctl) {
        state.evalCtl = null;
        box.removeAttribute("aria-busy");
        $("eval-cancel").disabled = true;
      }
    }
  }

  // ------------------------------------------------------------------ physical (stop sign)

  async function runPhysical() {
    const box = $("physical");
    box.setAttribute("aria-busy", "true");
    box.dataset.state = "running";
    clearError();
    setStatus("Rendering the stop sign under several viewing conditions…");
    const views = Math.max(1, Math.min(12, Number($("views-input").value) || 6));
    try {
      const data = await api(`/api/physical?views=${views}&seed=${SEED}`);
      box.replaceChildren();
      if (!data.available) {
        box.append(el("p", { className: "note", "data-testid": "physical-unavailable", text: data.reason || "The traffic-sign model is not available on this server." }));
        box.dataset.state = "unavailable";
        setStatus("");
        return;
      }
      box.append(
        el("div", { className: "sticker" }, [
          el("figure", {}, [el("img", { src: data.sticker.image, alt: "The optimised sticker" }), el("figcaption", { text: "Sticker" })]),
          el("figure", {}, [el("img", { src: data.sticker.mask, alt: "Where the sticker may go (mask)" }), el("figcaption", { text: "Mask" })]),
          el("p", { className: "note", text: `Goal: make a ${data.source} sign read as “${data.target}”.` }),
        ]),
      );
      const grid = el("div", { className: "views", "data-testid": "physical-views" });
      let fooled = 0;
      data.views.forEach((v, i) => {
        const c = v.condition;
        const hit = v.stickered.top[0].name === data.target;
        if (hit) fooled += 1;
        const top3 = (t) => {
          const ol = el("ol", { className: "bars small" });
          renderBars(ol, t, null, 3);
          return ol;
        };
        grid.append(
          el("article", { className: `view${hit ? " hit" : ""}`, "data-testid": `physical-view-${i}` }, [
            el("h3", { text: `Angle ${fmt(c.angle, 1)}°, scale ${fmt(c.scale, 2)}, brightness ${fmt(c.brightness, 2)}` }),
            el("div", { className: "pair" }, [
              el("figure", {}, [
                el("img", { src: v.clean.image, alt: `Clean sign, view ${i + 1}` }),
                el("figcaption", {}, [el("span", { text: "Clean: " }), el("strong", { className: "view-clean-pred", text: topName(v.clean.top) })]),
                top3(v.clean.top),
              ]),
              el("figure", {}, [
                el("img", { src: v.stickered.image, alt: `Sign with the sticker, view ${i + 1}` }),
                el("figcaption", {}, [el("span", { text: "Sticker: " }), el("strong", { className: "view-sticker-pred", text: topName(v.stickered.top) })]),
                top3(v.stickered.top),
              ]),
            ]),
          ]),
        );
      });
      box.append(grid);
      box.append(el("p", { className: "note", "data-testid": "physical-summary", text: `The sticker makes the model read “${data.target}” in ${fooled} of ${data.views.length} views.` }));
      box.dataset.state = "done";
      setStatus("Stop sign views ready.");
    } catch (err) {
      box.dataset.state = "error";
      showError(err);
    } finally {
      box.removeAttribute("aria-busy");
    }
  }

  // ------------------------------------------------------------------ wiring

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  function wire() {
    $("alert-dismiss").addEventListener("click", clearError);
    $("model-select").addEventListener("change", (ev) => selectModel(ev.target.value).catch(showError));
    $("defend-toggle").addEventListener("change", () => {
      resetResultKeepInput();
      if (state.input) predict().catch(() => undefined);
    });
    for (const radio of document.querySelectorAll('input[name="input-kind"]')) {
      radio.addEventListener("change", (ev) => setKind(ev.target.value));
    }
    $("text-use").addEventListener("click", () => {
      const text = $("text-input").value;
      if (!text.trim()) {
        showError("The message is empty: type some text first.");
        return;
      }
      setInput({ text }, null, null, text).catch(() => undefined);
    });
    $("attack-select").addEventListener("change", (ev) => selectAttack(ev.target.value));
    $("targeted-toggle").addEventListener("change", (ev) => {
      $("target-select").disabled = !ev.target.checked;
    });
    const reattack = debounce(() => {
      if (state.input) runAttack();
    }, SLIDER_DEBOUNCE_MS);
    $("eps-slider").addEventListener("input", () => {
      updateEpsLabel();
      drawCurve(); // the marker follows the slider at once
      reattack();
    });
    $("attack-button").addEventListener("click", () => runAttack());
    $("curve-button").addEventListener("click", runCurve);
    $("physical-button").addEventListener("click", runPhysical);
    $("eval-button").addEventListener("click", runEvaluate);
    $("eval-cancel").addEventListener("click", () => state.evalCtl && state.evalCtl.abort());
    setupCanvas();
    setupUpload();
  }

  function resetResultKeepInput() {
    const keep = { input: state.input, label: state.inputLabel };
    resetResult();
    state.input = keep.input;
    state.inputLabel = keep.label;
    state.curve = null;
    $("curve").replaceChildren();
    $("curve-summary").textContent = "";
  }

  async function main() {
    wire();
    try {
      await loadModels();
      document.body.dataset.ready = "1";
      setStatus("Ready. Choose an input.");
    } catch (err) {
      document.body.dataset.ready = "error";
      showError(err);
    }
  }

  document.addEventListener("DOMContentLoaded", main);
})();
