// groundup explorer: the page's behaviour over the JSON API (groundup/explorer/app.py).
// Plain JavaScript, no library and no build step: canvases for heatmaps and curves, SVG for lines.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = {
  metricsBusy: false, metricsAgain: false, metricsReset: false,   // refreshMetrics: one fetch at a time
  runs: [], run: null, info: null, compareInfo: null, analysis: null, position: null, lineHead: { layer: 0, head: 0 },
  offHeads: new Set(), offMlps: new Set(), metrics: {}, pollTimer: null, generation: null, requestId: 0,
};

// ------------------------------------------------------------------ helpers
function visible(text) {             // whitespace you can see on a chip
  return text.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/ /g, "␣") || "∅";
}
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}
function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en");
  return Math.abs(x) >= 1000 ? x.toFixed(0) : x.toPrecision(digits);
}
function setStatus(text) { $("#status").textContent = text || ""; }
function errorText(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  return `HTTP ${status}`;
}
async function api(path, body) {
  const options = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new Error(errorText(data, response.status));
  return data;
}
function unpack(packed) {            // {shape, dtype: "float32", data: base64} -> nested arrays [L][H][T][T]
  const bytes = Uint8Array.from(atob(packed.data), (c) => c.charCodeAt(0));
  const flat = new Float32Array(bytes.buffer);
  const build = (offset, dims) => {
    if (dims.length === 1) return flat.subarray(offset, offset + dims[0]);
    const stride = dims.slice(1).reduce((a, b) => a * b, 1);
    return Array.from({ length: dims[0] }, (_, i) => build(offset + i * stride, dims.slice(1)));
  };
  return build(0, packed.shape);
}
function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// ------------------------------------------------------------------ runs
async function loadRuns() {
  const data = await api("/api/runs");
  state.runs = data.runs;
  const select = $("#run"), compare = $("#compare");
  const previous = select.value;
  select.replaceChildren(...data.runs.map((r) => el("option", { value: r.id, text: runLabel(r) })));
  compare.replaceChildren(el("option", { value: "", text: "(none)" }), ...data.runs.map((r) => el("option", { value: r.id, text: r.id })));
  if (!data.runs.length) { setStatus("no runs served: start with `groundup explore RUN_DIR`"); return; }
  const first = data.runs.find((r) => r.has_model) || data.runs[0];
  select.value = data.runs.some((r) => r.id === previous) ? previous : first.id;
  await selectRun(select.value);
}

function runLabel(r) { return r.id + (r.has_model ? "" : " (no checkpoint yet)"); }

async function refreshRunList() {     // runs started (or checkpointed) since the page loaded join the lists; the choice stays
  if (document.hidden || !state.runs) return;
  const data = await api("/api/runs").catch(() => null);
  if (!data) return;
  const known = new Map(state.runs.map((r) => [r.id, r]));
  for (const r of data.runs) {
    const option = [...$("#run").options].find((o) => o.value === r.id);
    if (!known.has(r.id)) {
      $("#run").append(el("option", { value: r.id, text: runLabel(r) }));
      $("#compare").append(el("option", { value: r.id, text: r.id }));
    } else if (option && r.id !== state.run) {
      option.textContent = runLabel(r);   // the followed run's label is refreshInfo's
    }
  }
  state.runs = data.runs.map((r) => (r.id === state.run && known.has(r.id) ? known.get(r.id) : r));
  if (!state.run && data.runs.length) { $("#run").value = data.runs[0].id; await selectRun(data.runs[0].id); }
}

async function selectRun(runId) {
  state.run = runId;
  state.analysis = null; state.position = null; state.offHeads.clear(); state.offMlps.clear();
  state.lineHead = { layer: 0, head: 0 };
  if ($("#compare").value === runId) state.compareInfo = null;
  setStatus("");
  state.info = await api(`/api/run?run=${encodeURIComponent(runId)}`).catch((err) => { setStatus(err.message); return null; });
  renderConfig();
  refreshMetrics(true);
  await showModel(runId);
}

async function showModel(runId) {    // the Inside tab and the KV cache box for the run's model, or nothing without one
  const cache = $("#g-cache");
  cache.disabled = !!state.info && state.info.kv_cache === false;
  if (cache.disabled) cache.checked = false;
  if (!state.info || !state.info.has_model || state.info.model_error) {
    clearInside();
    $("#heads").replaceChildren();
    if (state.info && state.info.model_error) setStatus(state.info.model_error);
    return;
  }
  api(`/api/heads?run=${encodeURIComponent(runId)}`).then(renderHeads).catch((err) => setStatus(err.message));
  if (!$("#text").value) await sampleDefaultText();
  await analyze();
}

async function refreshInfo() {       // the followed run's config and summary, and its model once its first checkpoint is written
  const runId = state.run, had = !!(state.info && state.info.has_model && !state.info.model_error);
  const before = had ? state.info.checkpoint : null;
  const info = await api(`/api/run?run=${encodeURIComponent(runId)}`).catch(() => null);
  if (!info || runId !== state.run) return;
  state.info = info;
  renderConfig();
  if (had && info.has_model && !info.model_error && info.checkpoint !== before) {
    await showModel(runId);           // a newer checkpoint: the Inside tab's numbers come from it, not the old one
    return;
  }
  if (had || !info.has_model || info.model_error) return;
  const option = [...$("#run").options].find((o) => o.value === runId);
  if (option) option.textContent = runId;
  const listed = state.runs.find((r) => r.id === runId);
  if (listed) listed.has_model = true;
  await showModel(runId);
}

async function sampleDefaultText() {   // a short greedy-ish sample: text the model finds familiar
  const n = Math.max(1, Math.min(48, state.info.config.block_size - 1));
  const url = `/api/generate?run=${encodeURIComponent(state.run)}&max_new_tokens=${n}&temperature=0.8&seed=0` +
    `&use_cache=${state.info.kv_cache ? "true" : "false"}`;
  let text = "";
  await streamEvents(url, (event, data) => { if (event === "done") text = data.text; }).catch(() => {});
  $("#text").value = text.slice(0, 200);
}

// ------------------------------------------------------------------ inside: analyze
function clearInside() {             // no text, a refused one or no model: show nothing rather than another text's results
  state.analysis = null;
  state.positionSeq = (state.positionSeq || 0) + 1;   // answers still on their way are stale
  for (const id of ["#chips", "#bars", "#dla", "#attn", "#lens", "#lines"]) $(id).replaceChildren();
  for (const id of ["#dla-label", "#lines-label", "#ablation-summary"]) $(id).textContent = "";
  $("#pos-label").textContent = "…";
}

async function analyze() {
  const text = $("#text").value;
  if (!state.run || !state.info || !state.info.has_model) return;
  const request = ++state.requestId;
  if (!text) { clearInside(); setStatus(""); return; }
  try {
    const data = await api("/api/analyze", { run: state.run, text, k: 10 });
    if (request !== state.requestId) return;          // a newer keystroke won
    setStatus("");
    data.attention = unpack(data.attention);
    data.text = text;                                 // what ablation and attribution ask about, whatever is typed next
    state.analysis = data;
    const T = data.tokens.length;
    if (state.position === null || state.position >= T) state.position = T - 1;
    renderChips(); renderAttention(); renderPosition();
    api("/api/lens", { run: state.run, text, k: 3 }).then((lens) => { if (request === state.requestId) renderLens(lens); })
      .catch((err) => setStatus(err.message));
  } catch (err) {
    if (request === state.requestId) { clearInside(); setStatus(err.message); }
  }
}

function renderChips() {
  const { tokens, losses } = state.analysis;
  const worst = Math.log(Math.max(2, state.info.config.vocab_size));
  $("#chips").replaceChildren(...tokens.map((token, t) => {
    const loss = t > 0 ? losses[t - 1] : null;
    const chip = el("span", { class: "chip" + (t === state.position ? " selected" : ""), "data-pos": t,
      title: `position ${t}, id ${token.id}` + (loss === null ? "" : `, loss ${loss.toFixed(3)}`),
      onclick: () => { state.position = t; renderChips(); renderPosition(); } }, visible(token.text));
    if (loss !== null) chip.style.background = `rgba(192, 57, 43, ${Math.min(0.6, 0.6 * loss / worst)})`;
    return chip;
  }));
}

function ablationParts() {
  const heads = [...state.offHeads].map((key) => { const [layer, head] = key.split(",").map(Number); return { layer, head }; });
  return { heads, mlps: [...state.offMlps] };
}

async function renderPosition() {
  const a = state.analysis, t = state.position;
  if (!a) return;
  $("#pos-label").textContent = `position ${t} (“${visible(a.tokens[t].text)}”)`;
  const { heads, mlps } = ablationParts();
  const seq = (state.positionSeq = (state.positionSeq || 0) + 1);
  if (heads.length || mlps.length) {
    try {
      const ab = await api("/api/ablate", { run: state.run, text: a.text, position: t, heads, mlps,
        kind: $("#ablate-kind").value, k: 10 });
      if (seq !== state.positionSeq) return;   // a newer click's request superseded this one: its answer is stale
      renderBars(ab.tokens, ab.before, ab.after);
      const names = heads.map((h) => `L${h.layer}H${h.head}`).concat(mlps.map((m) => `MLP ${m}`));
      $("#ablation-summary").textContent = `${ab.kind}-ablated ${names.join(", ")}: loss ${fmt(ab.loss_before, 4)} → ` +
        `${fmt(ab.loss_after, 4)}, KL(intact ‖ ablated) here ${fmt(ab.kl, 3)} nats. Blue: intact, red: ablated.`;
    } catch (err) { setStatus(err.message); }
  } else {
    renderBars(a.top.tokens[t], a.top.probs[t], null);
    $("#ablation-summary").textContent = a.loss === null ? "" : `loss over the text ${fmt(a.loss, 4)} nats per token`;
  }
  renderLines();
  renderAttribution(seq);
}

function renderBars(tokens, probs, after) {
  const top = Math.max(...probs, ...(after || [0]), 1e-9);
  $("#bars").replaceChildren(...tokens.map((token, i) => {
    const track = el("div", { class: "track" }, el("div", { class: "fill", style: `width:${(100 * probs[i] / top).toFixed(1)}%` }));
    if (after) track.append(el("div", { class: "fill after", style: `width:${(100 * after[i] / top).toFixed(1)}%` }));
    const num = after ? `${(100 * probs[i]).toFixed(1)}→${(100 * after[i]).toFixed(1)}%` : `${(100 * probs[i]).toFixed(1)}%`;
    return el("div", { class: "bar" }, el("span", { class: "tok", text: visible(token) }), track, el("span", { class: "num", text: num }));
  }));
}

async function renderAttribution(seq) {
  const t = state.position;
  try {
    const d = await api("/api/attribution", { run: state.run, text: state.analysis.text, position: t });
    if (seq !== state.positionSeq) return;     // a newer click (or text) superseded this one
    $("#dla-label").textContent = `of “${visible(d.token_text)}” after position ${d.position}: logit ${fmt(d.total, 4)} = ` +
      `the sum of the parts' shares ${fmt(d.sum, 4)} (ln_f's scale frozen at ${fmt(d.scale, 3)})`;
    const top = Math.max(...d.values.map(Math.abs), 1e-9);
    $("#dla").replaceChildren(...d.labels.map((label, i) => {
      const v = d.values[i], width = (50 * Math.abs(v) / top).toFixed(1);
      return el("div", { class: "dla-row" }, el("span", { text: label }),
        el("div", { class: "track" }, el("div", { class: v >= 0 ? "pos" : "neg", style: `width:${width}%` })),
        el("span", { class: "num", text: fmt(v, 3) }));
    }));
  } catch (err) { if (seq === state.positionSeq) $("#dla").replaceChildren(el("p", { class: "muted", text: err.message })); }
}

// ------------------------------------------------------------------ attention
function drawHeatmap(canvas, matrix) {
  const T = matrix.length, ctx = canvas.getContext("2d"), image = ctx.createImageData(T, T);
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) {
      const v = Math.sqrt(matrix[i][j]), o = 4 * (i * T + j);   // sqrt: weak weights stay visible
      image.data[o] = 255 - v * 208; image.data[o + 1] = 255 - v * 146; image.data[o + 2] = 255 - v * 76; image.data[o + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

function renderAttention() {
  if (!state.analysis) return;
  const { attention, n_layer, n_head, tokens } = state.analysis;
  const T = tokens.length, size = Math.max(48, Math.min(120, 4 * T));
  const rows = [];
  for (let l = 0; l < n_layer; l++) {
    const row = el("div", { class: "attn-row" }, el("span", { class: "layer", text: `layer ${l}` }));
    for (let h = 0; h < n_head; h++) {
      const key = `${l},${h}`;
      const canvas = el("canvas", { class: "head-map", width: T, height: T, "data-layer": l, "data-head": h,
        title: `L${l}H${h}: row = query position, column = key position`, style: `width:${size}px;height:${size}px`,
        onclick: () => { state.lineHead = { layer: l, head: h }; renderAttention(); renderLines(); } });
      drawHeatmap(canvas, attention[l][h]);
      const off = el("button", { class: "off-btn" + (state.offHeads.has(key) ? " on" : ""), "data-ablate": key,
        title: `switch head L${l}H${h} off`, onclick: () => toggle(state.offHeads, key) }, "off");
      const selected = state.lineHead.layer === l && state.lineHead.head === h;
      row.append(el("div", { class: "head" + (selected ? " selected" : "") + (state.offHeads.has(key) ? " off" : "") },
        canvas, el("span", {}, `L${l}H${h} `, off)));
    }
    if (state.analysis.has_mlp) {
      row.append(el("button", { class: "off-btn" + (state.offMlps.has(l) ? " on" : ""), "data-ablate-mlp": l,
        title: `switch MLP ${l} off`, onclick: () => toggle(state.offMlps, l) }, `MLP ${l} off`));
    }
    rows.push(row);
  }
  $("#attn").replaceChildren(...rows);
}

function toggle(set, key) {
  if (set.has(key)) set.delete(key); else set.add(key);
  renderAttention(); renderPosition();
}

function renderLines() {
  const a = state.analysis, svg = $("#lines");
  const { layer, head } = state.lineHead, T = a.tokens.length, matrix = a.attention[layer][head];
  const step = 18, height = T * step + 10, width = svg.clientWidth || 400, left = 70, right = width - 70;
  svg.setAttribute("height", height);
  $("#lines-label").textContent = `L${layer}H${head}, from position ${state.position} (left) to what it attends to (right)`;
  const ns = "http://www.w3.org/2000/svg", parts = [];
  const text = (x, y, anchor, content, bold) => {
    const node = document.createElementNS(ns, "text");
    node.setAttribute("x", x); node.setAttribute("y", y); node.setAttribute("text-anchor", anchor);
    node.setAttribute("font-size", "12"); node.setAttribute("font-family", "monospace");
    if (bold) node.setAttribute("font-weight", "bold");
    node.textContent = content; return node;
  };
  for (let i = 0; i < T; i++) {
    const y = 14 + i * step, label = visible(a.tokens[i].text);
    parts.push(text(left - 6, y, "end", label, i === state.position), text(right + 6, y, "start", label, false));
  }
  const i = state.position;
  for (let j = 0; j < T; j++) {
    const w = matrix[i][j];
    if (w < 0.01) continue;
    const line = document.createElementNS(ns, "line");
    line.setAttribute("x1", left); line.setAttribute("y1", 10 + i * step); line.setAttribute("x2", right); line.setAttribute("y2", 10 + j * step);
    line.setAttribute("stroke", "#2f6db3"); line.setAttribute("stroke-width", (1 + 5 * w).toFixed(2));
    line.setAttribute("stroke-opacity", Math.min(1, 0.15 + w).toFixed(2));
    line.setAttribute("class", "attn-line"); line.setAttribute("data-weight", w.toFixed(4));
    parts.push(line);
  }
  svg.replaceChildren(...parts);
}

function renderHeads(scores) {
  const table = el("table", { class: "grid", id: "head-table" });
  const n_head = scores.previous_token[0].length;
  table.append(el("tr", {}, el("th", { text: "" }), ...Array.from({ length: n_head }, (_, h) => el("th", { text: `head ${h}` }))));
  scores.previous_token.forEach((row, l) => {
    table.append(el("tr", {}, el("th", { text: `layer ${l}` }), ...row.map((prev, h) => {
      const ind = scores.induction[l][h], dup = (scores.duplicate_token || [])[l], first = (scores.first_token || [])[l];
      const cell = el("td", { title: `duplicate-token ${fmt(dup && dup[h], 2)}, first-token ${fmt(first && first[h], 2)}` },
        `prev ${fmt(prev, 2)}\nind ${fmt(ind, 2)}`);
      cell.style.background = `linear-gradient(90deg, rgba(47,109,179,${prev || 0}) 50%, rgba(30,132,73,${ind || 0}) 50%)`;
      return cell;
    })));
  });
  $("#heads").replaceChildren(table, el("p", { class: "hint",
    text: `previous-token: mean attention from t to t-1; induction: from the second copy of a random sequence of ${scores.sequence_length / 2} tokens to the token after the earlier copy (blue | green).` }));
}

function renderLens(lens) {
  const table = el("table", { class: "grid", id: "lens-table" });
  table.append(el("tr", {}, el("th", { text: "layer \\ input" }), ...lens.tokens.map((t) => el("th", { text: visible(t.text) }))));
  lens.names.forEach((name, l) => {
    table.append(el("tr", {}, el("th", { text: name }), ...lens.top.ids[l].map((_, t) => {
      const p = lens.top.probs[l][t][0], tok = lens.top.tokens[l][t];
      const tip = tok.map((s, k) => `${visible(s)} ${(100 * lens.top.probs[l][t][k]).toFixed(1)}%`).join("\n") +
        `\nKL to the final layer ${lens.kl_to_final[l][t].toFixed(3)}`;
      const cell = el("td", { title: tip }, `${visible(tok[0])}\n${(100 * p).toFixed(0)}%`);
      cell.style.background = `rgba(47, 109, 179, ${(0.7 * p).toFixed(3)})`;
      return cell;
    })));
  });
  $("#lens").replaceChildren(table);
}

// ------------------------------------------------------------------ generation (server-sent events over fetch)
async function streamEvents(url, onEvent, signal) {
  const response = await fetch(url, { signal, headers: { Accept: "text/event-stream" } });
  if (!response.ok) throw new Error(errorText(await response.json().catch(() => null), response.status));
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      onEvent(event, JSON.parse(data));
    }
  }
}

async function generate() {
  const params = new URLSearchParams({ run: state.run, prompt: $("#prompt").value, max_new_tokens: $("#g-n").value || "100",
    temperature: $("#g-temp").value || "1", use_cache: $("#g-cache").checked ? "true" : "false" });
  for (const [name, id] of [["top_k", "#g-topk"], ["top_p", "#g-topp"], ["seed", "#g-seed"]]) {
    if ($(id).value !== "") params.set(name, $(id).value);
  }
  const out = $("#g-out"), generated = el("span", { class: "generated" });
  out.replaceChildren(el("span", { class: "prompt", text: $("#prompt").value }), generated);
  const controller = new AbortController();
  state.generation = controller;
  $("#g-go").disabled = true; $("#g-stop").disabled = false; $("#g-speed").textContent = "";
  setStatus("");                     // an earlier error (a refused prompt) is not this generation's
  try {
    await streamEvents(`/api/generate?${params}`, (event, data) => {
      if (event === "token") {
        generated.textContent += data.piece;
        $("#g-speed").textContent = `${data.index + 1} tokens, ${fmt(data.tokens_per_s)} tokens/s`;
      } else if (event === "done") {
        generated.textContent = data.text;
        out.dataset.done = "true";
        $("#g-speed").textContent = `${data.n} tokens in ${fmt(data.seconds)} s: ${fmt(data.tokens_per_s)} tokens/s ` +
          `(KV cache ${$("#g-cache").checked ? "on" : "off"})`;
      } else if (event === "error") { setStatus(data.detail); }
    }, controller.signal);
  } catch (err) {
    if (err.name !== "AbortError") setStatus(err.message);
  } finally {
    $("#g-go").disabled = false; $("#g-stop").disabled = true; state.generation = null;
  }
}

// ------------------------------------------------------------------ training curves
// One refresh at a time: a call while one is fetching asks for another pass after it (a reset with it),
// so that two overlapping fetches (a run chosen and its tab opened at once) never append the same
// records twice.
async function refreshMetrics(reset) {
  if (reset) state.metricsReset = true;
  if (state.metricsBusy) { state.metricsAgain = true; return; }
  state.metricsBusy = true;
  try {
    do { state.metricsAgain = false; await refreshMetricsOnce(); } while (state.metricsAgain);
  } finally { state.metricsBusy = false; }
}

async function refreshMetricsOnce() {
  const ids = [state.run, $("#compare").value].filter((id, i, all) => id && all.indexOf(id) === i);
  if (state.metricsReset) { state.metricsReset = false; for (const id of ids) delete state.metrics[id]; }
  let ended = false;                  // the followed run finished since the last fetch: its summary and checkpoint are new
  for (const id of ids) {
    const entry = state.metrics[id] || (state.metrics[id] = { records: [], next: 0, finished: false });
    if (entry.finished && entry.next > 0) continue;
    const following = entry.next > 0;
    try {
      const data = await api(`/api/metrics?run=${encodeURIComponent(id)}&since=${entry.next}`);
      entry.records.push(...data.records); entry.next = data.next; entry.finished = data.finished;
      if (following && data.finished && id === state.run) ended = true;
    } catch (err) { setStatus(err.message); }
  }
  if (ended) await refreshInfo();     // its summary shown before the page stops saying "following live"
  drawChart(ids);
  renderSamples(ids);
  const live = ids.filter((id) => !state.metrics[id].finished);
  $("#t-live").textContent = live.length ? `following ${live.join(", ")} live (updated ${new Date().toLocaleTimeString()})` : "";
  clearTimeout(state.pollTimer);
  if (live.length) {
    state.pollTimer = setTimeout(async () => {
      if (live.includes(state.run)) await refreshInfo();   // a new checkpoint may have appeared
      refreshMetrics(false);
    }, 1500);
  }
}

function renderSamples(ids) {       // records {"kind": "sample", "iter", "text"}, when the run writes them
  const cards = [];
  for (const id of ids) {
    const samples = (state.metrics[id] ? state.metrics[id].records : []).filter((r) => r.kind === "sample" && typeof r.text === "string");
    if (!samples.length) continue;
    const last = samples[samples.length - 1];
    cards.push(el("div", { class: "panel" }, el("h2", { text: `${id}: sample at iteration ${fmt(last.iter)}` }),
      el("pre", { class: "sample", text: last.text })));
  }
  $("#samples").replaceChildren(...cards);
}

function niceTicks(low, high, count) {
  const span = high - low || 1, step0 = span / count, mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(low / step) * step; v <= high + 1e-12; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

function drawChart(ids) {
  const canvas = $("#chart"), ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const pad = { l: 56, r: 16, t: 14, b: 36 }, colours = ["#2f6db3", "#c0392b"];
  const series = [];
  ids.forEach((id, n) => {
    const records = state.metrics[id] ? state.metrics[id].records : [];
    const evals = records.filter((r) => r.kind === "eval");
    const pick = (rows, key) => rows.filter((r) => typeof r[key] === "number" && typeof r.iter === "number").map((r) => [r.iter, r[key]]);
    if ($("#t-train").checked) series.push({ label: `${id} train loss (step)`, colour: colours[n], points: pick(records.filter((r) => r.kind === "train"), "loss"), width: 1, alpha: 0.35 });
    series.push({ label: `${id} train loss (eval)`, colour: colours[n], points: pick(evals, "train_loss"), width: 2, dash: [6, 4] });
    series.push({ label: `${id} val loss`, colour: colours[n], points: pick(evals, "val_loss"), width: 2.5 });
  });
  const all = series.flatMap((s) => s.points);
  ctx.clearRect(0, 0, W, H);
  ctx.font = "12px system-ui"; ctx.fillStyle = "#6b6b70";
  if (!all.length) { ctx.fillText("no metrics yet (metrics.jsonl is written as the run trains)", pad.l, H / 2); $("#legend").replaceChildren(); return; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const X = (x) => pad.l + (x - x0) / (x1 - x0) * (W - pad.l - pad.r), Y = (y) => H - pad.b - (y - y0) / (y1 - y0) * (H - pad.t - pad.b);
  ctx.strokeStyle = "#e6e3dc"; ctx.lineWidth = 1;
  const yTicks = niceTicks(y0, y1, 6), decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10((yTicks[1] - yTicks[0]) || 1))));
  for (const v of yTicks) { ctx.beginPath(); ctx.moveTo(pad.l, Y(v)); ctx.lineTo(W - pad.r, Y(v)); ctx.stroke(); ctx.fillText(v.toFixed(decimals), 6, Y(v) + 4); }
  for (const v of niceTicks(x0, x1, 8)) { ctx.fillText(fmt(v), X(v) - 8, H - pad.b + 16); }
  ctx.fillText("iteration", W / 2 - 20, H - 6);
  for (const s of series) {
    if (!s.points.length) continue;
    ctx.strokeStyle = s.colour; ctx.globalAlpha = s.alpha || 1; ctx.lineWidth = s.width; ctx.setLineDash(s.dash || []);
    ctx.beginPath();
    s.points.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
    if (s.points.length === 1) { ctx.fillStyle = s.colour; ctx.fillRect(X(s.points[0][0]) - 2, Y(s.points[0][1]) - 2, 4, 4); }
  }
  ctx.globalAlpha = 1; ctx.setLineDash([]);
  canvas.dataset.points = String(all.length);
  $("#legend").replaceChildren(...series.filter((s) => s.points.length).map((s) => {
    const swatch = el("i"); swatch.style.background = s.colour; swatch.style.opacity = s.alpha || 1;
    const last = s.points[s.points.length - 1];
    return el("span", {}, swatch, `${s.label}: ${fmt(last[1], 4)} at ${fmt(last[0])}`);
  }));
}

function kvTable(rows, header) {
  const table = el("table", { class: "kv" });
  if (header) table.append(el("tr", {}, ...header.map((h) => el("th", { text: h }))));
  for (const [k, ...vs] of rows) {
    const differs = vs.length > 1 && vs.some((v) => fmt(v, 4) !== fmt(vs[0], 4));
    table.append(el("tr", { class: differs ? "differs" : "" }, el("td", { text: k }), ...vs.map((v) => el("td", { text: fmt(v, 4) }))));
  }
  return table;
}

function configRows(info) {
  const rows = new Map(), model = info.config || {}, train = (info.run && info.run.train) || {};
  for (const [k, v] of Object.entries(model)) rows.set(`model.${k}`, v);
  for (const [k, v] of Object.entries(train)) if (typeof v !== "object" || v === null) rows.set(`train.${k}`, v);
  if (info.run) for (const k of ["data", "tokenizer", "preset", "train_tokens", "val_tokens"]) if (k in info.run) rows.set(k, info.run[k]);
  if (info.tokenizer) rows.set("tokenizer vocabulary", info.tokenizer.vocab_size);
  if (info.n_params) rows.set("parameters", info.n_params);
  return rows;
}

function merged(maps) {               // [[key, value of run A, value of run B], ...] over the keys of both
  const keys = [...new Set(maps.flatMap((m) => [...m.keys()]))];
  return keys.map((k) => [k, ...maps.map((m) => m.get(k))]);
}

function renderConfig() {
  const infos = [state.info, state.compareInfo].filter(Boolean);
  if (!infos.length) { $("#config").replaceChildren(); $("#summary").replaceChildren(); return; }
  const header = infos.length > 1 ? ["", ...infos.map((i) => i.id)] : null;
  $("#config").replaceChildren(kvTable(merged(infos.map(configRows)), header));
  const summaries = infos.map((i) => new Map(Object.entries(i.summary || {})));
  $("#summary").replaceChildren(summaries.some((m) => m.size) ? kvTable(merged(summaries), header)
    : el("p", { class: "muted", text: "no summary.json yet: the run is training or was stopped" }));
}

async function selectCompare() {
  const id = $("#compare").value;
  state.compareInfo = id && id !== state.run
    ? await api(`/api/run?run=${encodeURIComponent(id)}`).catch((err) => { setStatus(err.message); return null; }) : null;
  renderConfig();
  refreshMetrics(false);
}

// ------------------------------------------------------------------ roadmap
async function loadStages() {
  try {
    const data = await api("/api/stages");
    if (!data.stages.length) {
      $("#stages").replaceChildren(el("p", { class: "muted", text: data.runs_root ? `no roadmap stages in ${data.runs_root}: groundup run all --quick` : "no runs folder served (--runs DIR)" }));
      return;
    }
    $("#stages").replaceChildren(...data.stages.map((s) => {
      const card = el("div", { class: "stage", "data-stage": s.name },
        el("span", { class: `badge ${s.status}`, text: s.status.toUpperCase() }), el("b", { text: s.name }), ` · ${s.title} `,
        el("span", { class: "muted", text: s.headline }));
      if (s.report) card.append(" · ", el("a", { href: s.report, target: "_blank", class: "report-link", text: "report" }));
      if (s.error) card.append(el("div", { class: "claim", text: `error: ${s.error}` }));
      const smoke = s.status === "smoke";     // a tiny run: its claims ran, but its numbers judge nothing
      for (const c of s.claims) {
        const verdict = smoke ? (c.passed ? "held " : "not held ") : (c.passed ? "PASS " : "FAIL ");
        card.append(el("div", { class: "claim" }, el("b", { class: c.passed ? "pass" : "fail", text: verdict }),
          `${c.statement} `, el("span", { class: "muted", text: c.detail })));
      }
      return card;
    }));
  } catch (err) { setStatus(err.message); }
}

// ------------------------------------------------------------------ wiring
function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${name}`);
  if (name === "roadmap") loadStages();
  if (name === "training") refreshMetrics(false);
  if (name === "inside" && state.analysis) renderLines();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("#run").addEventListener("change", (e) => selectRun(e.target.value));
  $("#compare").addEventListener("change", selectCompare);
  $("#t-train").addEventListener("change", () => drawChart([state.run, $("#compare").value].filter(Boolean)));
  $("#text").addEventListener("input", debounce(() => { state.position = null; analyze(); }, 250));
  $("#ablate-kind").addEventListener("change", renderPosition);
  $("#ablate-clear").addEventListener("click", () => { state.offHeads.clear(); state.offMlps.clear(); renderAttention(); renderPosition(); });
  $("#g-go").addEventListener("click", generate);
  $("#g-stop").addEventListener("click", () => state.generation && state.generation.abort());
  loadRuns().catch((err) => setStatus(err.message));
  setInterval(() => refreshRunList().catch(() => {}), 3000);
});
