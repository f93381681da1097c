// Admin views of the fergi study that show the science: a session's AU curves per image
// (baseline and reaction, image onset at 0 s, invalid frames shaded), activation values,
// clip validity, labelled pairs against the ranking; the study overview with the running
// agreement and its confidence interval; timestamps and a compact processing status.
// Plain JS + SVG, no libraries. Exposes window.FergiAdmin for admin.js.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  // One colour per AU (colour-blind safe first: AU4 and AU12 are the paper's).
  const AU_COLORS = {
    AU4: "#d55e00", AU12: "#0072b2", AU1: "#009e73", AU2: "#cc79a7", AU5: "#e69f00", AU6: "#56b4e9",
    AU9: "#7b3294", AU15: "#8c510a", AU17: "#4d4d4d", AU20: "#b2182b", AU25: "#35978f", AU26: "#762a83",
  };
  const DEFAULT_AUS = ["AU4", "AU12"];
  const STORE_KEY = "fergi-admin-aus";

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function api(path) {
    const response = await fetch(path, { credentials: "same-origin" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.detail || response.statusText);
    return body;
  }

  function pill(text, status) { return el("span", text, `pill ${status || ""}`); }

  // ------------------------------------------------------------------ times
  function pad(n) { return String(n).padStart(2, "0"); }

  function absolute(date) {
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }

  function relative(date, now) {
    const s = Math.round((now - date) / 1000);
    const a = Math.abs(s);
    const unit = a < 60 ? `${a} s` : a < 3600 ? `${Math.round(a / 60)} min` : a < 86400 ? `${(a / 3600).toFixed(a < 36000 ? 1 : 0)} h` : `${Math.round(a / 86400)} d`;
    return s >= 0 ? `${unit} ago` : `in ${unit}`;
  }

  // A timestamp as "YYYY-MM-DD HH:MM" (local) with "3 min ago" beside it; full ISO on hover.
  function when(iso, fallback) {
    if (!iso) return el("span", fallback || "—", "muted");
    const date = new Date(iso);
    const node = el("span", null, "when");
    node.title = `${date.toISOString()} (UTC)`;
    node.dataset.iso = iso;
    node.append(el("span", absolute(date), "abs"), el("span", relative(date, Date.now()), "rel"));
    return node;
  }

  function duration(fromIso, toIso) {
    if (!fromIso || !toIso) return "";
    const s = Math.max(0, Math.round((new Date(toIso) - new Date(fromIso)) / 1000));
    return s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${(s / 3600).toFixed(1)} h`;
  }

  // ------------------------------------------------------------------ compact job status
  // Worst first: a failed stage makes the kind's badge red even when the job ran on.
  const SEVERITY = { failed: 4, running: 3, queued: 2, warn: 1, done: 0 };

  function stageState(value) {
    const s = String(value).toLowerCase();
    if (s === "done" || s.startsWith("raw video deleted")) return "done";
    if (s === "failed" || s.startsWith("failed")) return "failed";
    if (s === "running") return "running";
    if (s === "queued") return "queued";
    if (s.startsWith("skipped") || s === "invalid" || s.startsWith("raw video kept")) return "warn";
    return "done";
  }

  function worst(states) {
    return states.reduce((a, b) => (SEVERITY[b] > SEVERITY[a] ? b : a), "done");
  }

  // One badge per job kind (the latest job of the kind; worst of its status and stages),
  // with every stage, error and a retry button behind a <details>.
  function jobStatus(jobs, { onRetry, openKey, openSet } = {}) {
    const box = el("details", null, "jobs-compact");
    if (openSet && openSet.has(openKey)) box.open = true;
    box.addEventListener("toggle", () => {
      if (!openSet) return;
      if (box.open) openSet.add(openKey); else openSet.delete(openKey);
    });
    const summary = el("summary");
    box.append(summary);
    if (!jobs.length) { summary.append(pill("no jobs", "")); return box; }
    const latest = {};
    for (const job of jobs) if (!latest[job.kind] || job.id > latest[job.kind].id) latest[job.kind] = job;
    const list = el("div", null, "job-list");
    const kinds = [...new Set(["generate", "clips", "process", ...Object.keys(latest)])];
    for (const kind of kinds) {
      const job = latest[kind];
      if (!job) continue;
      const stages = Object.entries(job.stages || {}).filter(([name]) => name !== "base_seed");
      const jobState = job.status === "done" ? "done" : job.status;
      const state = worst([jobState, ...stages.map(([, v]) => stageState(v))].map((s) => (s in SEVERITY ? s : "done")));
      const counts = {};
      for (const [, v] of stages) { const s = stageState(v); counts[s] = (counts[s] || 0) + 1; }
      // "done*": finished, with a stage skipped or kept back (hover or expand for which).
      const badge = pill(`${kind}: ${state === "warn" ? "done*" : state}`, state);
      badge.dataset.kind = kind;
      badge.title = stages.map(([n, v]) => `${n}: ${v}`).join("\n") || job.status;
      summary.append(badge);
      const item = el("div", null, "job-item");
      const head = el("div");
      head.append(el("strong", `${kind} #${job.id}`), ` ${job.status}`,
        el("span", ` · attempt ${job.attempts} · `, "muted"), when(job.created_at));
      if (job.finished_at) head.append(el("span", ` → ${duration(job.created_at, job.finished_at)}`, "muted"));
      item.append(head);
      if (stages.length) {
        const line = el("div", null, "stage-list");
        for (const [name, value] of stages) {
          const chip = el("span", null, `stage ${stageState(value)}`);
          chip.textContent = String(value) === "done" ? name : `${name}: ${value}`;
          line.append(chip);
        }
        item.append(line);
      }
      if (job.error) item.append(el("div", job.error, "mono error-text"));
      if (job.status === "failed" && onRetry) {
        const retry = el("button", "Retry", "secondary");
        retry.addEventListener("click", (e) => { e.preventDefault(); onRetry(job); });
        item.append(retry);
      }
      list.append(item);
    }
    // Older jobs of a kind (a process run before "Process again"): listed, not badged.
    const older = jobs.filter((j) => latest[j.kind] && latest[j.kind].id !== j.id);
    if (older.length) list.append(el("div", `earlier: ${older.map((j) => `${j.kind} #${j.id} ${j.status}`).join(", ")}`, "muted"));
    box.append(list);
    return box;
  }

  // ------------------------------------------------------------------ numbers
  function fmt(v, digits = 2) { return v === null || v === undefined ? "—" : Number(v).toFixed(digits); }
  function pct(v, digits = 0) { return v === null || v === undefined ? "—" : `${(100 * v).toFixed(digits)} %`; }

  function agreementText(a) {
    if (!a || !a.n) return "no judged pairs yet";
    return `${a.agree} of ${a.n} agree · ${pct(a.share, 1)} (95 % CI ${pct(a.ci_low, 1)}–${pct(a.ci_high, 1)}, ${a.method === "wilson" ? "Wilson" : a.method})`;
  }

  function niceTicks(lo, hi, n) {
    const span = hi - lo || 1;
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.round(v / step) * step);
    return out;
  }

  // ------------------------------------------------------------------ AU small multiple
  const W = 380, H = 180, M = { l: 40, r: 10, t: 18, b: 26 };

  function chart(image, aus, xDomain, yDomain) {
    const [x0, x1] = xDomain, [y0, y1] = yDomain;
    const X = (t) => M.l + ((t - x0) / (x1 - x0)) * (W - M.l - M.r);
    const Y = (v) => H - M.b - ((v - y0) / (y1 - y0)) * (H - M.t - M.b);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "au-chart", role: "img", "data-image": image.index,
      "aria-label": `AU curves of image ${image.index}` });
    // baseline band (before the onset)
    root.append(svg("rect", { x: X(x0), y: M.t, width: Math.max(0, X(0) - X(x0)), height: H - M.t - M.b, class: "baseline-band" }));
    root.append(svg("text", { x: X(x0) + 4, y: M.t + 11, class: "band-label" }, "baseline"));
    root.append(svg("text", { x: X(0) + 4, y: M.t + 11, class: "band-label" }, "image on screen"));
    // invalid frames, merged into runs; red: no confident face, amber: head turned
    let nInvalid = 0;
    for (const kind of ["baseline", "reaction"]) {
      const clip = image.clips[kind];
      if (!clip || !clip.curves) continue;
      const { t, valid, invalid_why: why } = clip.curves;
      const half = t.length > 1 ? (t[t.length - 1] - t[0]) / (t.length - 1) / 2 : 1 / 60;
      let i = 0;
      while (i < t.length) {
        if (valid[i]) { i++; continue; }
        let j = i;
        while (j + 1 < t.length && !valid[j + 1] && why[j + 1] === why[i]) j++;
        const rect = svg("rect", { x: X(t[i] - half), y: M.t, width: Math.max(1, X(t[j] + half) - X(t[i] - half)),
          height: H - M.t - M.b, class: `invalid-frames ${why[i]}`, "data-clip": kind, "data-frames": j - i + 1 });
        rect.append(svg("title", {}, `${kind}: ${j - i + 1} invalid frame${j > i ? "s" : ""} (${why[i] === "face" ? "no confident face" : "head pose out of range"})`));
        root.append(rect);
        nInvalid += j - i + 1;
        i = j + 1;
      }
    }
    // axes and grid
    for (const v of niceTicks(y0, y1, 3)) {
      root.append(svg("line", { x1: M.l, x2: W - M.r, y1: Y(v), y2: Y(v), class: "grid" }));
      root.append(svg("text", { x: M.l - 5, y: Y(v) + 3, class: "tick y" }, String(+v.toFixed(3))));
    }
    for (const v of niceTicks(x0, x1, 4)) {
      root.append(svg("line", { x1: X(v), x2: X(v), y1: H - M.b, y2: H - M.b + 4, class: "axis" }));
      root.append(svg("text", { x: X(v), y: H - M.b + 15, class: "tick x" }, `${+v.toFixed(2)} s`));
    }
    root.append(svg("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, class: "axis" }));
    // curves: one path per AU and clip, broken where a value is missing
    for (const au of aus) {
      for (const kind of ["baseline", "reaction"]) {
        const clip = image.clips[kind];
        if (!clip || !clip.curves || !clip.curves.values[au]) continue;
        const { t, invalid_why: why } = clip.curves;
        const values = clip.curves.values[au];
        let d = "", pen = false;
        for (let i = 0; i < t.length; i++) {
          // A frame without a face holds the release's placeholder (-1), not a measurement.
          if (values[i] === null || why[i] === "face") { pen = false; continue; }
          d += `${pen ? "L" : "M"}${X(t[i]).toFixed(1)},${Y(values[i]).toFixed(1)}`;
          pen = true;
        }
        const path = svg("path", { d, class: `au-curve ${kind}`, stroke: AU_COLORS[au] || "#333",
          "data-au": au, "data-clip": kind, "data-image": image.index });
        path.append(svg("title", {}, `${au}, ${kind} clip of image ${image.index}`));
        root.append(path);
      }
    }
    // the image onset
    root.append(svg("line", { x1: X(0), x2: X(0), y1: M.t - 4, y2: H - M.b, class: "onset", "data-image": image.index }));
    root.append(svg("text", { x: X(0), y: M.t - 6, class: "onset-label" }, "onset"));
    root.dataset.invalidFrames = nInvalid;
    return root;
  }

  function domains(images, aus) {
    let x0 = Infinity, x1 = -Infinity, y0 = 0, y1 = -Infinity;
    for (const image of images) {
      for (const clip of Object.values(image.clips)) {
        if (!clip || !clip.curves) continue;
        const t = clip.curves.t;
        if (t.length) { x0 = Math.min(x0, t[0]); x1 = Math.max(x1, t[t.length - 1]); }
        const why = clip.curves.invalid_why;
        for (const au of aus) {
          (clip.curves.values[au] || []).forEach((v, i) => {
            if (v !== null && why[i] !== "face") { y0 = Math.min(y0, v); y1 = Math.max(y1, v); }
          });
        }
      }
    }
    if (!isFinite(x0)) { x0 = -1; x1 = 1; }
    x0 = Math.min(x0, 0); x1 = Math.max(x1, 0.1);
    if (!isFinite(y1) || y1 <= y0) y1 = y0 + 1;
    return [[x0, x1], [y0, y1 + 0.06 * (y1 - y0)]];
  }

  function clipRows(image, aus) {
    const table = el("table", null, "clip-table");
    const head = table.createTHead().insertRow();
    for (const h of ["Clip", "Frames", "Valid frames"]) head.append(el("th", h));
    for (const au of aus) {
      const th = el("th", au, "num");
      th.title = `${au} activation value`;
      head.append(th);
    }
    const body = table.createTBody();
    for (const kind of ["baseline", "reaction"]) {
      const clip = image.clips[kind];
      const row = body.insertRow();
      row.dataset.clip = kind;
      row.insertCell().textContent = kind;
      if (!clip) { const c = row.insertCell(); c.colSpan = 2 + aus.length; c.textContent = "not processed"; continue; }
      const frames = row.insertCell();
      frames.textContent = `${clip.n_frames} / ${clip.expected_frames}`;
      if (clip.n_frames < clip.expected_frames) frames.className = "warn-text";
      const validity = row.insertCell();
      validity.append(pill(clip.clip_valid === false ? "invalid" : clip.clip_valid ? "valid" : "?",
        clip.clip_valid === false ? "failed" : clip.clip_valid ? "done" : ""), ` ${pct(clip.valid_frame_share)}`);
      for (const au of aus) {
        const cell = row.insertCell();
        cell.className = "num activation";
        cell.dataset.au = au;
        cell.textContent = fmt(clip.activations[au], 3);
      }
    }
    return table;
  }

  // Every showing of the image: a replay after an interruption is a second look, and its
  // reaction is not a first impression.
  const END_REASONS = { completed: "completed", camera: "camera lost", hidden: "tab hidden", reload: "page reloaded",
    back: "Back pressed", network: "network lost", recording: "recording refused", left: "page left", unknown: "ended" };
  function presentationList(image) {
    const attempts = image.presentations || [];
    const list = el("ol", null, "presentations");
    list.setAttribute("aria-label", `Showings of image ${image.index}`);
    for (const a of attempts) {
      const end = a.end_reason ? END_REASONS[a.end_reason] || a.end_reason : "no end on record";
      const seen = a.exposure > 1 ? ` · seen before ${fmt(a.seen_before_s, 1)} s` : "";
      const item = el("li", `Showing ${a.exposure} (segment ${a.segment}): ${end}, visible ${a.visible_estimated ? "≈ " : ""}${fmt(a.visible_s, 1)} s${seen}`);
      item.dataset.exposure = a.exposure;
      if (a.exposure > 1) item.classList.add("replay");
      list.append(item);
    }
    return list;
  }

  function imageCard(sessionId, image, aus, xd, yd) {
    const card = el("figure", null, "image-card");
    card.dataset.image = image.index;
    const invalid = ["baseline", "reaction"].some((k) => image.clips[k] && image.clips[k].clip_valid === false) || image.invalid_image;
    if (invalid) card.classList.add("has-invalid");
    const cap = el("figcaption");
    const thumb = el("img", null, "thumb-sm");
    thumb.src = `api/admin/sessions/${sessionId}/images/${image.index}`;
    thumb.alt = `Image ${image.index}`;
    const title = el("div", null, "image-title");
    title.append(el("strong", `Image ${image.index}`));
    const facts = [];
    if (image.rank) facts.push(`rank ${image.rank}`);
    if (image.overall_rating) facts.push(`rated ${image.overall_rating}`);
    if (image.invalid_image) facts.push("invalid image (black)");
    title.append(el("span", facts.join(" · "), "muted"));
    const reaction = image.clips.reaction;
    title.append(pill(!reaction ? "no reaction clip" : reaction.clip_valid === false ? "reaction invalid" : "reaction valid",
      !reaction || reaction.clip_valid === false ? "failed" : "done"));
    cap.append(thumb, title);
    card.append(cap, chart(image, aus, xd, yd), clipRows(image, aus), presentationList(image));
    const reasons = ["baseline", "reaction"].flatMap((k) => (image.clips[k] ? image.clips[k].reasons.map((r) => `${k}: ${r}`) : []));
    if (reasons.length) {
      const list = el("ul", null, "reasons");
      for (const r of reasons) list.append(el("li", r));
      card.append(list);
    }
    return card;
  }

  function diffBar(value, maxAbs) {
    const w = 120, h = 14, mid = w / 2;
    const root = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "diff-bar", width: w, height: h });
    root.append(svg("line", { x1: mid, x2: mid, y1: 0, y2: h, class: "axis" }));
    if (value !== null && maxAbs > 0) {
      const len = (Math.abs(value) / maxAbs) * (mid - 2);
      root.append(svg("rect", { x: value >= 0 ? mid : mid - len, y: 3, width: Math.max(1, len), height: h - 6,
        class: value >= 0 ? "pos" : "neg" }));
    }
    return root;
  }

  function pairsTable(data) {
    const wrap = el("div", null, "pairs");
    wrap.append(el("h3", "Labelled pairs"));
    const a = data.agreement, all = data.agreement_all_decided;
    const summary = el("p", null, "agreement-line");
    summary.append(el("strong", "Confident pairs vs. the ranking: "), agreementText(a));
    wrap.append(summary);
    wrap.append(el("p", `All decided pairs: ${agreementText(all)}`, "muted"));
    if (!data.pairs.length) { wrap.append(el("p", "No labels yet (processing makes them after the ranking).", "muted")); return wrap; }
    const table = el("table", null, "pairs-table");
    table.id = "pairs-table";
    const head = table.createTHead().insertRow();
    for (const h of ["Pair", "Score difference (a − b)", "", "Label prefers", "Confident", "Ranks (a, b)", "Ranking prefers", "Agrees"]) head.append(el("th", h));
    const body = table.createTBody();
    const maxAbs = Math.max(0, ...data.pairs.map((p) => Math.abs(p.score_difference || 0)));
    for (const p of data.pairs) {
      const row = body.insertRow();
      row.dataset.pair = `${p.image_a}-${p.image_b}`;
      if (p.confident) row.className = "confident";
      row.insertCell().textContent = `${p.image_a} vs ${p.image_b}`;
      const diff = row.insertCell(); diff.className = "num"; diff.textContent = fmt(p.score_difference, 3);
      row.insertCell().append(diffBar(p.score_difference, maxAbs));
      row.insertCell().textContent = p.preferred === null ? "undecided" : `image ${p.preferred}`;
      row.insertCell().append(pill(p.confident ? "confident" : "not confident", p.confident ? "done" : ""));
      row.insertCell().textContent = `${p.rank_a ?? "—"}, ${p.rank_b ?? "—"}`;
      row.insertCell().textContent = p.ranking_prefers === null ? "—" : `image ${p.ranking_prefers}`;
      const agrees = row.insertCell();
      agrees.className = "agrees";
      agrees.append(p.agrees === null ? el("span", "—", "muted") : pill(p.agrees ? "✓ agrees" : "✗ disagrees", p.agrees ? "done" : "failed"));
    }
    wrap.append(table);
    wrap.append(el("p", "Score difference: the annotation model's score of image a minus that of image b (positive: a preferred). " +
      "Confident: |difference| above the model's threshold; only confident pairs count in the agreement, as in the paper's Table 1.", "hint"));
    return wrap;
  }

  function selectedAus(available) {
    try {
      const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
      if (Array.isArray(saved) && saved.length && saved.every((a) => available.includes(a))) return saved;
    } catch (e) { /* default below */ }
    return DEFAULT_AUS.slice();
  }

  function auSelector(available, chosen, onChange) {
    const box = el("div", null, "au-selector");
    box.id = "au-selector";
    box.append(el("span", "Action units:", "muted"));
    for (const au of available) {
      const label = el("label", null, "au-chip");
      const input = el("input");
      input.type = "checkbox"; input.value = au; input.checked = chosen.includes(au);
      input.addEventListener("change", () => {
        const next = available.filter((a) => (a === au ? input.checked : chosen.includes(a)));
        if (!next.length) { input.checked = true; return; }
        localStorage.setItem(STORE_KEY, JSON.stringify(next));
        onChange(next);
      });
      const swatch = el("span", null, "swatch");
      swatch.style.background = AU_COLORS[au] || "#333";
      label.append(input, swatch, au);
      box.append(label);
    }
    return box;
  }

  // ------------------------------------------------------------------ session page
  const sessionState = { id: null, science: null, summary: null, key: "" };

  function drawSession(box, summary, data, aus, onRetry) {
    box.replaceChildren();
    const head = el("div", null, "session-head");
    head.append(el("h2", `Session ${summary.id}: participant ${summary.participant_id}, session ${summary.session_index} (${summary.session_type})`));
    const times = el("div", null, "times");
    times.append(el("span", "Created ", "muted"), when(summary.created_at), el("span", " · Consent ", "muted"), when(summary.consent_at),
      el("span", " · Ranked ", "muted"), when(data.ranked_at, "not yet"),
      el("span", " · Finished ", "muted"), when(summary.finished_at, "not finished"));
    if (summary.finished_at) times.append(el("span", ` (${duration(summary.created_at, summary.finished_at)})`, "muted"));
    head.append(times);
    const status = el("div", null, "status-line");
    status.append(el("span", "Processing ", "muted"), jobStatus(summary.jobs, { onRetry }));
    head.append(status);
    box.append(head);
    box.append(auSelector(data.available_aus, aus, (next) => drawSession(box, summary, data, next, onRetry)));
    const legend = el("p", null, "legend");
    for (const au of aus) {
      const item = el("span", null, "legend-item");
      const line = el("span", null, "legend-line");
      line.style.background = AU_COLORS[au] || "#333";
      item.append(line, au);
      legend.append(item);
    }
    const inv = el("span", null, "legend-item"); inv.append(el("span", null, "legend-box face"), "no confident face");
    const pose = el("span", null, "legend-item"); pose.append(el("span", null, "legend-box pose"), "head pose out of range");
    legend.append(inv, pose, el("span", `AU columns: activation values (largest minus first 0.1 s moving mean over valid frames) · frame valid: confidence ≥ ${data.rules.min_confidence}, pitch ${data.rules.pitch_range.join("–")}, yaw ${data.rules.yaw_range.join("–")}; clip valid: ≥ ${pct(data.rules.min_valid_share)} of frames`, "muted"));
    box.append(legend);
    const grid = el("div", null, "image-grid");
    grid.id = "au-grid";
    if (!data.images.length) grid.append(el("p", "No images yet.", "muted"));
    const [xd, yd] = domains(data.images, aus);
    for (const image of data.images) grid.append(imageCard(data.session_id, image, aus, xd, yd));
    box.append(grid);
    box.append(pairsTable(data));
  }

  async function renderSession(id, box, { force, onRetry } = {}) {
    const [summary, data] = await Promise.all([api(`api/admin/sessions/${id}`), api(`api/admin/sessions/${id}/science?aus=all`)]);
    const key = JSON.stringify([summary.jobs, summary.finished_at, data]);
    if (!force && sessionState.id === id && sessionState.key === key) return { summary, changed: false };
    Object.assign(sessionState, { id, science: data, summary, key });
    drawSession(box, summary, data, selectedAus(data.available_aus), onRetry);
    return { summary, changed: true };
  }

  // ------------------------------------------------------------------ overview
  function tile(label, value, sub) {
    const node = el("div", null, "tile");
    node.append(el("div", label, "tile-label"), el("div", value, "tile-value"));
    if (sub) node.append(sub instanceof Node ? sub : el("div", sub, "tile-sub"));
    return node;
  }

  function runningChart(points) {
    const w = 640, h = 220, m = { l: 44, r: 12, t: 14, b: 34 };
    const root = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "running-chart", id: "running-chart", role: "img",
      "aria-label": "running agreement of confident labels with the rankings" });
    const pts = points.filter((p) => p.n > 0);
    const n = Math.max(points.length, 1);
    const X = (i) => m.l + (n === 1 ? 0.5 : i / (n - 1)) * (w - m.l - m.r);
    const Y = (v) => h - m.b - v * (h - m.t - m.b);
    for (const v of [0, 0.25, 0.5, 0.75, 1]) {
      root.append(svg("line", { x1: m.l, x2: w - m.r, y1: Y(v), y2: Y(v), class: v === 0.5 ? "chance" : "grid" }));
      root.append(svg("text", { x: m.l - 6, y: Y(v) + 3, class: "tick y" }, `${v * 100} %`));
    }
    root.append(svg("text", { x: w - m.r, y: Y(0.5) - 4, class: "tick chance-label" }, "chance"));
    root.append(svg("text", { x: (m.l + w - m.r) / 2, y: h - 4, class: "axis-label" }, "finished sessions, in order"));
    if (!pts.length) {
      root.append(svg("text", { x: (m.l + w - m.r) / 2, y: Y(0.5) - 12, class: "empty-label" }, "no confident pairs judged against a ranking yet"));
      return root;
    }
    const idx = points.map((p, i) => [p, i]).filter(([p]) => p.n > 0);
    let band = "";
    idx.forEach(([p, i], k) => { band += `${k ? "L" : "M"}${X(i).toFixed(1)},${Y(p.ci_high).toFixed(1)}`; });
    for (let k = idx.length - 1; k >= 0; k--) band += `L${X(idx[k][1]).toFixed(1)},${Y(idx[k][0].ci_low).toFixed(1)}`;
    root.append(svg("path", { d: band + "Z", class: "ci-band" }));
    let line = "";
    idx.forEach(([p, i], k) => { line += `${k ? "L" : "M"}${X(i).toFixed(1)},${Y(p.share).toFixed(1)}`; });
    root.append(svg("path", { d: line, class: "share-line" }));
    for (const [p, i] of idx) {
      // The interval of each point as a whisker too: a band is invisible for one point.
      root.append(svg("line", { x1: X(i), x2: X(i), y1: Y(p.ci_low), y2: Y(p.ci_high), class: "ci-whisker" }));
      const dot = svg("circle", { cx: X(i), cy: Y(p.share), r: 3, class: "share-dot" });
      dot.append(svg("title", {}, `after session ${p.session_id}: ${p.agree}/${p.n} = ${pct(p.share, 1)} [${pct(p.ci_low, 1)}, ${pct(p.ci_high, 1)}]`));
      root.append(dot);
    }
    const tickEvery = Math.max(1, Math.ceil(points.length / 10));
    points.forEach((p, i) => {
      if (i % tickEvery === 0 || i === points.length - 1) root.append(svg("text", { x: X(i), y: h - m.b + 14, class: "tick x" }, String(i + 1)));
    });
    return root;
  }

  async function renderOverview(box, abandonedAfterMin, onOpenSession) {
    const o = await api(`api/admin/overview${abandonedAfterMin ? `?abandoned_after_min=${encodeURIComponent(abandonedAfterMin)}` : ""}`);
    box.replaceChildren();
    const tiles = el("div", null, "tiles");
    const s = o.sessions, c = o.clips.reaction, a = o.agreement;
    tiles.append(
      tile("Participants", String(o.participants.n), `${o.participants.n_with_finished} with a finished session`),
      tile("Sessions started", String(s.n_started), "consented or not"),
      tile("Finished", String(s.n_finished), s.last_finished_at ? "" : "none yet"),
      tile("Abandoned", String(s.n_abandoned), `no activity for ${o.abandoned_after_min} min`),
      tile("In progress", String(s.n_in_progress)),
      tile("Valid reaction clips", c.n ? pct(c.share, 1) : "—", `${c.valid} of ${c.n} · baseline ${o.clips.baseline.valid} of ${o.clips.baseline.n}`),
      tile("Agreement with rankings", a.n ? pct(a.share, 1) : "—", a.n ? `${a.agree}/${a.n} confident pairs · 95 % CI ${pct(a.ci_low, 1)}–${pct(a.ci_high, 1)}` : "no confident pairs yet"),
    );
    tiles.id = "overview-tiles";
    box.append(tiles);
    const times = el("p", null, "times");
    times.append(el("span", "First session ", "muted"), when(s.first_started_at), el("span", " · latest started ", "muted"), when(s.last_started_at),
      el("span", " · latest finished ", "muted"), when(s.last_finished_at), el("span", " · as of ", "muted"), when(o.generated_at));
    box.append(times);
    box.append(el("h3", "Running agreement (the paper's Table 1 as data comes in)"));
    const line = el("p", null, "agreement-line");
    line.append(el("strong", "Confident reaction labels agreeing with the participants' rankings: "), agreementText(a));
    box.append(line, el("p", `All decided pairs: ${agreementText(o.agreement_all_decided)} · ${o.pairs.n} pairs labelled, ${o.pairs.n_confident} confident`, "muted"));
    box.append(runningChart(o.running_agreement));
    box.append(el("h3", "Sessions"));
    const table = el("table", null, "overview-sessions");
    const head = table.createTHead().insertRow();
    for (const h of ["#", "Participant", "Status", "Created", "Last activity", "Finished", "Valid reaction clips", "Pairs (confident)", "Agree", ""]) head.append(el("th", h));
    const body = table.createTBody();
    for (const r of o.session_rows.slice().reverse()) {
      const row = body.insertRow();
      row.insertCell().textContent = r.id;
      row.insertCell().textContent = `${r.participant_id} · ${r.session_index}`;
      row.insertCell().append(pill(r.status, r.status === "finished" ? "done" : r.status === "abandoned" ? "failed" : "running"));
      row.insertCell().append(when(r.created_at));
      row.insertCell().append(when(r.last_activity_at));
      row.insertCell().append(when(r.finished_at, "—"));
      row.insertCell().textContent = r.n_reaction_clips ? `${r.n_reaction_valid} / ${r.n_reaction_clips}` : "—";
      row.insertCell().textContent = r.n_pairs ? `${r.n_pairs} (${r.n_confident})` : "—";
      row.insertCell().textContent = r.n_judged ? `${r.agree} / ${r.n_judged}` : "—";
      const open = el("button", "Open", "link");
      open.addEventListener("click", () => onOpenSession(r.id));
      row.insertCell().append(open);
    }
    box.append(table);
    return o;
  }

  window.FergiAdmin = { when, duration, jobStatus, renderSession, renderOverview, sessionState };
})();
