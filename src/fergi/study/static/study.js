// The participant's side of the fergi study (paper Sec. 3, Supp. A). Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const STORAGE_KEY = "fergi-study";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let config = null;   // GET /api/config
let state = null;    // GET /api/sessions/{id}
let auth = null;     // {sessionId, token, participant, invite}
let camera = null;   // MediaStream
let recorder = null; // SessionRecorder while recording
const imageUrls = {}; // image index -> blob URL

// ---------------------------------------------------------------- utilities
class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; this.detail = detail; }
}

function showBanner(message, kind = "error") {
  const banner = $("banner");
  banner.textContent = message;
  banner.className = "banner" + (kind === "info" ? " info" : "");
  banner.hidden = !message;
}

// One request with retries: network failures, 5xx and 429 are retried with back-off
// (the participant sees a notice), 4xx answers are final and raised as ApiError.
async function api(method, path, { json, body, headers = {}, retries = 6 } = {}) {
  const opts = { method, headers: { ...headers } };
  if (auth && auth.token) opts.headers["X-Session-Token"] = auth.token;
  if (json !== undefined) { opts.body = JSON.stringify(json); opts.headers["Content-Type"] = "application/json"; }
  else if (body !== undefined) opts.body = body;
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, opts);
    } catch (err) {
      if (attempt >= retries) throw new ApiError(0, "The connection to the study server was lost. Check your internet connection and reload the page.");
      showBanner("Connection problem — retrying…", "info");
      await sleep(Math.min(8000, 500 * 2 ** attempt));
      continue;
    }
    if (response.ok) {
      if (attempt > 0) showBanner("");
      const type = response.headers.get("content-type") || "";
      return type.includes("application/json") ? response.json() : response.blob();
    }
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    if ((response.status >= 500 || response.status === 429) && attempt < retries) {
      const wait = Number(response.headers.get("Retry-After")) * 1000 || Math.min(8000, 500 * 2 ** attempt);
      await sleep(wait);
      continue;
    }
    throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
}

const sessionPath = (suffix = "") => `api/sessions/${auth.sessionId}${suffix}`;

function saveAuth() { localStorage.setItem(STORAGE_KEY, JSON.stringify(auth)); }

function showPage(id, step) {
  document.querySelectorAll(".page").forEach((page) => { page.hidden = page.id !== id; });
  const order = ["consent", "prompt", "webcam", "images", "ranking", "done"];
  const current = order.indexOf(step);
  document.querySelectorAll("#stepper li").forEach((li) => {
    const index = order.indexOf(li.dataset.step);
    li.classList.toggle("done", current >= 0 && index < current || step === "done");
    li.classList.toggle("current", index === current && step !== "done");
  });
  window.scrollTo(0, 0);
}

function fail(err) {
  console.error(err);
  showBanner(err instanceof ApiError ? err.detail : `Something went wrong: ${err.message || err}`);
}

// Timestamp (performance.now() clock) of the frame that paints the DOM change made just before.
function paintTime() {
  return new Promise((resolve) => requestAnimationFrame((t) => resolve(t)));
}

async function waitUntil(target) {
  for (;;) {
    const left = target - performance.now();
    if (left <= 0) return;
    await sleep(Math.min(left, 250));
  }
}

// ---------------------------------------------------------------- boot and routing
async function boot() {
  try {
    config = await api("GET", "api/config");
  } catch (err) { fail(err); return; }
  buildSurvey();
  const params = new URLSearchParams(location.search);
  const invite = params.get("invite");
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null"); } catch (_) { saved = null; }
  if (saved && saved.sessionId && saved.token && (!invite || saved.invite === invite)) {
    auth = saved;
    try {
      state = await api("GET", sessionPath());
      if (state.step !== "done") { await route(); return; }
    } catch (err) {
      if (!(err instanceof ApiError) || err.status === 0) { fail(err); return; }
    }
  }
  auth = { invite: invite || (saved && saved.invite) || null, participant: saved && saved.participant };
  showStart();
}

async function route() {
  showBanner("");
  switch (state.step) {
    case "consent": return showConsent();
    case "prompt": return state.session_type === "structured" ? showStructured() : showFree();
    case "webcam": return showWebcam();
    case "images": return runImages();
    case "ranking": return showRanking();
    default: return showDone();
  }
}

// ---------------------------------------------------------------- start
function showStart() {
  showPage("page-start", null);
  $("welcome-n").textContent = String(config.n_images);
  $("start-invite-block").hidden = !auth.invite;
  $("start-id-block").hidden = Boolean(auth.invite);
  $("participant-id").required = !auth.invite;
  if (auth.participant) $("participant-id").value = auth.participant;
}

async function startSession(payload) {
  const result = await api("POST", "api/sessions", { json: payload });
  auth = { sessionId: result.session_id, token: result.token, participant: result.state.participant_id, invite: payload.invite || null };
  saveAuth();
  state = result.state;
  await route();
}

$("start-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("start-button");
  button.disabled = true;
  try {
    await startSession(auth.invite ? { invite: auth.invite } : { participant_id: $("participant-id").value.trim() });
  } catch (err) { fail(err); } finally { button.disabled = false; }
});

// ---------------------------------------------------------------- consent
function showConsent() {
  showPage("page-consent", "consent");
  $("consent-text").textContent = config.consent_text;
  $("consent-version").textContent = `Consent text version ${config.consent_version} · participant ${state.participant_id} · session ${state.session_index}`;
}

$("consent-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!$("consent-agree").checked) return;
  try {
    state = await api("POST", sessionPath("/consent"), {
      json: { agree: true, consent_version: config.consent_version, share_video: $("consent-share").checked },
    });
    await route();
  } catch (err) { fail(err); }
});

// ---------------------------------------------------------------- free-form prompt (Fig. S3)
function showFree() {
  showPage("page-prompt-free", "prompt");
  $("example-prompt").textContent = config.example_prompt;
  $("free-prompt").focus();
}

$("free-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("free-prompt").value.trim();
  if (!prompt) return;
  try {
    state = await api("PUT", sessionPath("/prompt"), { json: { prompt } });
    await route();
  } catch (err) { fail(err); }
});

// ---------------------------------------------------------------- structured prompt (Figs. S1-S2)
const form = { animate: [], inanimate: [], inter: [], pos: [] };
let nextUid = 1;

const objectLabel = (o) => `${o.quantity > 1 ? o.quantity + " × " : ""}${o.name}`;
const allObjects = () => [...form.animate.map((o) => ({ ...o, kind: "animate" })), ...form.inanimate.map((o) => ({ ...o, kind: "inanimate" }))];
const inRelation = () => new Set([...form.inter, ...form.pos].flatMap((r) => [r.e1, r.e2]));
const findObject = (uid) => allObjects().find((o) => o.uid === uid);

function fillSelect(select, objects, placeholder) {
  const keep = select.value;
  select.replaceChildren(new Option(placeholder, ""));
  for (const o of objects) select.add(new Option(`${objectLabel(o)} (${o.kind})`, String(o.uid)));
  if ([...select.options].some((opt) => opt.value === keep)) select.value = keep;
}

function cell(row, text) { const td = row.insertCell(); td.textContent = text; return td; }

function removeButton(row, onClick) {
  const button = document.createElement("button");
  button.type = "button"; button.className = "link"; button.textContent = "Remove";
  button.addEventListener("click", onClick);
  row.insertCell().append(button);
}

function renderStructured() {
  const anBody = $("an-table").tBodies[0]; anBody.replaceChildren();
  for (const o of form.animate) {
    const row = anBody.insertRow();
    cell(row, o.name); cell(row, o.quantity); cell(row, o.activity || "—"); cell(row, o.characteristics.join(", ") || "—");
    removeButton(row, () => removeObject("animate", o.uid));
  }
  const inBody = $("in-table").tBodies[0]; inBody.replaceChildren();
  for (const o of form.inanimate) {
    const row = inBody.insertRow();
    cell(row, o.name); cell(row, o.quantity); cell(row, o.characteristics.join(", ") || "—");
    removeButton(row, () => removeObject("inanimate", o.uid));
  }
  for (const [key, table] of [["inter", "ir-table"], ["pos", "pr-table"]]) {
    const body = $(table).tBodies[0]; body.replaceChildren();
    form[key].forEach((r, i) => {
      const row = body.insertRow();
      cell(row, objectLabel(findObject(r.e1))); cell(row, r.relation); cell(row, objectLabel(findObject(r.e2)));
      removeButton(row, () => { form[key].splice(i, 1); renderStructured(); });
    });
  }
  // Only objects that are free (in no relation) and, if animate, have no activity can be related.
  const used = inRelation();
  const free = allObjects().filter((o) => !used.has(o.uid) && !(o.kind === "animate" && o.activity));
  fillSelect($("ir-e1"), free.filter((o) => o.kind === "animate"), "Select animate object…");
  fillSelect($("ir-e2"), free.filter((o) => String(o.uid) !== $("ir-e1").value), "Select object…");
  fillSelect($("pr-e1"), free, "Select object…");
  fillSelect($("pr-e2"), free.filter((o) => String(o.uid) !== $("pr-e1").value), "Select object…");
}

function removeObject(kind, uid) {
  form[kind] = form[kind].filter((o) => o.uid !== uid);
  form.inter = form.inter.filter((r) => r.e1 !== uid && r.e2 !== uid);
  form.pos = form.pos.filter((r) => r.e1 !== uid && r.e2 !== uid);
  renderStructured();
}

const splitList = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

function structuredError(message) {
  const box = $("structured-error");
  box.textContent = message || "";
  box.hidden = !message;
}

$("an-add").addEventListener("click", () => {
  const name = $("an-name").value.trim();
  if (!name) { structuredError("Animate object: enter a name."); $("an-name").focus(); return; }
  form.animate.push({ uid: nextUid++, name, quantity: Math.max(1, Math.min(20, Number($("an-qty").value) || 1)), activity: $("an-act").value.trim(), characteristics: splitList($("an-char").value) });
  for (const id of ["an-name", "an-act", "an-char"]) $(id).value = "";
  $("an-qty").value = 1; structuredError(""); renderStructured(); $("an-name").focus();
});

$("in-add").addEventListener("click", () => {
  const name = $("in-name").value.trim();
  if (!name) { structuredError("Inanimate object: enter a name."); $("in-name").focus(); return; }
  form.inanimate.push({ uid: nextUid++, name, quantity: Math.max(1, Math.min(20, Number($("in-qty").value) || 1)), characteristics: splitList($("in-char").value) });
  for (const id of ["in-name", "in-char"]) $(id).value = "";
  $("in-qty").value = 1; structuredError(""); renderStructured(); $("in-name").focus();
});

for (const [prefix, key, label] of [["ir", "inter", "Interactional relation"], ["pr", "pos", "Positional relation"]]) {
  $(`${prefix}-e1`).addEventListener("change", renderStructured);
  $(`${prefix}-add`).addEventListener("click", () => {
    const e1 = Number($(`${prefix}-e1`).value), e2 = Number($(`${prefix}-e2`).value);
    const relation = $(`${prefix}-rel`).value.trim();
    if (!e1 || !e2 || !relation) { structuredError(`${label}: choose entity 1 and entity 2 and describe the relation.`); return; }
    form[key].push({ e1, e2, relation });
    $(`${prefix}-rel`).value = ""; structuredError(""); renderStructured();
  });
}

function formPayload() {
  const ref = (uid) => {
    const a = form.animate.findIndex((o) => o.uid === uid);
    return a >= 0 ? `animate:${a}` : `inanimate:${form.inanimate.findIndex((o) => o.uid === uid)}`;
  };
  const strip = ({ uid, ...rest }) => rest;
  return {
    animate_objects: form.animate.map(strip),
    inanimate_objects: form.inanimate.map(strip),
    interactional_relations: form.inter.map((r) => ({ entity1: ref(r.e1), entity2: ref(r.e2), relation: r.relation })),
    positional_relations: form.pos.map((r) => ({ entity1: ref(r.e1), entity2: ref(r.e2), relation: r.relation })),
    location: $("ot-loc").value.trim(),
    style: $("ot-style").value.trim(),
    keywords: splitList($("ot-kw").value),
  };
}

function setAttempts(left) {
  const button = $("generate-prompt");
  button.textContent = `Generate prompt (${left} attempt${left === 1 ? "" : "s"} left)`;
  button.disabled = left <= 0;
}

function showStructured() {
  showPage("page-prompt-structured", "prompt");
  renderStructured();
  setAttempts(state.attempts_left);
  const last = state.generated_prompts[state.generated_prompts.length - 1];
  if (last) { $("generated-block").hidden = false; $("structured-prompt").value = last.prompt; }
}

$("generate-prompt").addEventListener("click", async () => {
  const button = $("generate-prompt");
  button.disabled = true;
  structuredError("");
  try {
    const result = await api("POST", sessionPath("/prompt/generate"), { json: { form: formPayload() } });
    $("generated-block").hidden = false;
    $("structured-prompt").value = result.prompt;
    setAttempts(result.attempts_left);
    $("structured-prompt").focus();
  } catch (err) {
    if (err instanceof ApiError && err.status === 422) structuredError(err.detail.replace(/^structured input: /, ""));
    else fail(err);
    button.disabled = false;
  }
});

$("structured-continue").addEventListener("click", async () => {
  const prompt = $("structured-prompt").value.trim();
  if (!prompt) { structuredError("The prompt is empty."); return; }
  try {
    state = await api("PUT", sessionPath("/prompt"), { json: { prompt } });
    await route();
  } catch (err) { fail(err); }
});

// ---------------------------------------------------------------- camera and recording
async function startCamera() {
  if (camera && camera.getVideoTracks().some((t) => t.readyState === "live")) return camera;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error("this browser cannot use a webcam; please use a recent Chrome, Edge or Firefox");
  camera = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } }, audio: false });
  for (const id of ["preview", "clock-video"]) { $(id).srcObject = camera; $(id).play().catch(() => {}); }
  return camera;
}

function stopCamera() {
  if (camera) camera.getTracks().forEach((t) => t.stop());
  camera = null;
}

function pickMimeType() {
  // VP9: VP8 drops frames under CPU load, which would shorten the reaction clips.
  for (const type of ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm"]) {
    if (window.MediaRecorder && MediaRecorder.isTypeSupported(type)) return type;
  }
  throw new Error("this browser cannot record WebM video; please use a recent Chrome, Edge or Firefox");
}

// The capture time of the first frame recorded: video time zero. The recorder's own
// onstart event fires 30-170 ms late, so frame callbacks are used instead.
function firstFrameTime(video, notBefore) {
  return new Promise((resolve) => {
    let done = false;
    const fallback = setTimeout(() => { if (!done) { done = true; resolve(notBefore); } }, 2000);
    const onFrame = (now, meta) => {
      if (done) return;
      // Without captureTime (non-camera tracks, some browsers) the time the frame was handed
      // to the compositor is the closest to its capture (expectedDisplayTime is later still).
      const t = meta.captureTime ?? meta.presentationTime ?? meta.expectedDisplayTime ?? now;
      if (t + 1 >= notBefore) {
        done = true; clearTimeout(fallback);
        console.info(`fergi: video time zero from ${meta.captureTime !== undefined ? "captureTime" : meta.presentationTime !== undefined ? "presentationTime" : "expectedDisplayTime"}, ${(t - notBefore).toFixed(1)} ms after recorder.start()`);
        resolve(t); return;
      }
      video.requestVideoFrameCallback(onFrame);
    };
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
    else { done = true; clearTimeout(fallback); resolve(notBefore); }
  });
}

class SessionRecorder {
  constructor(stream) {
    this.stream = stream;
    this.seq = 0;
    this.tail = Promise.resolve();
    this.dataWaiters = [];
    this.failed = null;
  }

  async start() {
    const mimeType = pickMimeType();
    const settings = this.stream.getVideoTracks()[0].getSettings();
    const seg = await api("POST", sessionPath("/recording/segments"), { json: { mime_type: mimeType, width: settings.width || null, height: settings.height || null } });
    this.segment = seg.segment;
    this.mimeType = mimeType;
    this.recorder = new MediaRecorder(this.stream, { mimeType, videoBitsPerSecond: 2500000 });
    this.recorder.ondataavailable = (event) => {
      if (event.data && event.data.size > 0) this.enqueueChunk(event.data);
      const waiters = this.dataWaiters; this.dataWaiters = [];
      waiters.forEach((resolve) => resolve());
    };
    this.stopped = new Promise((resolve) => { this.recorder.onstop = resolve; });
    const startedAt = performance.now();
    this.recorder.start(config.chunk_ms);
    this.t0 = await firstFrameTime($("clock-video"), startedAt);
    $("rec-indicator").hidden = false;
  }

  videoTime(t) { return Math.max(0, (t - this.t0) / 1000); }

  // Uploads and events go through one serial queue: order on the server = order here.
  enqueue(task) {
    this.tail = this.tail.then(task).catch((err) => { this.failed = err; fail(err); });
    return this.tail;
  }

  enqueueChunk(blob) {
    const seq = this.seq++;
    return this.enqueue(() => this.upload(seq, blob));
  }

  async upload(seq, blob) {
    for (let attempt = 0; ; attempt++) {
      try {
        await api("PUT", sessionPath(`/recording/${this.segment}/chunks/${seq}`), { body: blob, headers: { "Content-Type": "video/webm" }, retries: 2 });
        return;
      } catch (err) {
        if (err instanceof ApiError && err.status === 409) {
          // The server may already hold it (a response lost on the way back).
          const info = await api("GET", sessionPath(`/recording/${this.segment}`));
          if (info.next_seq > seq) return;
          throw err;
        }
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) throw err;
        showBanner("Connection problem — your recording is kept and will be uploaded when the connection is back.", "info");
        await sleep(Math.min(10000, 1000 * 2 ** attempt));
      }
    }
  }

  event(imageIndex, kind, t) {
    const payload = { segment: this.segment, image_index: imageIndex, kind, video_time: this.videoTime(t) };
    return this.enqueue(() => api("POST", sessionPath("/events"), { json: payload, retries: 20 }));
  }

  // Everything recorded so far is uploaded when this resolves.
  async flush() {
    if (this.recorder.state === "recording") {
      const data = new Promise((resolve) => this.dataWaiters.push(resolve));
      this.recorder.requestData();
      await data;
    }
    await this.tail;
  }

  async stop() {
    if (this.recorder.state !== "inactive") { this.recorder.stop(); await this.stopped; }
    await this.tail;
    await api("POST", sessionPath(`/recording/${this.segment}/complete`), { json: { n_chunks: this.seq }, retries: 10 });
    $("rec-indicator").hidden = true;
  }
}

// ---------------------------------------------------------------- webcam preview with a face check
let generationTimer = null;

function updateGenerationStatus() {
  const ready = state.images_ready.length, n = state.n_images;
  const gen = state.generation;
  $("generation-status").textContent =
    gen && gen.status === "failed" ? "Image generation is delayed; the study team has been notified." :
    ready >= n ? `All ${n} images are ready.` : `Your images are being generated: ${ready} of ${n} ready.`;
}

async function pollState() {
  try { state = await api("GET", sessionPath()); } catch (_) { /* transient; next poll */ }
  return state;
}

async function showWebcam() {
  showPage("page-webcam", "webcam");
  updateGenerationStatus();
  clearInterval(generationTimer);
  generationTimer = setInterval(async () => { await pollState(); updateGenerationStatus(); }, 1500);
  const status = $("webcam-status");
  try {
    await startCamera();
    status.textContent = "Camera on. Center your face in the oval, then check.";
    status.className = "status";
  } catch (err) {
    status.textContent = `The camera could not be started: ${err.message || err.name}. Allow camera access for this page and reload.`;
    status.className = "status bad";
  }
}

async function snapshot() {
  const video = $("preview");
  const canvas = $("snapshot");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
}

$("webcam-check").addEventListener("click", async () => {
  const status = $("webcam-status");
  try {
    await startCamera();
    if (!$("preview").videoWidth) await sleep(500);
    status.textContent = "Checking…"; status.className = "status";
    const result = await api("POST", sessionPath("/webcam-check"), { body: await snapshot(), headers: { "Content-Type": "image/jpeg" } });
    state = result.state;
    status.textContent = result.message;
    status.className = "status " + (result.face ? "ok" : "bad");
    $("webcam-continue").disabled = state.step === "webcam";
  } catch (err) { fail(err); }
});

$("webcam-continue").addEventListener("click", async () => {
  $("webcam-continue").disabled = true;
  clearInterval(generationTimer);
  await route();
});

// ---------------------------------------------------------------- image presentation
async function imageUrl(index) {
  if (!imageUrls[index]) {
    const blob = await api("GET", sessionPath(`/images/${index}`));
    imageUrls[index] = URL.createObjectURL(blob);
  }
  return imageUrls[index];
}

async function waitForImage(index) {
  const text = $("stage-wait-text");
  while (!state.images_ready.includes(index)) {
    $("stage-wait").hidden = false;
    const gen = state.generation;
    text.textContent = gen && gen.status === "failed"
      ? "Image generation is delayed. Please wait; the study team has been notified."
      : `Generating images… ${state.images_ready.length} of ${state.n_images} ready`;
    await sleep(1000);
    await pollState();
  }
  $("stage-wait").hidden = true;
  const img = $("stage-image");
  img.src = await imageUrl(index);
  await img.decode();
}

async function ensureRecording() {
  if (recorder && recorder.recorder.state === "recording") return recorder;
  const stream = await startCamera();
  recorder = new SessionRecorder(stream);
  await recorder.start();
  return recorder;
}

async function presentImage(index) {
  showPage("page-stage", "images");
  $("stage-counter").textContent = `Image ${index} of ${state.n_images}`;
  $("stage-prompt").textContent = state.prompt;
  $("stage-image").hidden = true; $("stage-baseline").hidden = true;
  await waitForImage(index);
  const rec = await ensureRecording();

  $("stage-baseline").hidden = false;                              // baseline (Fig. S4)
  const baselineStart = await paintTime();
  rec.event(index, "baseline_start", baselineStart);
  await waitUntil(baselineStart + config.baseline_s * 1000);

  $("stage-baseline").hidden = true; $("stage-image").hidden = false; // present (Fig. S5)
  const shown = await paintTime();
  rec.event(index, "image_shown", shown);
  await waitUntil(shown + config.present_s * 1000);

  showSurvey(index);                                                 // annotate (Fig. S6)
  const hidden = await paintTime();
  // The image counts as presented once the video up to its end is on the server.
  saving = (async () => {
    await rec.flush();
    rec.event(index, "image_hidden", hidden);
    await rec.tail;
    if (rec.failed) throw rec.failed;
    if (index === state.n_images) { await rec.stop(); recorder = null; stopCamera(); }
  })();
}

let saving = Promise.resolve();

async function runImages() {
  if (state.image_phase === "survey") { saving = Promise.resolve(); showSurvey(state.current_image); return; }
  try { await presentImage(state.current_image); } catch (err) { fail(err); }
}

// ---------------------------------------------------------------- annotation survey (Fig. S6)
const ratings = {};

function buildSurvey() {
  document.querySelectorAll("fieldset.stars").forEach((fieldset) => {
    const name = fieldset.dataset.name;
    const row = document.createElement("div"); row.className = "star-row";
    const value = document.createElement("span"); value.className = "star-value";
    for (let v = 1; v <= 7; v++) {
      const input = document.createElement("input");
      input.type = "radio"; input.name = name; input.value = v; input.id = `${name}-${v}`;
      const label = document.createElement("label");
      label.htmlFor = input.id; label.textContent = "★"; label.title = `${v} of 7`;
      label.setAttribute("aria-label", `${v} of 7`);
      input.addEventListener("change", () => { ratings[name] = v; paintStars(fieldset, v); value.textContent = `${v} / 7`; });
      label.addEventListener("mouseenter", () => paintStars(fieldset, v));
      row.append(input, label);
    }
    row.addEventListener("mouseleave", () => paintStars(fieldset, ratings[name] || 0));
    row.append(value);
    fieldset.append(row);
  });
  for (const { key, label } of config.issues) $("issues-box").append(checkbox("issues", key, label));
  const chips = document.createElement("div"); chips.className = "chip-row";
  for (const emotion of config.emotions) chips.append(checkbox("emotions", emotion, emotion));
  $("emotions-box").append(chips);
}

function checkbox(name, value, text) {
  const label = document.createElement("label");
  const input = document.createElement("input");
  input.type = "checkbox"; input.name = name; input.value = value;
  const span = document.createElement("span"); span.textContent = text;
  label.append(input, span);
  return label;
}

function paintStars(fieldset, upto) {
  fieldset.querySelectorAll(".star-row label").forEach((label, i) => label.classList.toggle("on", i < upto));
}

let surveyIndex = null;

async function showSurvey(index) {
  surveyIndex = index;
  $("survey-form").reset();
  for (const key of Object.keys(ratings)) delete ratings[key];
  document.querySelectorAll("fieldset.stars").forEach((f) => { paintStars(f, 0); f.querySelector(".star-value").textContent = ""; });
  $("survey-error").hidden = true;
  $("survey-counter").textContent = `Image ${index} of ${state.n_images}`;
  $("survey-prompt").textContent = state.prompt;
  $("survey-submit").textContent = index < state.n_images ? "Next image" : "Continue to ranking";
  showPage("page-survey", "images");
  try { $("survey-image").src = await imageUrl(index); } catch (err) { fail(err); }
}

$("survey-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const missing = ["overall_rating", "alignment_rating", "fidelity_rating"].filter((k) => !ratings[k]);
  if (missing.length) {
    $("survey-error").textContent = "Please give all three star ratings (overall, alignment and fidelity).";
    $("survey-error").hidden = false;
    return;
  }
  const button = $("survey-submit");
  button.disabled = true;
  const label = button.textContent;
  button.textContent = "Saving…";
  try {
    await saving;
    const values = (name) => [...document.querySelectorAll(`input[name=${name}]:checked`)].map((i) => i.value);
    state = await api("PUT", sessionPath(`/images/${surveyIndex}/answer`), {
      json: { missing_elements: $("missing").value.trim(), ...ratings, issues: values("issues"), emotions: values("emotions") },
    });
    await route();
  } catch (err) { fail(err); } finally { button.disabled = false; button.textContent = label; }
});

// ---------------------------------------------------------------- ranking (Fig. S7)
let rankMethods = new Set();

function rankOrder() { return [...$("rank-list").children].map((li) => Number(li.dataset.image)); }

function renumber() {
  const items = [...$("rank-list").children];
  items.forEach((li, i) => {
    li.querySelector(".pos-label").textContent = i === 0 ? "1 · Best" : i === items.length - 1 ? `${i + 1} · Worst` : String(i + 1);
    li.setAttribute("aria-label", `Image ${li.dataset.image}, position ${i + 1} of ${items.length}`);
    li.querySelector(".left").disabled = i === 0;
    li.querySelector(".right").disabled = i === items.length - 1;
  });
}

function moveItem(li, delta, method) {
  const list = $("rank-list");
  const items = [...list.children];
  const to = items.indexOf(li) + delta;
  if (to < 0 || to >= items.length) return;
  if (delta < 0) list.insertBefore(li, items[to]); else list.insertBefore(li, items[to].nextSibling);
  rankMethods.add(method);
  renumber();
  li.focus();
  $("rank-live").textContent = `Image ${li.dataset.image} moved to position ${[...list.children].indexOf(li) + 1}`;
}

async function showRanking() {
  showPage("page-ranking", "ranking");
  const list = $("rank-list");
  list.replaceChildren();
  list.style.setProperty("--n", state.n_images);
  rankMethods = new Set();
  let dragged = null;
  for (let index = 1; index <= state.n_images; index++) {
    const li = document.createElement("li");
    li.className = "rank-item"; li.draggable = true; li.tabIndex = 0; li.dataset.image = index;
    const img = document.createElement("img"); img.alt = `Image ${index}`;
    const pos = document.createElement("div"); pos.className = "pos";
    const left = document.createElement("button"); left.type = "button"; left.className = "left"; left.textContent = "◀"; left.setAttribute("aria-label", "Move towards best");
    const right = document.createElement("button"); right.type = "button"; right.className = "right"; right.textContent = "▶"; right.setAttribute("aria-label", "Move towards worst");
    const label = document.createElement("span"); label.className = "pos-label";
    left.addEventListener("click", () => moveItem(li, -1, "keyboard"));
    right.addEventListener("click", () => moveItem(li, 1, "keyboard"));
    pos.append(left, label, right);
    li.append(img, pos);
    li.addEventListener("keydown", (e) => {
      if (e.target !== li) return;
      if (e.key === "ArrowLeft" || e.key === "ArrowUp") { e.preventDefault(); moveItem(li, -1, "keyboard"); }
      if (e.key === "ArrowRight" || e.key === "ArrowDown") { e.preventDefault(); moveItem(li, 1, "keyboard"); }
    });
    li.addEventListener("dragstart", (e) => { dragged = li; li.classList.add("dragging"); e.dataTransfer.effectAllowed = "move"; e.dataTransfer.setData("text/plain", String(index)); });
    li.addEventListener("dragend", () => { li.classList.remove("dragging"); list.querySelectorAll(".over").forEach((x) => x.classList.remove("over")); });
    li.addEventListener("dragover", (e) => { e.preventDefault(); if (li !== dragged) li.classList.add("over"); });
    li.addEventListener("dragleave", () => li.classList.remove("over"));
    li.addEventListener("drop", (e) => {
      e.preventDefault(); li.classList.remove("over");
      if (!dragged || dragged === li) return;
      const items = [...list.children];
      if (items.indexOf(dragged) < items.indexOf(li)) list.insertBefore(dragged, li.nextSibling); else list.insertBefore(dragged, li);
      rankMethods.add("drag");
      renumber();
    });
    list.append(li);
    imageUrl(index).then((url) => { img.src = url; }).catch(fail);
  }
  renumber();
}

$("rank-finish").addEventListener("click", async () => {
  const button = $("rank-finish");
  button.disabled = true;
  const method = rankMethods.size > 1 ? "mixed" : [...rankMethods][0] || "drag";
  try {
    state = await api("PUT", sessionPath("/ranking"), { json: { order: rankOrder(), method } });
    await route();
  } catch (err) { fail(err); } finally { button.disabled = false; }
});

// ---------------------------------------------------------------- done
function showDone() {
  showPage("page-done", "done");
  stopCamera();
  $("done-meta").textContent = `Participant ${state.participant_id} · session ${state.session_index} completed.`;
}

$("another").addEventListener("click", async () => {
  try {
    const payload = auth.invite ? { invite: auth.invite } : { participant_id: auth.participant };
    Object.keys(imageUrls).forEach((k) => { URL.revokeObjectURL(imageUrls[k]); delete imageUrls[k]; });
    Object.assign(form, { animate: [], inanimate: [], inter: [], pos: [] });
    document.querySelectorAll("#page-prompt-structured input").forEach((i) => { if (i.type !== "number") i.value = ""; });
    $("free-prompt").value = ""; $("generated-block").hidden = true; $("structured-prompt").value = "";
    $("consent-agree").checked = false; $("consent-share").checked = false;
    $("webcam-continue").disabled = true;
    await startSession(payload);
  } catch (err) { fail(err); }
});

boot();
