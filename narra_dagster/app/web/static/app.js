// narra's web app: search, upload with live progress, an item's page. Plain JavaScript on the
// public /api/v1 routes; no build step.
"use strict";

const API = "/api/v1";
// Every request sends it: narra refuses a request that changes something without it, which is
// what a form or a no-cors fetch of another site cannot send.
const CSRF = { "X-Narra-Request": "1" };
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else if (k === "style") Object.assign(node.style, v);  // CSSOM: allowed by the page's policy
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function clock(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

function where(hit) {
  if (hit.page) return `p. ${hit.page}`;
  if (hit.start_s !== null && hit.start_s !== undefined) return clock(hit.start_s);
  if (hit.box) return "in the picture";
  return "";
}

// The hit's text with its matched span marked, cut to about 240 characters around it.
function snippet(hit, size = 240) {
  const text = hit.text || "";
  if (!hit.match) return document.createTextNode(text.length > size ? text.slice(0, size) + "…" : text);
  const [a, b] = hit.match;
  const start = Math.max(0, a - Math.floor((size - (b - a)) / 2));
  const end = Math.min(text.length, Math.max(b, start + size));
  return el("span", {}, (start > 0 ? "…" : "") + text.slice(start, a),
            el("mark", { text: text.slice(a, b) }), text.slice(b, end) + (end < text.length ? "…" : ""));
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options,
                                      headers: { ...CSRF, ...(options.headers || {}) } });
  if (response.status === 401) { showLogin(); throw new Error("sign in first"); }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? classified(body.error.message, body.error.code) : response.statusText;
    const error = new Error(message); error.status = response.status; error.body = body;
    throw error;
  }
  return body;
}

// "message [class]", unless the message already names its class.
function classified(message, errorClass) {
  if (!errorClass || (message || "").includes(`[${errorClass}]`)) return message || "";
  return `${message} [${errorClass}]`;
}

// ---- sign in (only when the server has a token) ----
function showLogin() {
  $("#login").hidden = false;
  $("#home-view").hidden = true; $("#item-view").hidden = true;
  $("#token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const response = await fetch(`${API}/session`, {
    method: "POST", headers: { "Content-Type": "application/json", ...CSRF },
    body: JSON.stringify({ token: $("#token").value }), credentials: "same-origin" });
  if (!response.ok) { $("#login-error").textContent = "That token is not right."; return; }
  $("#login").hidden = true;
  $("#sign-out").hidden = false;
  route();
}

// ---- search ----
async function search(query, push = true) {
  if (push) history.pushState({}, "", `/?q=${encodeURIComponent(query)}`);
  showHome();
  const hits = $("#hits");
  hits.replaceChildren(el("p", { text: "Searching…" }));
  $("#results-title").hidden = false;
  let body;
  try {
    body = await api(`${API}/search?q=${encodeURIComponent(query)}&limit=30`);
  } catch (e) {
    hits.replaceChildren(el("p", { class: "error", role: "alert", text: e.message }));
    return;
  }
  $("#results-title").textContent = body.hits.length ? `Results for “${query}”` : "Results";
  if (!body.hits.length) {
    hits.replaceChildren(el("p", { class: "no-match", text: `No good match for “${query}”.` }));
    return;
  }
  const groups = new Map();
  for (const hit of body.hits) {
    if (!groups.has(hit.media_id)) groups.set(hit.media_id, []);
    groups.get(hit.media_id).push(hit);
  }
  hits.replaceChildren(...[...groups.values()].map(renderGroup));
}

function thumbnail(mediaId, kind) {
  const label = { video: "audio / video", image: "image", document: "PDF" }[kind] || kind;
  const img = el("img", { class: "thumb", alt: "", loading: "lazy", src: `${API}/media/${mediaId}/thumbnail` });
  img.addEventListener("error", () => img.replaceWith(el("div", { class: "thumb", text: label })));
  return img;
}

function renderGroup(hits) {
  const first = hits[0];
  const viewer = el("div", { class: "viewer" });
  const list = el("ul", { class: "hit-list" }, hits.map((hit) => el("li", { class: "hit" },
    el("button", { class: "link where", type: "button", "data-testid": "hit",
                   "aria-label": `Open ${first.source_name || first.media_id} at ${where(hit)}`,
                   onclick: () => openHit(hit, viewer) }, where(hit) || "open"),
    el("span", { class: "snippet" }, snippet(hit)))));
  return el("article", { class: "group", "data-media-id": first.media_id },
    thumbnail(first.media_id, first.kind),
    el("div", {},
      el("h3", {}, el("a", { href: `/items/${first.media_id}` }, first.source_name || first.media_id),
         el("span", { class: "kind", text: first.kind })),
      list, viewer));
}

function player(mediaId, audioOnly, start) {
  const media = el(audioOnly ? "audio" : "video", { controls: true, preload: "metadata",
    "data-testid": "player", src: `${API}/media/${mediaId}/source` });
  if (start) {
    media.addEventListener("loadedmetadata", () => {
      media.currentTime = start;
      media.play().catch(() => {});  // autoplay may be refused; the position stays
    }, { once: true });
  }
  return media;
}

async function openHit(hit, viewer) {
  if (hit.kind === "video") {
    let details = {};
    try { details = await api(`${API}/media/${hit.media_id}/details`); } catch (e) {}
    const parts = [player(hit.media_id, details.has_video === false, hit.start_s || 0)];
    if (hit.box && details.keyframes && details.keyframes.length) {  // words read on a frame
      const frame = details.keyframes.reduce((a, b) =>
        Math.abs(b.time_s - hit.start_s) < Math.abs(a.time_s - hit.start_s) ? b : a);
      parts.push(boxedImage(frame.frame, hit.box, details.video_width, details.video_height));
    }
    viewer.replaceChildren(...parts);
  } else if (hit.kind === "document") {
    viewer.replaceChildren(
      el("div", { class: "figure" }, el("img", { "data-testid": "page", alt: `Page ${hit.page}`,
        src: `${API}/media/${hit.media_id}/pages/${hit.page}?width=1000` })),
      el("p", { class: "page-text" }, snippet(hit, 600)));
  } else {
    viewer.replaceChildren(boxedImage(`${API}/media/${hit.media_id}/source`, hit.box));
  }
  viewer.scrollIntoView({ block: "nearest" });
}

// A picture with a box [x0, y0, x1, y1] drawn over it; the box is in pixels of the picture, or
// of a picture width x height (a video's frame, which may be stored smaller).
function boxedImage(src, box, width, height) {
  const img = el("img", { src, alt: "The picture, with the match outlined", "data-testid": "picture" });
  const figure = el("div", { class: "figure" }, img);
  if (box) {
    img.addEventListener("load", () => {
      const sx = img.clientWidth / (width || img.naturalWidth), sy = img.clientHeight / (height || img.naturalHeight);
      figure.append(el("div", { class: "box", "data-testid": "box",
        style: { left: `${box[0] * sx}px`, top: `${box[1] * sy}px`,
                 width: `${(box[2] - box[0]) * sx}px`, height: `${(box[3] - box[1]) * sy}px` } }));
    }, { once: true });
  }
  return figure;
}

// ---- upload ----
function upload(file) {
  const state = el("span", { class: "state", text: "uploading" });
  const bar = el("progress", { max: 100, value: 0, "aria-label": `Progress of ${file.name}` });
  const stages = el("div", { class: "stages" });
  const message = el("p", { class: "error", role: "alert" });
  const item = el("li", { class: "upload", "data-testid": "upload" },
    el("div", {}, el("span", { class: "name", text: file.name }), " ", state), bar, stages, message);
  $("#uploads").prepend(item);
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `${API}/media`);
  for (const [name, value] of Object.entries(CSRF)) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) bar.value = 40 * e.loaded / e.total; });
  xhr.addEventListener("load", () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (e) {}
    if (xhr.status === 401) { showLogin(); return; }
    if (xhr.status >= 400) {
      state.textContent = "refused"; state.className = "state failed";
      message.textContent = body.error ? classified(body.error.message, body.error.code) : `HTTP ${xhr.status}`;
      bar.value = 0;
      return;
    }
    item.dataset.mediaId = body.media_id;
    item.querySelector(".name").replaceChildren(el("a", { href: `/items/${body.media_id}`, text: file.name }));
    follow(body.media_id, { state, bar, stages, message });
  });
  xhr.addEventListener("error", () => { state.textContent = "failed"; message.textContent = "the upload was interrupted"; });
  xhr.send(form);
}

// Follow an item to its end: its stages from GET, then its events as they happen.
async function follow(mediaId, view) {
  let item;
  try { item = await api(`${API}/media/${mediaId}`); } catch (e) { view.message.textContent = e.message; return; }
  const names = item.stages.map((s) => s.asset);
  const chips = new Map(names.map((n) => [n, el("span", { class: "stage", text: n.replace(/^(video|image|document)_/, "") })]));
  view.stages.replaceChildren(...chips.values());
  const done = new Set();
  const show = (state) => {
    view.state.textContent = state; view.state.className = `state ${state}`;
    view.bar.value = state === "searchable" ? 100 : 40 + 60 * done.size / Math.max(1, names.length);
  };
  for (const s of item.stages) if (s.materialized_at) { done.add(s.asset); chips.get(s.asset).classList.add("done"); }
  show(item.state);
  if (item.state === "searchable" || item.state === "failed") {
    if (item.error) view.message.textContent = classified(item.error, item.error_class);
    return;
  }
  const source = new EventSource(`${API}/events?media_id=${mediaId}`);
  setTimeout(async () => {  // still queued: say why, when the server knows (no daemon running)
    if (view.state.textContent !== "queued") return;
    try { const now = await api(`${API}/media/${mediaId}`); if (now.note) view.message.textContent = now.note; } catch (e) {}
  }, 35000);
  const handle = (event) => {
    const data = JSON.parse(event.data);
    if (data.stage && chips.has(data.stage)) {
      if (data.type.endsWith(".completed")) { done.add(data.stage); chips.get(data.stage).classList.add("done"); }
      if (data.type.endsWith(".failed")) chips.get(data.stage).classList.add("failed");
    }
    if (data.type === "analysis.started" || data.type === "analysis.retrying") show("running");
    if (data.type === "analysis.completed") { show("searchable"); source.close(); }
    if (data.type === "analysis.failed") {
      show("failed"); source.close();
      view.message.textContent = classified(data.error, data.error_class);
    }
    if (data.type === "analysis.deleted") { show("deleted"); source.close(); }
  };
  for (const type of ["analysis.started", "analysis.retrying", "analysis.completed", "analysis.failed",
                      "analysis.deleted", ...names.flatMap((n) => [`${n}.completed`, `${n}.failed`])]) {
    source.addEventListener(type, handle);
  }
}

function setUpDrop() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => { [...e.target.files].forEach(upload); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    [...e.dataTransfer.files].forEach(upload);
  });
}

async function loadRecent() {
  try {
    const body = await api(`${API}/media?limit=20`);
    $("#recent-list").replaceChildren(...body.items.filter((i) => i.state !== "deleted").map((i) => el("li", {},
      el("a", { href: `/items/${i.media_id}`, text: i.source_name || i.media_id }), " ",
      el("span", { class: `state ${i.state}`, text: i.state }),
      el("span", { class: "kind", text: i.kind }))));
  } catch (e) { /* shown by search or login */ }
}

// ---- an item's page ----
async function showItem(mediaId) {
  const view = $("#item-view");
  $("#home-view").hidden = true; view.hidden = false;
  view.replaceChildren(el("p", { text: "Loading…" }));
  let d;
  try { d = await api(`${API}/media/${mediaId}/details`); } catch (e) {
    view.replaceChildren(el("p", { class: "error", role: "alert", text: e.message })); return;
  }
  document.title = `${d.source_name || mediaId} · narra`;
  const actions = el("div", { class: "item-actions" },
    d.state === "failed" ? el("button", { type: "button", onclick: () => retry(mediaId) }, "Retry") : null,
    el("button", { type: "button", class: "danger", onclick: () => remove(mediaId, d.source_name) }, "Delete"),
    d.links.dagster_run ? el("a", { class: "button secondary", href: d.links.dagster_run, target: "_blank",
                                    rel: "noopener" }, "Runs in Dagster") : null);
  const parts = [
    el("div", { class: "item-head" },
      el("h1", {}, d.source_name || mediaId, el("span", { class: "kind", text: d.kind === "video" && d.has_video === false ? "audio" : d.kind })),
      el("span", { class: `state ${d.state}`, "data-testid": "item-state", text: d.state }), actions),
    el("p", { class: "meta", text: [d.size_bytes && `${(d.size_bytes / 1e6).toFixed(1)} MB`,
      d.duration_s && `${clock(d.duration_s)}`, d.pages && `${d.pages} pages`, d.language && `language ${d.language}`,
      d.width && `${d.width}×${d.height} px`, `media id ${mediaId}`].filter(Boolean).join(" · ") }),
    d.error ? el("p", { class: "error", role: "alert", text: classified(d.error, d.error_class) }) : null,
    d.note ? el("p", { class: "note", role: "status", text: d.note }) : null,
  ];
  let media = null;
  if (d.kind === "video" && d.state !== "deleted") {
    media = player(mediaId, d.has_video === false, 0);
    parts.push(media);
  }
  if (d.kind === "image") parts.push(boxedImage(`${API}/media/${mediaId}/source`, null));
  const seek = (t) => { if (media) { media.currentTime = t; media.play().catch(() => {}); } };
  const left = [], right = [];
  if (d.transcript && d.transcript.length) {
    left.push(el("h2", { text: "Transcript" }), el("ul", { class: "transcript" }, d.transcript.map((s) =>
      el("li", {}, el("button", { class: "link", type: "button", onclick: () => seek(s.start_s) }, clock(s.start_s)), " ", s.text))));
  }
  if (d.summary && d.summary.length) {
    right.push(el("h2", { text: "Summary" }), el("ul", {}, d.summary.map((s) => el("li", {},
      d.kind === "video" ? el("button", { class: "link", type: "button", onclick: () => seek(s.locator) }, clock(s.locator))
                         : el("span", { text: `p. ${s.locator}` }), " ", s.text))));
  }
  if (d.keywords && d.keywords.length) right.push(el("h2", { text: "Keywords" }), el("p", { text: d.keywords.join(", ") }));
  if (d.keyframes && d.keyframes.length) {
    left.push(el("h2", { text: "Keyframes" }), el("div", { class: "frames" }, d.keyframes.map((f) =>
      el("figure", {}, el("button", { class: "link", type: "button", onclick: () => seek(f.time_s),
                                      "aria-label": `Play from ${clock(f.time_s)}` },
        el("img", { src: f.thumb, alt: `Frame at ${clock(f.time_s)}`, loading: "lazy" })),
        el("figcaption", { text: [clock(f.time_s), ...f.labels.map((l) => l.name), ...f.text].join(" · ") })))));
  }
  if (d.labels && d.labels.length) right.push(el("h2", { text: "Labels" }), el("p", { text: d.labels.map((l) => `${l.name} (${l.score.toFixed(2)})`).join(", ") }));
  if (d.ocr && d.ocr.length) right.push(el("h2", { text: "Text in the picture" }), el("ul", {}, d.ocr.map((l) => el("li", { text: l.text }))));
  if (d.near_duplicates && d.near_duplicates.length) {
    right.push(el("h2", { text: "Near-duplicates" }), el("ul", {}, d.near_duplicates.map((n) =>
      el("li", {}, el("a", { href: `/items/${n.media_id}`, text: n.source_name || n.media_id })))));
  }
  if (d.page_text && d.page_text.length) {
    left.push(el("h2", { text: "Pages" }), el("ol", {}, d.page_text.map((p) => el("li", {},
      el("button", { class: "link", type: "button", onclick: (e) => {
        const holder = e.target.closest("li");
        if (!holder.querySelector("img")) holder.append(el("div", { class: "figure" }, el("img", {
          src: `${API}/media/${mediaId}/pages/${p.page}?width=1000`, alt: `Page ${p.page}` })));
      } }, `p. ${p.page}`), " ", el("span", { class: "snippet", text: p.text.slice(0, 160) })))));
  }
  parts.push(el("h2", { text: "Stages" }), el("table", {},
    el("thead", {}, el("tr", {}, el("th", { text: "stage" }), el("th", { text: "materialized" }), el("th", { text: "run" }))),
    el("tbody", {}, d.stages.map((s) => el("tr", {}, el("td", { text: s.asset }),
      el("td", { text: s.materialized_at || "—" }), el("td", { text: s.run_id ? s.run_id.slice(0, 8) : "—" }))))));
  parts.push(el("div", { class: "cols" }, el("div", {}, left), el("div", {}, right)));
  view.replaceChildren(...parts.filter(Boolean));
  if (d.state === "queued" || d.state === "running") {
    const source = new EventSource(`${API}/events?media_id=${mediaId}&after=${encodeURIComponent(await lastPosition())}`);
    const refresh = () => { source.close(); showItem(mediaId); };
    for (const type of ["analysis.completed", "analysis.failed"]) source.addEventListener(type, refresh);
  }
}

async function lastPosition() {
  try { return (await api(`${API}/events/position`)).position; } catch (e) { return "0"; }
}

async function retry(mediaId) {
  try { await api(`${API}/media/${mediaId}/retry`, { method: "POST" }); } catch (e) { alert(e.message); }
  showItem(mediaId);
}

async function remove(mediaId, name) {
  if (!confirm(`Delete ${name || mediaId} and everything found in it?`)) return;
  try { await api(`${API}/media/${mediaId}`, { method: "DELETE" }); } catch (e) { alert(e.message); return; }
  location.href = "/";
}

async function signOut() {
  await fetch(`${API}/session`, { method: "DELETE", headers: CSRF, credentials: "same-origin" });
  $("#sign-out").hidden = true;
  showLogin();
}

// The sign-out button, for a server with a token and a browser signed in.
async function showSession() {
  try {
    const response = await fetch(`${API}/session`, { credentials: "same-origin", headers: CSRF });
    const body = await response.json();
    $("#sign-out").hidden = !(body.required && body.signed_in);
  } catch (e) { /* an older server: no button */ }
}

// ---- routing ----
function showHome() {
  $("#home-view").hidden = false; $("#item-view").hidden = true; $("#login").hidden = true;
}

function route() {
  const match = location.pathname.match(/^\/items\/([0-9a-f]{16})$/);
  if (match) { showItem(match[1]); return; }
  showHome();
  loadRecent();
  const q = new URLSearchParams(location.search).get("q");
  if (q) { $("#q").value = q; search(q, false); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); search($("#q").value.trim()); });
  $("#login-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  showSession();
  setUpDrop();
  window.addEventListener("popstate", route);
  route();
});
