// plvm web page: plain JS, no build step, no external assets. Talks to the /api endpoints of the same app.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { token: sessionStorage.getItem("plvm-token") || "", session: null, photo: null, photoSent: false, busy: false };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  return JSON.stringify(detail);
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) $("#token-form").hidden = false;
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { detail = detailText((await response.json()).detail); } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return response;
}

function setStatus(node, text, kind = "") { node.textContent = text; node.className = `status ${kind}`; }

// ------------------------------------------------------------------ info and concepts
async function loadInfo() {
  try {
    const info = await (await api("/api/info")).json();
    $("#info").textContent = `model ${info.model} · base ${info.base_model} · ${info.concepts} concept(s) · identify threshold ${info.limits.identify_threshold}`;
    return true;
  } catch (err) {
    $("#info").textContent = err.status === 401 ? "this server needs an API token" : `error: ${err.message}`;
    return false;
  }
}

async function thumbnail(img, url) {
  try {
    const blob = await (await api(url)).blob();
    img.src = URL.createObjectURL(blob);
  } catch (_) { img.alt = "(no image)"; }
}

async function loadConcepts() {
  const list = $("#concept-list");
  const concepts = await (await api("/api/concepts")).json();
  list.replaceChildren();
  if (!concepts.length) list.append(el("li", { class: "hint" }, "No concepts yet."));
  for (const c of concepts) {
    const img = el("img", { alt: c.token });
    if (c.image_url) thumbnail(img, c.image_url);
    const remove = el("button", { class: "remove", type: "button", title: `remove ${c.token}` }, "remove");
    remove.addEventListener("click", async () => {
      if (!confirm(`Remove ${c.token}?`)) return;
      try { await api(`/api/concepts/${encodeURIComponent(c.name)}`, { method: "DELETE" }); } catch (err) { setStatus($("#add-status"), err.message, "error"); }
      await refresh();
    });
    list.append(el("li", { dataset: { concept: c.name } }, img, el("span", { class: "cname" }, c.token), remove));
  }
}

async function refresh() { await loadInfo(); await loadConcepts(); }

$("#add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData();
  const name = $("#concept-name").value.trim();
  const file = $("#concept-image").files[0];
  if (!file) { setStatus($("#add-status"), "choose a reference photo", "error"); return; }
  form.append("name", name);
  form.append("image", file);
  form.append("replace", $("#concept-replace").checked ? "true" : "false");
  setStatus($("#add-status"), "encoding…");
  try {
    const concept = await (await api("/api/concepts", { method: "POST", body: form })).json();
    setStatus($("#add-status"), `added ${concept.token}`, "ok");
    $("#add-form").reset();
    await refresh();
    if (state.photo) await identifyPhoto();
  } catch (err) {
    setStatus($("#add-status"), err.message, "error");
  }
});

// ------------------------------------------------------------------ photo and identify
function renderIdentify(result) {
  const box = $("#identify");
  box.replaceChildren();
  if (!result.matches.length) { box.append(el("p", { class: "hint" }, "No stored concepts to compare with yet.")); return; }
  const table = el("table", { class: "scores", "data-testid": "identify-table" });
  table.append(el("tr", {}, el("th", {}, "concept"), el("th", {}, "score"), el("th", {}, ""), el("th", {}, "")));
  for (const m of result.matches) {
    const scored = m.score !== null && m.score !== undefined;  // null: a person concept, no face in the photo
    const pct = scored ? Math.max(0, Math.min(100, (m.score + 1) * 50)) : 0;
    const mark = Math.max(0, Math.min(100, (result.threshold + 1) * 50));
    const bar = el("div", { class: "bar", title: `threshold ${result.threshold}` }, el("span", { style: `width:${pct}%` }), el("i", { style: `left:${mark}%` }));
    table.append(el("tr", { class: m.present ? "present" : "", dataset: { concept: m.name } },
      el("td", { class: "name" }, m.token), el("td", {}, scored ? m.score.toFixed(3) : "–"), el("td", {}, bar),
      el("td", { title: m.reason || "" }, m.present ? "present" : (m.reason === "no face found" ? "no face found" : ""))));
  }
  box.append(el("p", { class: "hint" }, `similarity of reference features (threshold ${result.threshold})`), table);
}

async function identifyPhoto() {
  if (!state.photo) return;
  const form = new FormData();
  form.append("image", state.photo);
  try {
    renderIdentify(await (await api("/api/identify", { method: "POST", body: form })).json());
  } catch (err) {
    $("#identify").replaceChildren(el("p", { class: "error" }, err.message));
  }
}

$("#photo-input").addEventListener("change", async () => {
  const file = $("#photo-input").files[0];
  if (!file) return;
  state.photo = file;
  state.photoSent = false;
  const preview = $("#photo-preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  await identifyPhoto();
});

// ------------------------------------------------------------------ chat
function chips(active) {
  const frag = document.createDocumentFragment();
  if (!active.length) frag.append("none");
  for (const a of active) {
    const score = a.score === null || a.score === undefined ? "" : ` ${a.score.toFixed(2)}`;
    frag.append(el("span", { class: "chip", dataset: { concept: a.name, source: a.source } }, a.token, " ", el("small", {}, `${a.source}${score}`)));
  }
  return frag;
}

function addMessage(role, text) {
  const msg = el("div", { class: `msg ${role}`, "data-testid": `msg-${role}` }, el("span", { class: "text" }, text));
  $("#chat-log").append(msg);
  $("#chat-log").scrollTop = $("#chat-log").scrollHeight;
  return msg;
}

async function newChat() {
  const { session_id } = await (await api("/api/chats", { method: "POST" })).json();
  state.session = session_id;
  state.photoSent = false;
  $("#chat-log").replaceChildren();
  $("#active").replaceChildren("active concepts: none");
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) onEvent(JSON.parse(line));
    }
  }
}

$("#ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (state.busy) return;
  const text = $("#question").value;
  const form = new FormData();
  form.append("text", text);
  form.append("stream", "true");
  const withPhoto = state.photo && !state.photoSent;
  if (withPhoto) form.append("image", state.photo);
  const user = addMessage("user", text);
  if (withPhoto) user.append(el("span", { class: "meta" }, `with photo ${state.photo.name}`));
  state.busy = true;
  $("#ask-form button").disabled = true;
  let reply = null;
  try {
    if (!state.session) await newChat();
    const response = await api(`/api/chats/${state.session}/messages`, { method: "POST", body: form });
    $("#question").value = "";
    if (withPhoto) state.photoSent = true;
    reply = addMessage("assistant", "");
    const textNode = reply.querySelector(".text");
    await readEvents(response, (ev) => {
      if (ev.event === "start") {
        $("#active").replaceChildren("active concepts: ", chips(ev.active_concepts));
        reply.dataset.active = ev.active_concepts.map((a) => a.name).join(",");
      } else if (ev.event === "text") {
        textNode.textContent += ev.text;
        $("#chat-log").scrollTop = $("#chat-log").scrollHeight;
      } else if (ev.event === "done") {
        textNode.textContent = ev.answer;
        reply.append(el("span", { class: "meta" }, "active: ", chips(ev.active_concepts)));
        reply.dataset.done = "true";
      } else if (ev.event === "error") {
        reply.classList.add("error");
        textNode.textContent = `error: ${ev.detail}`;
        reply.dataset.done = "true";
      }
    });
  } catch (err) {
    user.remove();
    const msg = addMessage("error", `error: ${err.message}`);
    msg.dataset.done = "true";
    if (err.status === 404 && /chat session/.test(err.message)) state.session = null;
  } finally {
    state.busy = false;
    $("#ask-form button").disabled = false;
  }
});

$("#new-chat").addEventListener("click", () => newChat().catch((err) => addMessage("error", err.message)));

$("#token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.token = $("#token").value.trim();
  sessionStorage.setItem("plvm-token", state.token);
  if (await loadInfo()) { $("#token-form").hidden = true; await start(); }
});

async function start() {
  if (!(await loadInfo())) return;
  await loadConcepts();
  await newChat();
  document.body.dataset.ready = "true";
}

start().catch((err) => { $("#info").textContent = `error: ${err.message}`; });
