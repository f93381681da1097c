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

async function refresh() {
  try {
    const [participants, sessions] = await Promise.all([api("GET", "api/admin/participants"), api("GET", "api/admin/sessions")]);
    const pBody = $("participants"); pBody.replaceChildren();
    for (const p of participants) {
      const row = pBody.insertRow();
      row.insertCell().textContent = p.participant_id;
      row.insertCell().textContent = p.n_sessions;
      row.insertCell().textContent = `${p.n_structured} / ${p.n_free}`;
      row.insertCell().textContent = p.n_finished;
      row.insertCell().append(el("span", p.link || "—", "mono"));
    }
    const sBody = $("sessions"); sBody.replaceChildren();
    for (const s of sessions) {
      const row = sBody.insertRow();
      row.insertCell().textContent = s.id;
      row.insertCell().textContent = `${s.participant_id} · ${s.session_index}`;
      row.insertCell().textContent = s.session_type;
      row.insertCell().append(pill(s.step, s.step === "done" ? "done" : "running"));
      row.insertCell().textContent = (s.prompt || "—").slice(0, 80);
      row.insertCell().textContent = s.n_chunks ? `${s.n_segments} seg · ${s.n_chunks} chunks · ${formatBytes(s.n_bytes)}` : "—";
      const jobs = row.insertCell();
      for (const job of s.jobs) {
        const line = el("div");
        line.append(pill(`${job.kind}: ${job.status}`, job.status));
        for (const [stage, status] of Object.entries(job.stages)) {
          if (stage === "base_seed") continue;
          line.append(pill(`${stage}`, String(status)));
        }
        if (job.error) line.append(el("div", job.error, "mono"));
        if (job.status === "failed") {
          const retry = el("button", "Retry", "secondary");
          retry.addEventListener("click", async () => { try { await api("POST", `api/admin/jobs/${job.id}/retry`); refresh(); } catch (e) { banner(e.message); } });
          line.append(retry);
        }
        jobs.append(line);
      }
      if (s.n_labels) jobs.append(el("div", `${s.n_clips} clips · ${s.n_labels} labels`, "meta"));
      const actions = row.insertCell();
      const details = el("button", "Details", "link");
      details.addEventListener("click", () => showDetail(s.id));
      actions.append(details);
    }
    $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    banner("");
  } catch (err) { banner(err.message); }
}

async function showDetail(id) {
  const d = await api("GET", `api/admin/sessions/${id}`);
  $("detail-card").hidden = false;
  $("detail-title").textContent = `Session ${d.id}: participant ${d.participant_id}, session ${d.session_index} (${d.session_type})`;
  const box = $("detail"); box.replaceChildren();
  box.append(el("p", `Prompt: ${d.prompt || "—"}`));
  box.append(el("p", `Consent: ${d.consent_at || "—"} (version ${d.consent_version || "—"}), video sharing ${d.share_video ? "allowed" : "not allowed"}`, "meta"));
  const table = el("table");
  const head = table.createTHead().insertRow();
  for (const h of ["", "Image", "Ratings (overall / alignment / fidelity)", "Issues", "Emotions", "Missing", "Reaction clip", "Baseline clip"]) head.append(el("th", h));
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
      try { await api("POST", `api/admin/sessions/${d.id}/process`); refresh(); } catch (e) { banner(e.message); }
    });
    box.append(again);
  }
  if (d.labels.length) {
    const confident = d.labels.filter((l) => l.confident);
    const pairs = confident.map((l) => `${l.preferred} preferred over ${l.preferred === l.image_a ? l.image_b : l.image_a}`);
    box.append(el("p", `Automatic labels: ${d.labels.length} pair${d.labels.length === 1 ? "" : "s"}, ${confident.length} confident` +
      (pairs.length ? `: ${pairs.join("; ")}` : ""), "meta"));
  }
  $("detail-card").scrollIntoView({ behavior: "smooth" });
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

refresh();
setInterval(refresh, 3000);
