// Admin pages of the fergi study: participants, links, sessions and processing status.
"use strict";

const $ = (id) => document.getElementById(id);

async function api(method, path, json) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (json !== undefined) { opts.body = JSON.stringify(json); opts.headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, opts);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function banner(message) { $("banner").textContent = message || ""; $("banner").hidden = !message; }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function pill(text, status) { return el("span", text, `pill ${status || ""}`); }

function formatBytes(n) {
  if (n > 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n > 1e3) return `${(n / 1e3).toFixed(0)} kB`;
  return `${n} B`;
}

// Sessions whose processing details are expanded: kept open across refreshes.
const openJobs = new Set();

// Empty: the server's FERGI_ABANDONED_SESSION_AFTER_MIN (shown as the placeholder).
function abandonedAfter() { return Number($("abandoned-after").value) || null; }
const abandonedQuery = () => (abandonedAfter() ? `?abandoned_after_min=${abandonedAfter()}` : "");

async function retryJob(job) {
  try { await api("POST", `api/admin/jobs/${job.id}/retry`); show(true); } catch (e) { banner(e.message); }
}

async function refresh() {
  try {
    const [participants, sessions, activity] = await Promise.all([
      api("GET", "api/admin/participants"), api("GET", "api/admin/sessions"),
      api("GET", `api/admin/activity${abandonedQuery()}`).then((a) => {
        $("abandoned-after").placeholder = String(a.abandoned_after_min);
        return a.sessions;
      }),
    ]);
    const pBody = $("participants"); pBody.replaceChildren();
    for (const p of participants) {
      const row = pBody.insertRow();
      row.insertCell().textContent = p.participant_id;
      row.insertCell().textContent = p.n_sessions;
      row.insertCell().textContent = `${p.n_structured} / ${p.n_free}`;
      row.insertCell().textContent = p.n_finished;
      row.insertCell().append(FergiAdmin.when(p.created_at));
      row.insertCell().append(el("span", p.link || "—", "mono"));
    }
    const sBody = $("sessions"); sBody.replaceChildren();
    for (const s of sessions) {
      const row = sBody.insertRow();
      row.insertCell().textContent = s.id;
      row.insertCell().textContent = `${s.participant_id} · ${s.session_index}`;
      row.insertCell().textContent = s.session_type;
      const act = activity[s.id];
      const status = act ? act.status : (s.finished_at ? "finished" : "in progress");
      row.insertCell().append(pill(s.step, s.step === "done" ? "done" : status === "abandoned" ? "failed" : "running"));
      row.insertCell().append(FergiAdmin.when(s.created_at));
      const end = row.insertCell();
      if (s.finished_at) end.append(FergiAdmin.when(s.finished_at), el("div", `took ${FergiAdmin.duration(s.created_at, s.finished_at)}`, "muted"));
      else {
        end.append(pill(status, status === "abandoned" ? "failed" : "running"));
        if (act) end.append(el("div", "last activity", "muted"), FergiAdmin.when(act.last_activity_at));
      }
      const prompt = row.insertCell();
      prompt.textContent = (s.prompt || "—").slice(0, 80);
      prompt.className = "prompt-cell";
      prompt.title = s.prompt || "";
      row.insertCell().textContent = s.n_chunks ? `${s.n_segments} seg · ${s.n_chunks} chunks · ${formatBytes(s.n_bytes)}` : "—";
      const jobs = row.insertCell();
      // One badge per job kind (worst state wins); stages, errors and retry on expand.
      jobs.append(FergiAdmin.jobStatus(s.jobs, { onRetry: retryJob, openKey: s.id, openSet: openJobs }));
      if (s.n_labels) jobs.append(el("div", `${s.n_clips} clips · ${s.n_labels} labels`, "muted"));
      const actions = row.insertCell();
      const details = el("a", "Open", "link");
      details.href = `#/session/${s.id}`;
      actions.append(details);
    }
    $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    banner("");
  } catch (err) { banner(err.message); }
}

async function showDetail(id) {
  const d = await api("GET", `api/admin/sessions/${id}`);
  $("detail-card").hidden = false;
  $("detail-title").textContent = `Answers, ranking and clip videos of session ${d.id}`;
  const box = $("detail"); box.replaceChildren();
  box.append(el("p", `Prompt: ${d.prompt || "—"}`));
  const consent = el("p", "Consent: ", "meta");
  consent.append(FergiAdmin.when(d.consent_at), ` (version ${d.consent_version || "—"}), video sharing ${d.share_video ? "allowed" : "not allowed"}`);
  box.append(consent);
  const table = el("table");
  const head = table.createTHead().insertRow();
  for (const h of ["", "Image", "Ratings (overall / alignment / fidelity)", "Issues", "Emotions", "Missing", "Answered", "Reaction clip", "Baseline clip"]) head.append(el("th", h));
  const body = table.createTBody();
  for (const a of d.answers) {
    const row = body.insertRow();
    const thumb = el("img", null, "thumb");
    thumb.src = `api/admin/sessions/${d.id}/images/${a.image_index}`;
    thumb.alt = `Image ${a.image_index}`;
    row.insertCell().append(thumb);
    const info = d.images.find((i) => i.index === a.image_index);
    row.insertCell().textContent = `${a.image_index}${info && info.invalid ? " (invalid: black)" : ""}`;
    row.insertCell().textContent = `${a.overall_rating} / ${a.alignment_rating} / ${a.fidelity_rating}`;
    row.insertCell().textContent = a.issues.join(", ") || "—";
    row.insertCell().textContent = a.emotions.join(", ") || "—";
    row.insertCell().textContent = a.missing_elements || "—";
    row.insertCell().append(FergiAdmin.when(a.answered_at));
    for (const kind of ["reaction", "baseline"]) {
      const clip = d.clips.find((c) => c.image_index === a.image_index && c.clip === kind);
      const cell = row.insertCell();
      if (!clip) { cell.textContent = "—"; continue; }
      const share = clip.valid_frame_share === null ? "" : ` · ${(100 * clip.valid_frame_share).toFixed(0)}% valid`;
      cell.append(el("span", `${clip.n_frames} frames${share} `));
      if (clip.has_video) {
        const link = el("a", "video");
        link.href = `api/admin/sessions/${d.id}/clips/${a.image_index}/${kind}`;
        link.target = "_blank"; link.rel = "noopener";
        cell.append(link);
      }
    }
  }
  box.append(table);
  if (d.ranking) box.append(el("p", `Ranking (best first): ${d.ranking.order.join(" > ")} (${d.ranking.method})`));
  // Only a finished session can be processed: its recording may still be growing.
  if (d.segments.length && d.finished_at) {
    const again = el("button", "Process again", "secondary");
    again.addEventListener("click", async () => {
      try { await api("POST", `api/admin/sessions/${d.id}/process`); show(true); } catch (e) { banner(e.message); }
    });
    box.append(again);
  }
  if (d.labels.length) {
    const confident = d.labels.filter((l) => l.confident);
    const pairs = confident.map((l) => `${l.preferred} preferred over ${l.preferred === l.image_a ? l.image_b : l.image_a}`);
    box.append(el("p", `Automatic labels: ${d.labels.length} pair${d.labels.length === 1 ? "" : "s"}, ${confident.length} confident` +
      (pairs.length ? `: ${pairs.join("; ")}` : ""), "meta"));
  }
}

// ------------------------------------------------------------------ views (#/, #/overview, #/session/<id>)
function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const m = hash.match(/^session\/(\d+)/);
  if (m) return { view: "session", id: Number(m[1]) };
  if (hash.startsWith("overview")) return { view: "overview" };
  return { view: "list" };
}

let lastOverview = 0;

async function show(force) {
  const r = route();
  for (const v of ["list", "overview", "session"]) $(`view-${v}`).hidden = v !== r.view;
  for (const a of document.querySelectorAll("#admin-nav a")) a.classList.toggle("current", a.dataset.view === r.view);
  $("nav-session").hidden = r.view !== "session";
  $("nav-session").textContent = r.view === "session" ? `Session ${r.id}` : "";
  try {
    if (r.view === "list") await refresh();
    else if (r.view === "overview") {
      // The overview reads every session: redrawn every 15 s, not at every tick.
      if (!force && Date.now() - lastOverview < 15000) return;
      lastOverview = Date.now();
      await FergiAdmin.renderOverview($("overview"), abandonedAfter(), (id) => { location.hash = `#/session/${id}`; });
    }
    else {
      // A processed session does not change by itself: poll only while something may.
      const known = FergiAdmin.sessionState;
      const settled = known.id === r.id && known.summary && known.summary.finished_at &&
        known.summary.jobs.every((j) => j.status === "done" || j.status === "failed");
      if (!force && settled) return;
      const { changed } = await FergiAdmin.renderSession(r.id, $("science"), { force, onRetry: retryJob });
      if (changed || force) await showDetail(r.id);
      document.body.dataset.ready = "session";
    }
    $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (r.view !== "list") banner("");
  } catch (err) { banner(err.message); }
}

$("new-participant").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const result = await api("POST", "api/admin/participants", { participant_id: $("np-id").value.trim() || null, note: $("np-note").value });
    $("np-link").textContent = `Participant ${result.participant_id}: ${result.link}`;
    $("np-id").value = ""; $("np-note").value = "";
    refresh();
  } catch (err) { banner(err.message); }
});

$("overview-form").addEventListener("submit", (event) => { event.preventDefault(); show(true); });
window.addEventListener("hashchange", () => { window.scrollTo(0, 0); show(true); });
show(true);
// The list refreshes often; a session page redraws only when its data changed.
setInterval(() => show(false), 3000);
