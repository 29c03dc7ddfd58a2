// nanodiffusion's page: plain JavaScript, no build step, and no request outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: {}, info: null, tab: "generate", job: null, abort: null, last: null, gallery: [] };
const edit = { image: null, mask: null, painting: false };  // native-size canvases of the edit

// --- start-up -------------------------------------------------------------------------------------
async function init() {
  const info = await (await fetch("/api/models")).json();
  state.info = info;
  for (const m of info.models) {
    state.models[m.name] = m;
    $("model").add(new Option(`${m.name} (${m.conditioning === "none" ? m.task : m.conditioning})`, m.name));
  }
  for (const s of info.samplers) $("sampler").add(new Option(s, s));
  $("sampler").value = "dpm++2m";
  $("model").addEventListener("change", modelChanged);
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $("generate").addEventListener("click", () => run("single"));
  $("cancel").addEventListener("click", cancel);
  $("compare").addEventListener("click", () => run("compare"));
  $("sweep").addEventListener("click", () => run("sweep"));
  $("strength").addEventListener("input", () => ($("strength-out").value = $("strength").value));
  $("forward-u").addEventListener("input", forwardStep);
  $("edit-file").addEventListener("change", loadEditFile);
  $("use-last").addEventListener("click", () => state.last && setEditImage(state.last));
  $("clear-mask").addEventListener("click", () => { clearMask(); redraw(); });
  $("mode").addEventListener("change", modeChanged);
  setupPainting();
  setupDrop();
  $("restore-file").addEventListener("change", () => $("restore-file").files[0] && restoreFrom($("restore-file").files[0]));
  modelChanged();
}

function current() { return state.models[$("model").value]; }

function modelChanged() {
  const m = current();
  if (!m) return;
  const size = m.size ? `${m.size[0]}x${m.size[1]}` : "its own size";
  $("model-info").textContent = (m.description ? `${m.description}. ` : "") + `${m.conditioning} conditioning, ${size}, ${m.network || m.kind}` +
    (m.latent ? ", latent" : "") + (m.task !== "generate" ? `, task ${m.task}` : "");
  $("row-prompt").classList.toggle("hidden", m.conditioning !== "text");
  $("row-negative").classList.toggle("hidden", m.conditioning !== "text");
  $("row-class").classList.toggle("hidden", m.conditioning !== "class");
  $("class").innerHTML = "";
  $("class").add(new Option("any (unguided)", ""));
  m.classes.forEach((c, i) => $("class").add(new Option(c, String(i))));
  if (m.task === "upscale") { $("mode").value = "upscale"; }
  if (m.task === "inpaint") { $("mode").value = "inpaint"; $("method").value = "model"; }
  if (edit.image) setEditImage(edit.source);
  else { edit.mask = null; if (state.tab === "edit") modeChanged(); }  // a blank canvas at the new size
  if (state.tab === "explore") drawSchedule();
}

function showTab(tab) {
  state.tab = tab;
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
  for (const t of ["generate", "edit", "explore", "gallery"]) $("panel-" + t).classList.toggle("hidden", t !== tab);
  $("panel-generate").classList.toggle("hidden", !(tab === "generate" || tab === "edit" || tab === "explore"));
  $("generate").textContent = tab === "edit" ? "Run the edit" : "Generate";
  $("gallery").classList.toggle("hidden", tab !== "gallery");
  $("results").classList.toggle("hidden", tab === "gallery");
  if (tab === "explore") { drawSchedule(); forwardStep(); }
  if (tab === "edit") modeChanged();
}

function modeChanged() {
  const mode = $("mode").value;
  $("row-method").classList.toggle("hidden", mode !== "inpaint");
  $("row-strength").classList.toggle("hidden", mode !== "img2img");
  if (edit.source) setEditImage(edit.source);
  else if (mode === "control") { if (!edit.mask) clearMask(); redraw(); }  // edges need no picture
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// --- settings -------------------------------------------------------------------------------------
function settings() {
  const m = current();
  const s = {
    model: m.name, sampler: $("sampler").value, steps: Number($("steps").value), seed: Number($("seed").value),
    n: Number($("n").value), mode: "generate",
  };
  if ($("guidance").value !== "") s.guidance = Number($("guidance").value);
  if (m.conditioning === "text") { s.prompt = $("prompt").value; s.negative_prompt = $("negative").value; }
  if (m.conditioning === "class" && $("class").value !== "") s.class_label = Number($("class").value);
  if (state.tab === "edit") {
    s.mode = $("mode").value;
    if (s.mode === "control") {  // the edges drawn on the canvas; no picture
      if (!edit.mask) throw new Error("draw the edges first");
      s.control = edit.mask.toDataURL("image/png");
    } else {
      if (!edit.image) throw new Error("choose an image to edit first");
      s.image = edit.image.toDataURL("image/png");
      if (s.mode === "inpaint") { s.method = $("method").value; s.mask = edit.mask.toDataURL("image/png"); }
      if (s.mode === "img2img") s.strength = Number($("strength").value);
    }
  }
  if (m.task === "upscale") s.mode = "upscale";
  return s;
}

function restore(s) {
  if (s.model && state.models[s.model]) { $("model").value = s.model; modelChanged(); }
  const set = (id, v) => { if (v !== undefined && v !== null) $(id).value = v; };
  set("prompt", s.prompt); set("negative", s.negative_prompt); set("sampler", s.sampler); set("steps", s.steps);
  set("seed", s.seed); set("n", s.n); set("strength", s.strength); set("method", s.method);
  $("guidance").value = s.guidance === null || s.guidance === undefined ? "" : s.guidance;
  $("class").value = s.class_label === null || s.class_label === undefined ? "" : String(s.class_label);
  if (s.mode && s.mode !== "generate") { $("mode").value = s.mode; showTab("edit"); } else showTab("generate");
}

// --- jobs -----------------------------------------------------------------------------------------
async function run(view) {
  let body;
  try { body = settings(); } catch (e) { status(e.message, true); return; }
  if (view !== "single") { body.view = view; if (view === "compare") body.steps = Number($("nfe").value); }
  $("generate").disabled = true; $("cancel").disabled = false;
  $("results").innerHTML = ""; $("rows").innerHTML = "";
  $("live").classList.remove("hidden");
  status("sending...");
  state.abort = new AbortController();
  try {
    const response = await fetch("/api/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: state.abort.signal,
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({ error: response.statusText }));
      status(answer.error, true);
      return;
    }
    await readEvents(response.body.getReader(), handle);
  } catch (e) {
    if (e.name !== "AbortError") status(String(e.message || e), true);
  } finally {
    $("generate").disabled = false; $("cancel").disabled = true; state.job = null; state.abort = null;
  }
}

async function readEvents(reader, onEvent) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const text = buffer.slice(0, cut); buffer = buffer.slice(cut + 1);
      if (text.trim()) onEvent(JSON.parse(text));
    }
  }
}

function handle(ev) {
  if (ev.type === "queued") {
    state.job = ev.job;
    status(ev.position > 0 ? `waiting: ${ev.position} job(s) ahead` : "starting...");
  } else if (ev.type === "start") {
    status("running...");
  } else if (ev.type === "step") {
    $("preview-x").src = ev.x; $("preview-x0").src = ev.x0;
    $("progress").value = ev.i / ev.steps;
    status(`${ev.label ? ev.label + ": " : ""}step ${ev.i}/${ev.steps}, sigma ${ev.sigma.toFixed(3)}`);
    document.body.dataset.steps = String(Number(document.body.dataset.steps || 0) + 1);
  } else if (ev.type === "row") {
    const row = document.createElement("div"); row.className = "row";
    const label = document.createElement("span"); label.textContent = ev.label;
    const img = document.createElement("img"); img.src = ev.images[0]; img.className = "pixel";
    row.append(label, img); $("rows").append(row);
  } else if (ev.type === "done") {
    for (const [i, url] of ev.images.entries()) addResult(url, ev.settings, i);
    status(`done in ${ev.seconds.toFixed(1)} s`);
  } else if (ev.type === "error") {
    status(ev.message, true);
  } else if (ev.type === "cancelled") {
    status("cancelled");
  }
}

function addResult(url, s, index) {
  const img = document.createElement("img");
  img.src = url; img.className = "result pixel"; img.title = "click to download; its PNG carries its settings";
  img.addEventListener("click", () => { const a = document.createElement("a"); a.href = url; a.download = `nanodiff-${s.seed}-${index}.png`; a.click(); });
  $("results").append(img);
  state.last = url;
  const thumb = img.cloneNode(); thumb.className = "pixel";
  thumb.title = "restore these settings";
  thumb.addEventListener("click", () => restore(s));
  $("gallery").prepend(thumb);
}

async function cancel() {
  status("cancelling...");  // before the request: the stream's "cancelled" may arrive before its answer
  if (state.job) await fetch(`/api/jobs/${state.job}/cancel`, { method: "POST" });
}

// --- editing --------------------------------------------------------------------------------------
function editSize() {
  const m = current();
  if (m.task === "upscale") return [m.low_size, m.low_size];
  return m.size || [512, 512];
}

function setEditImage(url) {
  edit.source = url;
  const img = new Image();
  img.onload = () => {
    const [w, h] = editSize();
    edit.image = document.createElement("canvas"); edit.image.width = w; edit.image.height = h;
    edit.image.getContext("2d").drawImage(img, 0, 0, w, h);
    clearMask(); redraw();
  };
  img.src = url;
}

function loadEditFile() {
  const file = $("edit-file").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => setEditImage(reader.result);
  reader.readAsDataURL(file);
}

function clearMask() {  // all black: nothing to repaint, no edges; the image's size, or the model's
  const [w, h] = edit.image ? [edit.image.width, edit.image.height] : editSize();
  edit.mask = document.createElement("canvas");
  edit.mask.width = w; edit.mask.height = h;
  const ctx = edit.mask.getContext("2d"); ctx.fillStyle = "#000"; ctx.fillRect(0, 0, edit.mask.width, edit.mask.height);
}

function redraw() {
  const canvas = $("edit-canvas"), control = $("mode").value === "control";
  const base = control ? edit.mask : edit.image;
  if (!base) return;
  canvas.width = base.width; canvas.height = base.height;
  const ctx = canvas.getContext("2d");
  if (control) { ctx.drawImage(edit.mask, 0, 0); return; }  // the edge drawing
  ctx.drawImage(edit.image, 0, 0);
  if ($("mode").value !== "inpaint") return;
  const tint = document.createElement("canvas"); tint.width = canvas.width; tint.height = canvas.height;
  const t = tint.getContext("2d");
  t.drawImage(edit.mask, 0, 0); t.globalCompositeOperation = "multiply"; t.fillStyle = "#ff3030"; t.fillRect(0, 0, tint.width, tint.height);
  ctx.globalAlpha = 0.55; ctx.globalCompositeOperation = "lighter"; ctx.drawImage(tint, 0, 0);
  ctx.globalAlpha = 1; ctx.globalCompositeOperation = "source-over";
}

function setupPainting() {
  const canvas = $("edit-canvas");
  const paint = (ev) => {
    if (!edit.painting || !edit.mask) return;
    const box = canvas.getBoundingClientRect();
    const x = ((ev.clientX - box.left) / box.width) * edit.mask.width;
    const y = ((ev.clientY - box.top) / box.height) * edit.mask.height;
    const r = Number($("brush").value) * edit.mask.width / 64;
    const ctx = edit.mask.getContext("2d"); ctx.fillStyle = "#fff";
    ctx.beginPath(); ctx.arc(x, y, Math.max(r, 0.5), 0, 2 * Math.PI); ctx.fill();
    redraw();
  };
  canvas.addEventListener("pointerdown", (ev) => { edit.painting = true; canvas.setPointerCapture(ev.pointerId); paint(ev); });
  canvas.addEventListener("pointermove", paint);
  canvas.addEventListener("pointerup", () => (edit.painting = false));
}

// --- explore --------------------------------------------------------------------------------------
async function drawSchedule() {
  const m = current();
  const response = await fetch(`/api/schedule?model=${encodeURIComponent(m.name)}`);
  if (!response.ok) return;
  state.curves = await response.json();
  plotSchedule();
}

function plotSchedule() {
  const c = state.curves; if (!c) return;
  const canvas = $("schedule-plot"), ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 24;
  ctx.clearRect(0, 0, W, H);
  const lo = Math.max(Math.min(...c.log_snr), -15), hi = Math.min(Math.max(...c.log_snr), 15);
  const line = (ys, y0, y1, color) => {
    ctx.strokeStyle = color; ctx.beginPath();
    ys.forEach((y, i) => { const px = pad + (W - 2 * pad) * c.u[i], py = H - pad - (H - 2 * pad) * (Math.min(Math.max(y, y0), y1) - y0) / (y1 - y0); i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
  };
  line(c.alpha_bar, 0, 1, "#3b5bdb"); line(c.log_snr, lo, hi, "#e8590c");
  const u = Number($("forward-u").value), x = pad + (W - 2 * pad) * u;
  ctx.strokeStyle = "#999"; ctx.beginPath(); ctx.moveTo(x, pad / 2); ctx.lineTo(x, H - pad / 2); ctx.stroke();
  ctx.fillStyle = "#3b5bdb"; ctx.fillText("alpha_bar", pad, 12); ctx.fillStyle = "#e8590c"; ctx.fillText("log SNR", pad + 70, 12);
  ctx.fillStyle = "#667085"; ctx.fillText("t = 0", pad - 10, H - 6); ctx.fillText("t = 1", W - pad - 10, H - 6);
}

let forwardBusy = false, forwardAgain = false;  // one request at a time; the slider's latest t is never dropped
async function forwardStep() {
  plotSchedule();
  const image = edit.image ? edit.image.toDataURL("image/png") : state.last;
  if (!image) { $("forward-out").value = "generate an image first"; return; }
  if (forwardBusy) { forwardAgain = true; return; }
  forwardBusy = true;
  try {
    const u = Number($("forward-u").value);
    const response = await fetch("/api/forward", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: current().name, image, u, seed: Number($("seed").value) }),
    });
    const r = await response.json();
    if (!response.ok) { $("forward-out").value = r.error; return; }
    $("forward-image").src = r.image;
    $("forward-out").value = `t ${u.toFixed(2)}: alpha_bar ${r.alpha_bar.toFixed(4)}, SNR ${r.snr.toPrecision(3)}, sigma ${r.sigma.toPrecision(3)}`;
  } finally {
    forwardBusy = false;
    if (forwardAgain) { forwardAgain = false; forwardStep(); }
  }
}

// --- restoring a PNG's settings ---------------------------------------------------------------------
function setupDrop() {
  document.addEventListener("dragover", (ev) => { ev.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (ev) => {
    ev.preventDefault(); document.body.classList.remove("dragging");
    const file = ev.dataTransfer.files[0];
    if (file) restoreFrom(file);
  });
}

function restoreFrom(file) {
  const reader = new FileReader();
  reader.onload = async () => {
    const response = await fetch("/api/settings", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ image: reader.result }),
    });
    const r = await response.json();
    if (!response.ok) { status(r.error, true); return; }
    restore(r);
    status(`settings restored from ${file.name}: press Generate to draw it again`);
  };
  reader.readAsDataURL(file);
}

init();
