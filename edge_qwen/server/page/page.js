// The chat page of `edge-qwen serve`: served by the server itself, no external requests.
// Model text is untrusted: it is only ever put into the page as text nodes (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], attachments: [], controller: null, models: [] };

// --- Markdown, built as DOM nodes ------------------------------------------------------------

function inline(text, parent) {
  // `code`, **bold**, *italic*, [label](http(s) URL); everything else is text
  const pattern = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\n]+\*)|(\[[^\]\n]+\]\((https?:\/\/[^\s)]+)\))/;
  let rest = text;
  while (rest) {
    const m = pattern.exec(rest);
    if (!m) { parent.append(rest); break; }
    if (m.index) parent.append(rest.slice(0, m.index));
    const token = m[0];
    let node;
    if (m[1]) { node = document.createElement("code"); node.textContent = token.slice(1, -1); }
    else if (m[2]) { node = document.createElement("strong"); inline(token.slice(2, -2), node); }
    else if (m[3]) { node = document.createElement("em"); inline(token.slice(1, -1), node); }
    else {
      node = document.createElement("a");
      node.textContent = token.slice(1, token.indexOf("]("));
      node.href = m[5]; node.target = "_blank"; node.rel = "noopener noreferrer";
    }
    parent.append(node);
    rest = rest.slice(m.index + token.length);
  }
}

function codeBlock(code) {
  const pre = document.createElement("pre");
  const el = document.createElement("code");
  el.textContent = code;
  const copy = document.createElement("button");
  copy.type = "button"; copy.className = "copy"; copy.textContent = "Copy";
  copy.onclick = () => navigator.clipboard && navigator.clipboard.writeText(code);
  pre.append(copy, el);
  return pre;
}

function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.split("\n");
  let para = [], list = null;
  const flush = () => {
    if (para.length) { const p = document.createElement("p"); inline(para.join("\n"), p); out.append(p); para = []; }
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = /^(\s*)```/.exec(line);  // a fence (indented in a list item too): up to the closing one
    if (fence) {  // (or the end, while streaming)
      flush();
      const body = [], indent = fence[1].length;
      for (i++; i < lines.length && !/^\s*```/.test(lines[i]); i++) {
        const cut = lines[i].length - lines[i].trimStart().length;
        body.push(lines[i].slice(Math.min(indent, cut)));
      }
      out.append(codeBlock(body.join("\n")));
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const item = /^\s*(?:[-*+]|(\d+)[.)])\s+(.*)$/.exec(line);
    if (heading) {
      flush();
      const h = document.createElement("h" + Math.min(6, heading[1].length + 2));
      inline(heading[2], h); out.append(h);
    } else if (item) {
      if (para.length) flush();
      const kind = item[1] ? "ol" : "ul";
      if (!list || list.tagName.toLowerCase() !== kind) { list = document.createElement(kind); out.append(list); }
      const li = document.createElement("li"); inline(item[2], li); list.append(li);
    } else if (!line.trim()) {
      flush();
    } else {
      list = null; para.push(line);
    }
  }
  flush();
  return out;
}
window.edgeQwenRender = (text) => { const div = document.createElement("div"); div.append(renderMarkdown(text)); return div; };

// --- the server --------------------------------------------------------------------------------

const KEY = "edge-qwen-key";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  // every API call carries the key (when one was given); a 401 asks for it (again)
  const response = await fetch(path, { ...options, headers: headers() });
  if (response.status === 401) {
    const had = sessionStorage.getItem(KEY) !== null;
    sessionStorage.removeItem(KEY);
    $("key").hidden = false; $("key-value").focus();
    throw new Unauthorized(had ? "401: that API key was refused; enter the server's key again"
                               : "401: this server needs its API key (serve --api-key); enter it above");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function loadModels() {
  const names = (await (await api("/v1/models")).json()).data.map((m) => m.id);
  const health = await (await api("/health")).json();
  const facts = new Map(health.models.map((m) => [m.name, m]));
  const of = (name) => facts.get(name) || facts.get(name.split(":")[0]) || {};  // BASE:ADAPTER
  state.models = names.map((name) => ({ ...of(name), name })).filter((m) => !m.pooling);  // no embedders
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => new Option(m.name, m.name)));
  select.onchange = showAttachments;
  showAttachments();
  $("status").textContent = "";
}

function showAttachments() {
  const chosen = state.models.find((m) => m.name === $("model").value);
  $("attach-image").hidden = $("attach-audio").hidden = !(chosen && chosen.media);
}

function say(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function readFile(input, kind) {
  const file = input.files[0];
  input.value = "";
  if (!file) return;
  const data = await new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.readAsDataURL(file);
  });
  state.attachments.push(kind === "image"
    ? { type: "image_url", image_url: { url: data } }
    : { type: "input_audio", input_audio: { data: String(data).split(",", 2)[1], format: "wav" } });
  $("attached").textContent = state.attachments.length + " attachment(s): " + file.name;
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  $("prompt").value = "";
  const content = state.attachments.length ? [...state.attachments, { type: "text", text }] : text;
  state.attachments = []; $("attached").textContent = "";
  state.messages.push({ role: "user", content });
  say("user", text);
  const answer = say("assistant", "");
  const thinking = document.createElement("details");
  thinking.className = "thinking"; thinking.hidden = true;
  const summary = document.createElement("summary"); summary.textContent = "Thinking";
  const thought = document.createElement("div");
  thinking.append(summary, thought);
  const body = document.createElement("div");
  answer.replaceChildren(thinking, body);
  let reply = "", reasoning = "";
  state.controller = new AbortController();
  $("stop").hidden = false; $("status").textContent = "answering…";
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", signal: state.controller.signal,
      body: JSON.stringify({ model: $("model").value, messages: state.messages, stream: true }),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      const events = buffered.split("\n\n");
      buffered = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (!data.startsWith("{")) continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = (chunk.choices[0] || {}).delta || {};
        if (delta.reasoning_content) { reasoning += delta.reasoning_content; thought.textContent = reasoning; thinking.hidden = false; }
        if (delta.content) { reply += delta.content; body.replaceChildren(renderMarkdown(reply)); }
      }
      answer.scrollIntoView({ block: "end" });
    }
    $("status").textContent = "";
  } catch (error) {
    if (error.name === "AbortError") $("status").textContent = "stopped";
    else { $("status").textContent = ""; say("error", String(error.message || error)); }
  } finally {
    if (reply) state.messages.push({ role: "assistant", content: reply });
    else {  // nothing was answered: the question goes back into the box, out of the conversation
      state.messages.pop(); answer.remove(); $("prompt").value = text;
    }
    state.controller = null;
    $("stop").hidden = true;
    answer.dataset.done = "1";
  }
}

function start() {
  loadModels().catch((error) => say("error", (error instanceof Unauthorized ? "" : "cannot list the models: ")
                                              + (error.message || error)));
}

window.addEventListener("DOMContentLoaded", () => {
  $("ask").onsubmit = send;
  $("prompt").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); };
  $("stop").onclick = () => state.controller && state.controller.abort();
  $("new").onclick = () => { state.messages = []; $("log").replaceChildren(); };
  $("image").onchange = () => readFile($("image"), "image");
  $("audio").onchange = () => readFile($("audio"), "audio");
  $("key").onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key-value").value);
    $("key-value").value = ""; $("key").hidden = true;
    $("status").textContent = "key kept for this tab";
    start();
  };
  start();
});
