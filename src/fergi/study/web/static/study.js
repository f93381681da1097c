// The participant's side of the fergi study (paper Sec. 3, Supp. A). Plain JavaScript, no build step.
// One file of about 1,600 lines, on purpose: its 14 sections (the "// ----" lines) share the
// page's state (the session, the camera, the image on screen, the recordings still uploading),
// which classic scripts split in several files would share as implicit globals. The split
// worth making is into ES modules, one per section (docs/layout.md, "The participant's page").
"use strict";

const $ = (id) => document.getElementById(id);
const STORAGE_KEY = "fergi-study";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let config = null;   // GET /api/config
let state = null;    // GET /api/sessions/{id}
let auth = null;     // {sessionId, token, participant, invite}
let camera = null;   // MediaStream
const imageUrls = {}; // image index -> blob URL

// ---------------------------------------------------------------- utilities
class ApiError extends Error {
  constructor(status, detail, { code = null, fields = [], errors = null } = {}) {
    super(detail); this.status = status; this.detail = detail; this.code = code; this.fields = fields; this.errors = errors;
  }
}

function showBanner(message, kind = "error") {
  const banner = $("banner");
  banner.textContent = message;
  banner.className = "banner" + (kind === "info" ? " info" : kind === "warn" ? " warn" : "");
  banner.hidden = !message;
}

// An error answer as {detail, code, fields}: FastAPI sends {"detail": "text"} (the text may
// name its field first, "prompt: ..."), a list of validation errors ({loc, msg}) or an
// object ({code, message}); a code may also be top-level.
function errorInfo(body, fallback) {
  let detail = body && body.detail !== undefined ? body.detail : fallback;
  let code = (body && typeof body.code === "string" && body.code) || null;
  let fields = [];
  const named = typeof detail === "string" && /^([A-Za-z_][\w.]*): /.exec(detail);
  if (named) fields = [named[1].split(".").filter((x) => !/^\d+$/.test(x)).pop()];
  if (Array.isArray(detail)) {
    fields = detail.map((d) => (d.loc || []).filter((x) => typeof x === "string" && x !== "body").pop()).filter(Boolean);
    detail = detail.map((d) => (d.msg || JSON.stringify(d)).replace(/^Value error, /, "")).join("; ");
  } else if (detail && typeof detail === "object") {
    code = code || detail.code || null;
    if (typeof detail.field === "string") fields = [detail.field];
    detail = detail.message || detail.msg || JSON.stringify(detail);
  }
  // {detail, code, errors: [{group, index, field, item, message}]}: where each problem is
  const errors = body && Array.isArray(body.errors) ? body.errors : null;
  return { detail: String(detail), code, fields, errors };
}

const SERVER_PAUSED = "The study is paused on the server side; your recording is kept, please wait.";

// One request with retries: network failures, 5xx and 429 are retried with back-off
// (the participant sees a notice), 4xx answers are final and raised as ApiError.
// 507 (the server's disk is full) is retried without limit: nothing is lost by waiting,
// the page keeps what it has not uploaded yet.
async function api(method, path, { json, body, headers = {}, retries = 6 } = {}) {
  const opts = { method, headers: { ...headers } };
  if (auth && auth.token) opts.headers["X-Session-Token"] = auth.token;
  if (json !== undefined) { opts.body = JSON.stringify(json); opts.headers["Content-Type"] = "application/json"; }
  else if (body !== undefined) opts.body = body;
  let paused = 0;
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
      if (attempt > 0 || paused) showBanner("");
      const type = response.headers.get("content-type") || "";
      return type.includes("application/json") ? response.json() : response.blob();
    }
    let info = { detail: response.statusText, code: null, fields: [] };
    try { info = errorInfo(await response.json(), response.statusText); } catch (_) { /* not JSON */ }
    if (response.status === 507) {
      showBanner(SERVER_PAUSED, "warn");
      const wait = Math.min(30000, Number(response.headers.get("Retry-After")) * 1000 || 2000 * 2 ** Math.min(paused, 4));
      paused++; attempt--;
      await sleep(wait);
      continue;
    }
    if ((response.status >= 500 || response.status === 429) && attempt < retries) {
      const wait = Number(response.headers.get("Retry-After")) * 1000 || Math.min(8000, 500 * 2 ** attempt);
      await sleep(wait);
      continue;
    }
    if (paused) showBanner("");
    throw new ApiError(response.status, info.detail, info);
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

// A message next to a form field (an empty message removes it); it goes away once the
// participant changes the field.
function fieldError(id, message) {
  const input = $(id);
  let box = $(`${id}-error`);
  if (!box && message) {
    box = document.createElement("p");
    box.id = `${id}-error`; box.className = "field-error"; box.setAttribute("role", "alert");
    const next = input.nextElementSibling;
    (next && next.classList.contains("char-count") ? next : input).after(box);
    input.setAttribute("aria-describedby", box.id);
    input.addEventListener("input", () => fieldError(id, ""));
  }
  if (box) { box.textContent = message || ""; box.hidden = !message; }
  if (message) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
}

// Next to its field, a message needs no field name: "prompt: control character ..." reads
// "Control character ...".
function fieldMessage(detail) {
  const text = detail.replace(/^[A-Za-z_][\w.]*: /, "");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// A 422 about one of the listed fields goes next to that field; true when it did.
function showFieldError(err, fieldIds) {
  if (!(err instanceof ApiError) || err.status !== 422) return false;
  const key = Object.keys(fieldIds).find((name) => err.fields.includes(name)) || (Object.keys(fieldIds).length === 1 ? Object.keys(fieldIds)[0] : null);
  if (!key) return false;
  fieldError(fieldIds[key], fieldMessage(err.detail));
  $(fieldIds[key]).focus();
  return true;
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
      await reportLeftImage();
      // A finished session shows its thank-you page again: a reload is not a new session.
      await route(); return;
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
const PARTICIPANT_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/; // as the server (web/_state.py)
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
  const typed = $("participant-id").value.trim();
  // The browser's own "Please match the requested format" does not say what the format is.
  if (!auth.invite && !PARTICIPANT_ID.test(typed)) {
    fieldError("participant-id", typed
      ? "This ID has a character that is not allowed. Use only English letters (A–Z, a–z), digits (0–9), “-” or “_”, at most 32, starting with a letter or digit."
      : "Enter the participant ID you received from the study team.");
    $("participant-id").focus();
    return;
  }
  button.disabled = true;
  try {
    await startSession(auth.invite ? { invite: auth.invite } : { participant_id: typed });
  } catch (err) {
    if (!auth.invite && err instanceof ApiError && err.status === 403) {
      // invited elsewhere, or not registered: a refusal about this ID, next to it
      fieldError("participant-id", fieldMessage(err.detail)); $("participant-id").focus();
    } else if (auth.invite || !showFieldError(err, { participant_id: "participant-id" })) fail(err);
  } finally { button.disabled = false; }
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
// Prompts longer than the server's limit (data-max, MAX_PROMPT_CHARS in _routes_prompts.py)
// are refused with a visible count, never cut silently.
const charCount = (text) => [...text].length; // code points, as the server counts

function updateCounter(id) {
  const area = $(id), box = $(`${id}-count`), max = Number(area.dataset.max);
  const n = charCount(area.value);
  box.textContent = n > max ? `${n} / ${max} characters: ${n - max} too many` : `${n} / ${max} characters`;
  box.classList.toggle("over", n > max);
  area.classList.toggle("over", n > max);
}

// The prompt to send, or null after showing why it cannot be sent.
function checkedPrompt(id) {
  const prompt = $(id).value.trim(), max = Number($(id).dataset.max);
  if (!prompt) { fieldError(id, "Write a prompt first."); $(id).focus(); return null; }
  if (charCount(prompt) > max) { fieldError(id, `The prompt is limited to ${max} characters; please shorten it.`); $(id).focus(); return null; }
  return prompt;
}

for (const id of ["free-prompt", "structured-prompt"]) {
  $(id).addEventListener("input", () => updateCounter(id));
  updateCounter(id);
}

function showFree() {
  showPage("page-prompt-free", "prompt");
  $("example-prompt").textContent = config.example_prompt;
  $("free-prompt").focus();
}

$("free-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = checkedPrompt("free-prompt");
  if (prompt === null) return;
  try {
    state = await api("PUT", sessionPath("/prompt"), { json: { prompt } });
    await route();
  } catch (err) { if (!showFieldError(err, { prompt: "free-prompt" })) fail(err); }
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

function cell(row, text) {
  const td = row.insertCell(); td.textContent = text;
  // The column's name, shown before the value where a narrow screen stacks the cells.
  const head = row.closest("table").tHead.rows[0].cells[td.cellIndex];
  if (head) td.dataset.label = head.textContent;
  return td;
}

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

// The form's limits come from the server (GET api/config, structured_limits): what Add
// accepts here, "Generate prompt" accepts there.
const limits = () => config.structured_limits;

// A message next to a field, which gets the focus; false so that callers can `return`.
function refuse(id, message) { fieldError(id, message); $(id).focus(); return false; }

function checkText(id, what, max, { required = false } = {}) {
  const text = $(id).value.trim();
  if (required && !text) return refuse(id, `${what}: please enter one.`);
  if (charCount(text) > max) return refuse(id, `${what} has ${charCount(text)} characters; at most ${max} are allowed. Please shorten it.`);
  return true;
}

// A comma-separated list: at most `count` entries of at most `max` characters each.
function checkList(id, singular, plural, max, count) {
  const items = splitList($(id).value);
  if (items.length > count) return refuse(id, `At most ${count} ${plural} are allowed; you entered ${items.length}.`);
  const long = items.find((item) => charCount(item) > max);
  if (long) return refuse(id, `${singular} “${long}” has ${charCount(long)} characters; at most ${max} are allowed. Please shorten it (separate ${plural} with commas).`);
  return true;
}

function checkObject(prefix, kind) {
  const L = limits();
  if (form[kind].length >= L.objects) return refuse(`${prefix}-name`, `At most ${L.objects} objects of this kind are allowed.`);
  return checkText(`${prefix}-name`, "The name", L.name_chars, { required: true })
    && (prefix !== "an" || checkText("an-act", "The activity", L.text_chars))
    && checkList(`${prefix}-char`, "Characteristic", "characteristics", L.item_chars, L.characteristics);
}

// Other inputs are checked before the form is sent.
function checkOther() {
  const L = limits();
  return checkText("ot-loc", "The location", L.text_chars) && checkText("ot-style", "The style", L.text_chars)
    && checkList("ot-kw", "Keyword", "keywords", L.item_chars, L.keywords);
}

function structuredError(message) {
  const box = $("structured-error");
  box.textContent = message || "";
  box.hidden = !message;
}

// A message about the form goes away as soon as the participant changes the form.
$("page-prompt-structured").addEventListener("input", (event) => { if (event.target.id !== "structured-prompt") structuredError(""); });
$("page-prompt-structured").addEventListener("change", (event) => { if (event.target.id !== "structured-prompt") structuredError(""); });

$("an-add").addEventListener("click", () => {
  const name = $("an-name").value.trim();
  if (!checkObject("an", "animate")) return;
  form.animate.push({ uid: nextUid++, name, quantity: Math.max(1, Math.min(20, Number($("an-qty").value) || 1)), activity: $("an-act").value.trim(), characteristics: splitList($("an-char").value) });
  for (const id of ["an-name", "an-act", "an-char"]) $(id).value = "";
  $("an-qty").value = 1; structuredError(""); renderStructured(); $("an-name").focus();
});

$("in-add").addEventListener("click", () => {
  const name = $("in-name").value.trim();
  if (!checkObject("in", "inanimate")) return;
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
    if (form[key].length >= limits().relations) { refuse(`${prefix}-rel`, `At most ${limits().relations} relations of this kind are allowed.`); return; }
    if (!checkText(`${prefix}-rel`, "The relation", limits().relation_chars)) return;
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
  // The fields' own limits follow the server's too (typing stops where Add would refuse).
  const L = limits();
  for (const [ids, max] of [[["an-name", "in-name"], L.name_chars], [["an-act", "ot-loc", "ot-style"], L.text_chars], [["ir-rel", "pr-rel"], L.relation_chars]]) {
    for (const id of ids) $(id).maxLength = max;
  }
  renderStructured();
  setAttempts(state.attempts_left);
  const last = state.generated_prompts[state.generated_prompts.length - 1];
  if (last) { $("generated-block").hidden = false; $("structured-prompt").value = last.prompt; updateCounter("structured-prompt"); }
}

// "form.animate_objects.0.name: control character ..." reads
// "Animate object 1, name: Control character ...".
function structuredMessage(detail) {
  const kinds = { animate_objects: "Animate object", inanimate_objects: "Inanimate object", interactional_relations: "Interactional relation", positional_relations: "Positional relation" };
  const text = detail.replace(/^structured input: /, "");
  const m = /^form\.(\w+)(?:\.(\d+)(?:\.(\w+))?)?: (.*)$/.exec(text);
  if (!m) return text;
  const [, group, index, field, rest] = m;
  const where = kinds[group] ? `${kinds[group]} ${Number(index) + 1}${field ? ", " + field : ""}` : group;
  return `${where.charAt(0).toUpperCase() + where.slice(1)}: ${rest.charAt(0).toUpperCase() + rest.slice(1)}`;
}

// A 422 of "Generate prompt" names the row (and field) of each problem: the message goes
// under that row of its table, which is scrolled into view and focused.
const GROUP_TABLES = { animate_objects: "an-table", inanimate_objects: "in-table", interactional_relations: "ir-table", positional_relations: "pr-table" };
const OTHER_FIELDS = { location: "ot-loc", style: "ot-style", keywords: "ot-kw" };

function clearRowErrors() {
  document.querySelectorAll("#page-prompt-structured tr.row-error").forEach((tr) => tr.remove());
  document.querySelectorAll("#page-prompt-structured tr.has-error").forEach((tr) => tr.classList.remove("has-error"));
}

function showFormErrors(errors) {
  clearRowErrors();
  let first = null;
  for (const e of errors) {
    const table = e.group && GROUP_TABLES[e.group];
    const row = table && e.index !== null && $(table).tBodies[0].rows[e.index];
    if (row) {
      row.classList.add("has-error");
      const tr = document.createElement("tr"); tr.className = "row-error";
      const td = tr.insertCell(); td.colSpan = row.cells.length; td.textContent = e.message;
      td.setAttribute("role", "alert"); td.tabIndex = -1; td.className = "field-error";
      row.after(tr);
      first = first || td;
    } else if (!e.group && OTHER_FIELDS[e.field]) {
      fieldError(OTHER_FIELDS[e.field], e.message);
      first = first || $(OTHER_FIELDS[e.field]);
    } else {
      structuredError(e.message);
      first = first || $("structured-error");
    }
  }
  if (first) {
    if (first.tabIndex < 0 && !first.hasAttribute("tabindex")) first.tabIndex = -1;
    first.scrollIntoView({ block: "center" });
    first.focus({ preventScroll: true });
  }
  return Boolean(first);
}

$("generate-prompt").addEventListener("click", async () => {
  const button = $("generate-prompt");
  structuredError(""); clearRowErrors();
  if (!checkOther()) return;
  button.disabled = true;
  try {
    const result = await api("POST", sessionPath("/prompt/generate"), { json: { form: formPayload() } });
    $("generated-block").hidden = false;
    $("structured-prompt").value = result.prompt;
    updateCounter("structured-prompt"); fieldError("structured-prompt", "");
    setAttempts(result.attempts_left);
    $("structured-prompt").focus();
  } catch (err) {
    if (err instanceof ApiError && err.status === 422 && err.errors && err.errors.length) showFormErrors(err.errors);
    else if (err instanceof ApiError && err.status === 422) structuredError(structuredMessage(err.detail));
    else fail(err);
    button.disabled = false;
  }
});

$("structured-continue").addEventListener("click", async () => {
  const prompt = checkedPrompt("structured-prompt");
  if (prompt === null) return;
  try {
    state = await api("PUT", sessionPath("/prompt"), { json: { prompt } });
    await route();
  } catch (err) { if (!showFieldError(err, { prompt: "structured-prompt" })) fail(err); }
});

// ---------------------------------------------------------------- camera: start, watch, lose, re-acquire
// The camera is watched all the time: its track ending or muting, and (while an image is
// recorded) no new frame for CAMERA_STALL_MS, count as a lost camera. The server calls a
// clip invalid after more than clip_max_still_s (1 s) without a new frame; a shorter
// limit here, checked every 100 ms, shows every such image again.
const CAMERA_STALL_MS = 800;
let cameraLost = null;      // why the current camera stopped ("ended", "muted", "stalled"), null while it works
let cameraStarting = null;  // the getUserMedia call in flight
let lastFrameAt = 0;        // performance.now() when the clock video last got a frame
let lastCaptureAt = 0;      // that frame's capture time (same clock)
let framesSeen = 0;
let watchingStalls = false; // true while an image is being recorded
const cameraListeners = new Set(); // called with the reason when the camera is lost

function cameraProblem(err) {
  switch (err && err.name) {
    case "NotFoundError": case "DevicesNotFoundError": case "OverconstrainedError":
      return "No camera was found. Connect a webcam and press Retry.";
    case "NotAllowedError": case "PermissionDeniedError": case "SecurityError":
      return "Camera access is blocked. Allow the camera for this page (the camera icon in the address bar), then press Retry.";
    case "NotReadableError": case "TrackStartError": case "AbortError":
      return "The camera is in use by another program or could not be started. Close the other program, then press Retry.";
    default:
      return `The camera could not be started (${(err && (err.message || err.name)) || err}). Press Retry.`;
  }
}

function lossText(reason) {
  return reason === "ended"
    ? "The camera stopped: it may have been unplugged, or access to it was turned off."
    : "The camera stopped sending pictures.";
}

const cameraLive = () => Boolean(camera && !cameraLost && camera.getVideoTracks().some((t) => t.readyState === "live"));

function startCamera() {
  if (cameraLive()) return Promise.resolve(camera);
  if (!cameraStarting) cameraStarting = openCamera().finally(() => { cameraStarting = null; });
  return cameraStarting;
}

async function openCamera() {
  stopCamera();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error("this browser cannot use a webcam; please use a recent Chrome, Edge or Firefox");
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } }, audio: false });
  camera = stream; cameraLost = null; lastFrameAt = performance.now();
  for (const id of ["preview", "clock-video"]) { $(id).srcObject = stream; $(id).play().catch(() => {}); }
  watchCamera(stream);
  return stream;
}

function stopCamera() {
  const old = camera;
  camera = null; cameraLost = null;
  if (old) old.getTracks().forEach((t) => t.stop());
  updateRecIndicator();
}

function watchCamera(stream) {
  const track = stream.getVideoTracks()[0];
  track.addEventListener("ended", () => loseCamera(stream, "ended"));
  track.addEventListener("mute", () => loseCamera(stream, "muted"));
  const video = $("clock-video");
  if (!video.requestVideoFrameCallback) return;
  const onFrame = (now, meta) => {
    if (camera !== stream) return;
    lastFrameAt = performance.now(); framesSeen++;
    lastCaptureAt = meta.captureTime ?? meta.presentationTime ?? now;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

function loseCamera(stream, reason) {
  if (camera !== stream || cameraLost) return;
  cameraLost = reason;
  console.warn(`fergi: camera lost (${reason})`);
  updateRecIndicator();
  for (const listener of [...cameraListeners]) listener(reason);
}

// Frames the camera delivered (MediaStreamTrack stats, where the browser has them): these
// count even when the page cannot paint (a busy computer), unlike frame callbacks.
function trackFrames() {
  const track = camera && camera.getVideoTracks()[0];
  const stats = track && track.stats;
  return stats && typeof stats.totalFrames === "number" ? stats.totalFrames : null;
}

// The watchdog. A track stopped by the page itself fires no "ended" event, hence the
// readyState check; a page that was frozen (a busy computer) cannot judge frames, so it
// waits a little after such a pause before calling the camera stalled.
let lastTick = performance.now(), stallGraceUntil = 0, lastTrackFrames = null, lastTrackFrameAt = 0;
setInterval(() => {
  const now = performance.now();
  const late = now - lastTick > 750;
  lastTick = now;
  if (!camera || cameraLost) return;
  if (!camera.getVideoTracks().some((t) => t.readyState === "live")) { loseCamera(camera, "ended"); return; }
  const frames = trackFrames();
  if (frames !== lastTrackFrames) { lastTrackFrames = frames; lastTrackFrameAt = now; }
  if (late) { stallGraceUntil = now + 500; return; }
  if (!watchingStalls || now <= stallGraceUntil) return;
  const since = frames !== null ? now - Math.max(lastTrackFrameAt, lastFrameAt)
    : $("clock-video").requestVideoFrameCallback ? now - lastFrameAt : 0;
  if (since > CAMERA_STALL_MS) loseCamera(camera, "stalled");
}, 100);

// Resolves true once a frame captured at or after time t (performance.now() clock) arrived.
// Where frame callbacks lag (a busy computer), frames the track delivered meanwhile count.
async function frameAfter(t, timeoutMs) {
  if (!$("clock-video").requestVideoFrameCallback) return cameraLive();
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < t) await sleep(10);
  const framesAtT = trackFrames();
  while (lastCaptureAt < t) {
    if (cameraLost) return false;
    if (performance.now() > deadline) {
      const frames = trackFrames();
      return frames !== null && framesAtT !== null && frames > framesAtT && cameraLive();
    }
    await sleep(20);
  }
  return true;
}

// A freshly opened camera counts once it delivers pictures.
async function framesArrive(timeoutMs) {
  if (!$("clock-video").requestVideoFrameCallback) return cameraLive();
  const start = framesSeen, startTrack = trackFrames(), deadline = performance.now() + timeoutMs;
  while (framesSeen < start + 3 && !(startTrack !== null && trackFrames() >= startTrack + 3)) {
    if (cameraLost || performance.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}

// Camera access granted later (in the browser's site settings): try again at once.
if (navigator.permissions && navigator.permissions.query) {
  navigator.permissions.query({ name: "camera" }).then((status) => {
    status.addEventListener("change", () => {
      if (status.state !== "granted") return;
      for (const id of ["pause-retry", "webcam-retry"]) if (!$(id).hidden && $(id).offsetParent !== null) $(id).click();
    });
  }).catch(() => { /* not supported for "camera" in this browser */ });
}

// ---------------------------------------------------------------- recording: one segment per image
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

let activeRecorder = null; // the SegmentRecorder recording now, if any

// The "Recording" sign is on exactly while a recorder records a working camera.
function updateRecIndicator() {
  const r = activeRecorder;
  $("rec-indicator").hidden = !(r && r.recorder && r.recorder.state === "recording" && cameraLive());
}

// A recording the server cannot take: badStart when it refused chunk 0 as a stream start,
// fatal when starting again cannot help (a size limit).
class RecordingFailed extends Error {
  constructor(message, { badStart = false, fatal = false } = {}) { super(message); this.badStart = badStart; this.fatal = fatal; }
}

// ---------------------------------------------------------------- uplink and upload progress
// The recorder's bitrate follows the measured uplink, so that a slow connection keeps up
// with the recording instead of piling up megabytes behind it (VP9 at 2.5 Mbit/s is
// about 2 MB an image). Each upload's throughput is a sample; the estimate is their
// exponentially weighted mean.
const MIN_BITRATE = 600000, MAX_BITRATE = 2500000;
let uplinkBps = null;

function measureUplink(bytes, ms) {
  if (!(bytes > 0) || !(ms > 0)) return;
  const sample = (bytes * 8) / (ms / 1000);
  uplinkBps = uplinkBps === null ? sample : 0.6 * uplinkBps + 0.4 * sample;
}

// 80 % of the uplink (room for the other requests), between 0.6 and 2.5 Mbit/s.
function pickBitrate() {
  if (uplinkBps === null) return MAX_BITRATE;
  return Math.round(Math.max(MIN_BITRATE, Math.min(MAX_BITRATE, 0.8 * uplinkBps)));
}

// Recordings still uploading (an image's video finishes in the background while its
// survey is answered): the survey and the ranking page say how far along they are.
const uploading = new Set();

function uploadProgress() {
  let total = 0, sent = 0;
  for (const rec of uploading) { total += rec.bytesQueued; sent += rec.bytesSent; }
  return { pending: uploading.size > 0, percent: total ? Math.floor((100 * sent) / total) : 0 };
}

function updateUploadStatus() {
  const { pending, percent } = uploadProgress();
  for (const id of ["survey-upload", "rank-upload"]) {
    const box = $(id);
    if (!box) continue;
    box.hidden = !pending;
    if (pending) box.textContent = `Uploading your recording (${percent} %)… You can go on meanwhile.`;
  }
}

// Resolves once every recording is on the server (the ranking waits for this).
async function uploadsDone() {
  while (uploading.size) {
    await Promise.allSettled([...uploading].map((rec) => rec.finished));
  }
}

// One MediaRecorder stream = one server segment (one image: its baseline and presentation).
class SegmentRecorder {
  constructor(stream, onFailure) {
    this.stream = stream;
    this.onFailure = onFailure;
    this.seq = 0;
    this.tail = Promise.resolve();      // chunk uploads, in order
    this.eventTail = Promise.resolve(); // events, in order (independent of the chunks)
    this.failed = null;
    this.dropped = false;
    this.bytesQueued = 0;
    this.bytesSent = 0;
  }

  async start() {
    const mimeType = pickMimeType();
    const settings = this.stream.getVideoTracks()[0].getSettings();
    const seg = await api("POST", sessionPath("/recording/segments"), { json: { mime_type: mimeType, width: settings.width || null, height: settings.height || null } });
    this.segment = seg.segment;
    if (this.dropped || this.closing) return; // the take ended while the segment was opened
    this.bitrate = pickBitrate();
    console.info(`fergi: recording at ${(this.bitrate / 1e6).toFixed(2)} Mbit/s (uplink ${uplinkBps === null ? "not measured" : (uplinkBps / 1e6).toFixed(2) + " Mbit/s"})`);
    this.recorder = new MediaRecorder(this.stream, { mimeType, videoBitsPerSecond: this.bitrate });
    this.recorder.ondataavailable = (event) => {
      if (event.data && event.data.size > 0) this.enqueueChunk(event.data);
    };
    this.stopped = new Promise((resolve) => { this.recorder.onstop = resolve; });
    const startedAt = performance.now();
    this.recorder.start(config.chunk_ms);
    activeRecorder = this;
    updateRecIndicator();
    this.t0 = await firstFrameTime($("clock-video"), startedAt);
  }

  videoTime(t) { return Math.max(0, (t - this.t0) / 1000); }

  // Chunk uploads go through one serial queue: order on the server = order here.
  // After a failure nothing more is sent: the server would refuse it.
  enqueue(task) {
    this.tail = this.tail.then(() => (this.failed || this.dropped ? undefined : task())).catch((err) => this.fail(err));
    return this.tail;
  }

  fail(err) {
    if (this.failed || this.dropped) return;
    this.failed = err instanceof RecordingFailed ? err : new RecordingFailed(err.detail || err.message || String(err));
    this.onFailure(this.failed);
  }

  enqueueChunk(blob) {
    const seq = this.seq++;
    this.bytesQueued += blob.size;
    updateUploadStatus();
    return this.enqueue(async () => {
      await this.upload(seq, blob);
      this.bytesSent += blob.size;
      updateUploadStatus();
    });
  }

  async upload(seq, blob) {
    const path = sessionPath(`/recording/${this.segment}/chunks/${seq}`);
    for (let attempt = 0; ; attempt++) {
      if (this.dropped) return;
      try {
        const began = performance.now();
        await api("PUT", path, { body: blob, headers: { "Content-Type": "video/webm" }, retries: 2 });
        measureUplink(blob.size, performance.now() - began);
        if (attempt > 0) showBanner(""); // the connection is back
        return;
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        if (seq === 0 && (err.code === "bad_stream_start" || err.status === 415)) {
          // Every later chunk would be refused too: a new segment with a new header is needed.
          throw new RecordingFailed(`segment ${this.segment}: ${err.detail}`, { badStart: true });
        }
        if (err.status === 409) {
          // The server may already hold it (a response lost on the way back).
          const info = await api("GET", sessionPath(`/recording/${this.segment}`));
          if (info.next_seq > seq) return;
          throw new RecordingFailed(err.detail);
        }
        if (err.status === 413) throw new RecordingFailed(err.detail, { fatal: true });
        if (err.status >= 400 && err.status < 500 && err.status !== 429) throw new RecordingFailed(err.detail);
        // No connection, or the server busy: the chunk stays here and is sent again.
        showBanner("Connection problem — your recording is kept and will be uploaded when the connection is back.", "info");
        await sleep(Math.min(10000, 1000 * 2 ** attempt));
      }
    }
  }

  // Events have their own queue: a slow upload never delays them. A refused event
  // makes the take fail (the image would not count as presented), except an
  // interruption report, which is only information.
  event(imageIndex, kind, t, reason = null) {
    const payload = { segment: this.segment, image_index: imageIndex, kind, video_time: this.videoTime(t) };
    if (reason) payload.reason = reason;
    // resolves true once the event is on the server, false when it was refused
    const sent = this.eventTail.then(() => api("POST", sessionPath("/events"), { json: payload, retries: 20 })).then(() => true, (err) => {
      if (reason) console.warn(`fergi: interruption of image ${imageIndex} not recorded:`, err.message || err);
      else this.fail(err);
      return false;
    });
    this.eventTail = sent;
    return sent;
  }

  release() {
    if (activeRecorder === this) activeRecorder = null;
    updateRecIndicator();
  }

  // Stop recording now; `finished` resolves once every chunk is on the server and the
  // segment is complete (it runs on in the background, shown as upload progress).
  stop() {
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
    this.release();
    uploading.add(this);
    updateUploadStatus();
    this.finished = (async () => {
      try {
        if (this.recorder) await this.stopped; // the last dataavailable comes before onstop
        await this.tail;
        if (this.failed) throw this.failed;
        try {
          await api("POST", sessionPath(`/recording/${this.segment}/complete`), { json: { n_chunks: this.seq }, retries: 10 });
        } catch (err) {
          if (err instanceof ApiError && err.status >= 400 && err.status < 500) throw new RecordingFailed(err.detail);
          throw err;
        }
      } finally {
        uploading.delete(this);
        updateUploadStatus();
      }
    })();
    return this.finished;
  }

  // The camera was lost: keep what was recorded (upload it, complete the segment) in the
  // background; the image is shown again in a new segment.
  finishQuietly() {
    this.closing = true;
    this.release();
    return (async () => {
      try {
        if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
        if (this.recorder) await Promise.race([this.stopped, sleep(5000)]);
        await this.tail;
        if (!this.failed && !this.dropped && this.segment !== undefined && this.seq > 0) {
          await api("POST", sessionPath(`/recording/${this.segment}/complete`), { json: { n_chunks: this.seq }, retries: 3 });
        }
      } catch (err) { console.warn("fergi: an interrupted segment stays incomplete:", err.message || err); }
    })();
  }

  // The segment cannot be completed (a refused stream start): send nothing more.
  drop() {
    this.dropped = true;
    try { if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop(); } catch (_) { /* already stopped */ }
    this.release();
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

function webcamStatus(text, kind = "") {
  $("webcam-status").textContent = text;
  $("webcam-status").className = "status" + (kind ? " " + kind : "");
}

// Start the camera for the preview; on failure say why in plain words and offer Retry.
async function webcamStart() {
  $("webcam-retry").hidden = true;
  webcamStatus("Starting the camera…");
  try {
    await startCamera();
  } catch (err) {
    webcamStatus(cameraProblem(err), "bad");
    $("webcam-retry").hidden = false;
    $("webcam-check").disabled = true;
    return false;
  }
  // An earlier camera error must not stay on screen once the camera works.
  showBanner("");
  $("webcam-check").disabled = false;
  webcamStatus("Camera on. Center your face in the oval, then check.");
  return true;
}

cameraListeners.add((reason) => {
  if ($("page-webcam").hidden) return;
  webcamStatus(`${lossText(reason)} Press Retry.`, "bad");
  $("webcam-retry").hidden = false;
  $("webcam-continue").disabled = true;
});

async function showWebcam() {
  showPage("page-webcam", "webcam");
  updateGenerationStatus();
  clearInterval(generationTimer);
  generationTimer = setInterval(async () => { await pollState(); updateGenerationStatus(); }, 1500);
  await webcamStart();
}

async function snapshot() {
  const video = $("preview");
  const canvas = $("snapshot");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
}

$("webcam-retry").addEventListener("click", webcamStart);

$("webcam-check").addEventListener("click", async () => {
  if (!cameraLive() && !(await webcamStart())) return;
  try {
    if (!$("preview").videoWidth) await sleep(500);
    webcamStatus("Checking…");
    const shot = await snapshot(), began = performance.now();
    const result = await api("POST", sessionPath("/webcam-check"), { body: shot, headers: { "Content-Type": "image/jpeg" } });
    // A first guess of the uplink: the time includes the server's face check, so it errs
    // low and only a slow one counts (a fast link then records its first image at the
    // full bitrate); the chunks of each recording refine it.
    const guess = (shot.size * 8) / ((performance.now() - began) / 1000);
    if (uplinkBps === null && guess < 1500000) measureUplink(shot.size, performance.now() - began);
    state = result.state;
    webcamStatus(result.message, result.face ? "ok" : "bad");
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

// A presentation that has to start again from its baseline: kind "camera" (lost),
// "hidden" (the page went into the background), "recording" (the server refused the segment).
class Interrupted extends Error {
  constructor(kind, message) { super(message); this.kind = kind; }
}

// One attempt at presenting an image: anything that makes its recording unusable aborts it.
class Take {
  constructor() {
    this.reason = null;
    this.blankedAt = null;
    this.aborted = new Promise((_, reject) => { this.abort = reject; });
    this.aborted.catch(() => { /* handled by whoever guards */ });
    this.onCamera = (reason) => this.stop(new Interrupted("camera", lossText(reason)));
    this.onVisibility = () => {
      // (a page being left is reported by pagehide, with how it was left)
      if (document.hidden && !pageLeaving) this.stop(new Interrupted("hidden", "The study page went into the background while an image was on screen."));
    };
    cameraListeners.add(this.onCamera);
    document.addEventListener("visibilitychange", this.onVisibility);
  }

  // Nothing of the image may stay on screen under a pause: it is blanked at once, in
  // the same task that notices the problem, before any dialog appears.
  stop(err) {
    if (this.reason) return;
    this.reason = err;
    if (!this.imageDone) {
      $("stage-image").hidden = true; $("stage-baseline").hidden = true;
      this.blankedAt = performance.now();
    }
    this.abort(err);
  }

  guard(promise) { return Promise.race([promise, this.aborted]); }

  close() {
    cameraListeners.delete(this.onCamera);
    document.removeEventListener("visibilitychange", this.onVisibility);
  }
}

// Why a presentation ended early, as the server records it.
function interruptReason(err) {
  if (err instanceof Interrupted) return { camera: "camera", hidden: "hidden", recording: "recording" }[err.kind] || "camera";
  return "network";
}

// The take whose image is on screen now: a page left meanwhile reports it (pagehide).
let onScreen = null; // {rec, index}
let pageLeaving = false;

// Baseline, image, then the survey; resolves once the image's three events are on the
// server. Recording runs only during baseline and image; the video finishes uploading
// in the background while the survey is answered.
async function presentOnce(index) {
  showPage("page-stage", "images");
  $("stage-counter").textContent = `Image ${index} of ${state.n_images}`;
  $("stage-prompt").textContent = state.prompt;
  $("stage-image").hidden = true; $("stage-baseline").hidden = true;
  await waitForImage(index);
  while (document.hidden) await new Promise((resolve) => document.addEventListener("visibilitychange", resolve, { once: true }));
  let stream;
  try { stream = await startCamera(); } catch (err) { throw new Interrupted("camera", cameraProblem(err)); }
  const take = new Take();
  const rec = new SegmentRecorder(stream, (err) => take.stop(err));
  let hidden = null;
  try {
    if (cameraLost) throw new Interrupted("camera", lossText(cameraLost));
    watchingStalls = true;
    await take.guard(rec.start());

    $("stage-baseline").hidden = false;                              // baseline (Fig. S4)
    const baselineStart = await take.guard(paintTime());
    rec.event(index, "baseline_start", baselineStart);
    await take.guard(waitUntil(baselineStart + config.baseline_s * 1000));

    if (take.reason) throw take.reason;
    $("stage-baseline").hidden = true; $("stage-image").hidden = false; // present (Fig. S5)
    const shown = await take.guard(paintTime());
    take.shown = true;
    onScreen = { rec, index };
    rec.event(index, "image_shown", shown);
    await take.guard(waitUntil(shown + config.present_s * 1000));

    if (take.reason) throw take.reason;
    take.imageDone = true;
    onScreen = null;
    rec.release();                                                     // "Recording" goes with the image
    showSurvey(index);                                                 // annotate (Fig. S6)
    hidden = await paintTime();
    // The clip must reach the end of the presentation: wait for a frame captured after it.
    if (!(await take.guard(frameAfter(hidden + 100, CAMERA_STALL_MS + 500)))) {
      throw new Interrupted("camera", lossText(cameraLost || "stalled"));
    }
    watchingStalls = false;
    take.close(); // a camera lost from now on concerns the next image, not this one
    finishImage(rec, index, hidden);
  } catch (caught) {
    let err = caught;
    watchingStalls = false;
    take.close();
    onScreen = null;
    if (take.imageDone && hidden !== null && !(err instanceof RecordingFailed && err.fatal)) {
      // The image was seen in full: showing it again would be a second look. What was
      // recorded stands; the server judges the clip (a missing end makes it invalid).
      console.warn(`fergi: image ${index}: the camera stopped after the image (${err.message || err}); not shown again`);
      finishImage(rec, index, hidden);
      await rec.hiddenPosted;
      return;
    }
    if (!(err instanceof Interrupted) && cameraLost) err = new Interrupted("camera", lossText(cameraLost));
    if (err instanceof RecordingFailed && !err.fatal) err = new Interrupted("recording", err.message);
    if (take.shown && !pageLeaving) {
      // The image was on screen: its replay will be a later exposure, with these seconds seen.
      // (A page being left has reported it already, from pagehide: its uploads failing now
      // are the leave's symptom, not a recording fault.)
      rec.event(index, "image_interrupted", take.blankedAt || performance.now(), interruptReason(err));
    }
    // A refused segment is given up; an interrupted one keeps what it recorded.
    if (err instanceof Interrupted && err.kind !== "recording") rec.finishQuietly(); else rec.drop();
    throw err;
  }
  // Refused (rare: the segment was abandoned): the image does not count as presented.
  if (!(await rec.hiddenPosted)) throw new Interrupted("recording", (rec.failed && rec.failed.message) || "the end of the image was not recorded");
}

// The image was presented: its end is on record at once, and its video goes on
// uploading in the background (a failure then costs this clip, never a second look).
function finishImage(rec, index, hidden) {
  rec.stop().catch((err) => console.warn(`fergi: the recording of image ${index} did not finish uploading:`, err.message || err));
  rec.hiddenPosted = rec.event(index, "image_hidden", hidden);
}

// A page left (reload, Back, closed) while an image is on screen: the interruption is
// kept here and sent with the page's last request; the next page load says how it was left.
const LEFT_KEY = "fergi-study-left";
window.addEventListener("pageshow", () => { pageLeaving = false; }); // back from the cache
window.addEventListener("pagehide", () => {
  pageLeaving = true;
  if (!onScreen || !auth || !auth.token) return;
  const { rec, index } = onScreen;
  if (rec.segment === undefined || rec.t0 === undefined) return;
  const payload = { segment: rec.segment, image_index: index, kind: "image_interrupted", video_time: rec.videoTime(performance.now()), reason: "left" };
  try { localStorage.setItem(LEFT_KEY, JSON.stringify({ sessionId: auth.sessionId, payload })); } catch (_) { /* storage full */ }
  try {
    fetch(sessionPath("/events"), { method: "POST", keepalive: true, body: JSON.stringify(payload),
      headers: { "Content-Type": "application/json", "X-Session-Token": auth.token } });
  } catch (_) { /* the page is going away */ }
});

// After a reload or Back: the image left on screen is reported with how the page was left.
async function reportLeftImage() {
  let left = null;
  try { left = JSON.parse(localStorage.getItem(LEFT_KEY) || "null"); } catch (_) { left = null; }
  localStorage.removeItem(LEFT_KEY);
  if (!left || !auth || left.sessionId !== auth.sessionId) return;
  const nav = (performance.getEntriesByType && performance.getEntriesByType("navigation")[0]) || {};
  const reason = nav.type === "reload" ? "reload" : nav.type === "back_forward" ? "back" : "left";
  try { await api("POST", sessionPath("/events"), { json: { ...left.payload, reason }, retries: 3 }); }
  catch (err) { console.warn("fergi: the interrupted image could not be reported:", err.message || err); }
}

const clicked = (button) => new Promise((resolve) => button.addEventListener("click", resolve, { once: true }));

// The study waits here until the camera works again and the participant is ready.
async function pauseStudy(index, interruption) {
  const retry = $("pause-retry"), cont = $("pause-continue"), status = $("pause-status");
  $("pause-text").textContent = `${interruption.message} Image ${index} will be shown again from the start.`;
  retry.hidden = true; cont.hidden = true;
  status.textContent = ""; status.className = "status";
  $("pause").hidden = false;
  if (interruption.kind === "camera") {
    stopCamera(); // a lost camera is opened again from scratch
    for (;;) {
      status.textContent = "Starting the camera again…"; status.className = "status";
      try {
        await startCamera();
        if (!(await framesArrive(3000))) throw new Error("the camera is on but sends no picture");
        break;
      } catch (err) {
        stopCamera();
        status.textContent = cameraProblem(err); status.className = "status bad";
        retry.hidden = false; retry.focus();
        await clicked(retry);
        retry.hidden = true;
      }
    }
    status.textContent = "The camera works again."; status.className = "status ok";
  }
  cont.hidden = false; cont.focus();
  await clicked(cont);
  $("pause").hidden = true;
}

const MAX_FAILED_TAKES = 5;

// Present an image until one take of it is fully on record.
async function presentImage(index) {
  for (let failed = 0; ;) {
    try {
      await presentOnce(index);
      return;
    } catch (err) {
      if (!(err instanceof Interrupted)) throw err;
      console.warn(`fergi: image ${index} is shown again (${err.kind}: ${err.message})`);
      if (err.kind === "recording") {
        if (++failed >= MAX_FAILED_TAKES) throw new Error(`the recording could not be saved (${err.message}). Please reload the page`);
        showBanner(`The recording had to restart; image ${index} is shown again from the start.`, "info");
      } else {
        await pauseStudy(index, err);
      }
    }
  }
}

let saving = Promise.resolve();

async function runImages() {
  if (state.image_phase === "survey") { saving = Promise.resolve(); showSurvey(state.current_image); return; }
  saving = presentImage(state.current_image);
  saving.catch(fail);
}

// ---------------------------------------------------------------- annotation survey (Fig. S6)
const ratings = {};
const RATINGS = ["overall_rating", "alignment_rating", "fidelity_rating"];

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
      input.addEventListener("change", () => {
        ratings[name] = v; paintStars(fieldset, v); value.textContent = `${v} / 7`;
        if (RATINGS.every((k) => ratings[k])) $("survey-error").hidden = true; // fixed: the message goes
      });
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
  // Shown again for the same image (its presentation was repeated): keep the answers.
  if (surveyIndex !== index) {
    $("survey-form").reset();
    for (const key of Object.keys(ratings)) delete ratings[key];
    document.querySelectorAll("fieldset.stars").forEach((f) => { paintStars(f, 0); f.querySelector(".star-value").textContent = ""; });
    $("survey-error").hidden = true;
    fieldError("missing", "");
  }
  surveyIndex = index;
  $("survey-counter").textContent = `Image ${index} of ${state.n_images}`;
  $("survey-prompt").textContent = state.prompt;
  $("survey-submit").textContent = index < state.n_images ? "Next image" : "Continue to ranking";
  showPage("page-survey", "images");
  try { $("survey-image").src = await imageUrl(index); } catch (err) { fail(err); }
}

$("survey-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const missing = RATINGS.filter((k) => !ratings[k]);
  if (missing.length) {
    $("survey-error").textContent = "Please give all three star ratings (overall, alignment and fidelity).";
    $("survey-error").hidden = false;
    return;
  }
  const button = $("survey-submit");
  button.disabled = true;
  try {
    // The image's end is on record within a moment of the survey appearing; its video
    // may still be uploading, which the survey never waits for.
    await saving;
    const values = (name) => [...document.querySelectorAll(`input[name=${name}]:checked`)].map((i) => i.value);
    state = await api("PUT", sessionPath(`/images/${surveyIndex}/answer`), {
      json: { missing_elements: $("missing").value.trim(), ...ratings, issues: values("issues"), emotions: values("emotions") },
    });
    await route();
  } catch (err) {
    if (err instanceof ApiError && err.status === 422) {
      if (err.fields.includes("missing_elements")) { fieldError("missing", fieldMessage(err.detail)); $("missing").focus(); }
      else { $("survey-error").textContent = err.detail; $("survey-error").hidden = false; }
    } else fail(err);
  } finally { button.disabled = false; }
});

// ---------------------------------------------------------------- ranking (Fig. S7)
// Mouse: drag and drop. Touch and pen: drag with Pointer Events. Any pointer: tap an
// image, then tap the place it should go. Keyboard: arrow keys or the ◀ ▶ buttons.
let rankMethods = new Set();
let rankSelected = null;
let touchDrag = null;
// The item a touch ended on: the click the browser may add (late, or never when it
// waits for a double tap) is not a second tap.
let touchHandled = null;

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

// The instructions follow the layout: one row reads left to right; wrapped rows read
// like text, row by row, and the Best/Worst ends over the row would point at the wrong images.
function updateRankLayout() {
  const items = [...$("rank-list").children];
  if (!items.length) return;
  const wrapped = items[items.length - 1].offsetTop > items[0].offsetTop + 2;
  $("rank-ends").hidden = wrapped;
  $("rank-direction").textContent = wrapped
    ? "the best first (top left), then row by row, like reading, down to the worst (last)"
    : "the best on the left, the worst on the right";
}

function announce(li) {
  $("rank-live").textContent = `Image ${li.dataset.image} moved to position ${[...$("rank-list").children].indexOf(li) + 1}`;
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
  announce(li);
}

// Put li where target is now (the others shift by one).
function placeItem(li, target, method) {
  const list = $("rank-list");
  if (li === target) return;
  const items = [...list.children];
  if (items.indexOf(li) < items.indexOf(target)) list.insertBefore(li, target.nextSibling); else list.insertBefore(li, target);
  rankMethods.add(method);
  renumber();
  announce(li);
}

function selectItem(li) {
  if (rankSelected) { rankSelected.classList.remove("selected"); rankSelected.setAttribute("aria-pressed", "false"); }
  rankSelected = li;
  if (li) {
    li.classList.add("selected"); li.setAttribute("aria-pressed", "true");
    $("rank-live").textContent = `Image ${li.dataset.image} selected: now tap the image whose place it should take`;
  }
}

function itemAt(x, y, except) {
  return [...$("rank-list").children].find((li) => {
    if (li === except) return false;
    const r = li.getBoundingClientRect();
    return x >= r.left && x <= r.right && y >= r.top && y <= r.bottom;
  }) || null;
}

function tapItem(li) {
  if (!rankSelected) selectItem(li);
  else if (rankSelected === li) selectItem(null);
  else { const moving = rankSelected; selectItem(null); placeItem(moving, li, "tap"); }
}

function endTouchDrag(event, commit) {
  const drag = touchDrag;
  if (!drag || event.pointerId !== drag.id) return;
  touchDrag = null;
  touchHandled = drag.li;
  if (!drag.moved) { if (commit) tapItem(drag.li); return; }
  drag.li.style.transform = "";
  drag.li.classList.remove("dragging");
  if (drag.over) drag.over.classList.remove("over");
  if (commit && drag.over) placeItem(drag.li, drag.over, "drag");
}

function rankItem(index) {
  const list = $("rank-list");
  const li = document.createElement("li");
  li.className = "rank-item"; li.draggable = true; li.tabIndex = 0; li.dataset.image = index;
  li.setAttribute("aria-pressed", "false");
  const img = document.createElement("img"); img.alt = `Image ${index}`; img.draggable = false;
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
  // Mouse: HTML drag and drop.
  li.addEventListener("dragstart", (e) => { list.dragged = li; selectItem(null); li.classList.add("dragging"); e.dataTransfer.effectAllowed = "move"; e.dataTransfer.setData("text/plain", String(index)); });
  li.addEventListener("dragend", () => { li.classList.remove("dragging"); list.querySelectorAll(".over").forEach((x) => x.classList.remove("over")); });
  li.addEventListener("dragover", (e) => { e.preventDefault(); if (li !== list.dragged) li.classList.add("over"); });
  li.addEventListener("dragleave", () => li.classList.remove("over"));
  li.addEventListener("drop", (e) => {
    e.preventDefault(); li.classList.remove("over");
    if (list.dragged && list.dragged !== li) placeItem(list.dragged, li, "drag");
  });
  // Touch and pen: the item follows the finger (touch-action: none in the CSS).
  li.addEventListener("pointerdown", (e) => {
    touchHandled = null;
    if (e.pointerType === "mouse" || e.target.closest("button") || touchDrag) return;
    touchDrag = { li, id: e.pointerId, x: e.clientX, y: e.clientY, moved: false, over: null };
  });
  li.addEventListener("pointermove", (e) => {
    const drag = touchDrag;
    if (!drag || drag.li !== li || e.pointerId !== drag.id) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (!drag.moved) {
      if (Math.hypot(dx, dy) < 8) return;
      drag.moved = true;
      try { li.setPointerCapture(e.pointerId); } catch (_) { /* already captured (touch) */ }
      li.classList.add("dragging");
      selectItem(null);
    }
    e.preventDefault();
    li.style.transform = `translate(${dx}px, ${dy}px)`;
    const over = itemAt(e.clientX, e.clientY, li);
    if (over !== drag.over) {
      if (drag.over) drag.over.classList.remove("over");
      drag.over = over;
      if (over) over.classList.add("over");
    }
  });
  li.addEventListener("pointerup", (e) => endTouchDrag(e, true));
  li.addEventListener("pointercancel", (e) => endTouchDrag(e, false));
  // Tap (or click) to select, tap another image to move the selected one there.
  li.addEventListener("click", (e) => {
    if (e.pointerType === "touch" || e.pointerType === "pen") return; // handled on pointerup
    if (touchHandled === li) { touchHandled = null; return; }
    if (e.target.closest("button")) return;
    tapItem(li);
  });
  imageUrl(index).then((url) => { img.src = url; }).catch(fail);
  return li;
}

let rankObserver = null;

async function showRanking() {
  showPage("page-ranking", "ranking");
  const list = $("rank-list");
  list.replaceChildren();
  list.style.setProperty("--n", state.n_images);
  rankMethods = new Set();
  rankSelected = null;
  for (let index = 1; index <= state.n_images; index++) list.append(rankItem(index));
  renumber();
  updateRankLayout();
  if (!rankObserver && window.ResizeObserver) { rankObserver = new ResizeObserver(updateRankLayout); rankObserver.observe(list); }
}

$("rank-finish").addEventListener("click", async () => {
  const button = $("rank-finish");
  button.disabled = true;
  // Every recording is on the server before the session ends (the status line says how far).
  await uploadsDone();
  // "untouched": the participant kept the order the images were shown in.
  const method = rankMethods.size > 1 ? "mixed" : [...rankMethods][0] || "untouched";
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
    surveyIndex = null;
    for (const id of ["free-prompt", "structured-prompt"]) updateCounter(id);
    await startSession(payload);
  } catch (err) { fail(err); }
});

// Leaving mid-way (Back, closing the tab, a reload) asks first: the session cannot be
// continued elsewhere, and an image interrupted now has to be shown again.
window.addEventListener("beforeunload", (event) => {
  if (!auth || !auth.sessionId || !state || !state.step || state.step === "done") return;
  event.preventDefault();
  event.returnValue = "";
});

boot();
