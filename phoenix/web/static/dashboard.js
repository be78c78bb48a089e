// phoenix dashboard: keeps a page live by polling its API route (main#live's
// data-api) and redrawing what the page marks: [data-field] elements, the
// bodies of table.live[data-rows] (by their <th data-field data-kind>), and
// the job's action buttons. Every value is set with textContent, never as
// HTML: a key or an error holding markup stays text. The server's CSP lets
// only this file run (no inline script).
"use strict";

const TOKEN_KEY = "phoenix-dashboard-token"; // kept for this tab only (sessionStorage)

// As phoenix.linux.untrusted.visible: controls and bidi overrides written out, so
// a key cannot hide or reorder what the page shows; and a lone surrogate (bytes
// that were not UTF-8, as JSON carries them) as \udcXX, as the server writes it.
const INVISIBLE = /[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
const ESCAPES = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };

function visible(text, multiline) {
  return text.replace(INVISIBLE, (c) => {
    if (multiline && (c === "\n" || c === "\t")) return c;
    if (ESCAPES[c]) return ESCAPES[c];
    const code = c.charCodeAt(0);
    return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0") : "\\u" + code.toString(16).padStart(4, "0");
  });
}

// As server.shown: the same text for the same value, first drawn there, redrawn here.
function format(value, kind) {
  if (value === null || value === undefined) return "-";
  // A time or a number another tool damaged (text in the column) is shown as it is, as the server does.
  const number = typeof value === "number" && Number.isFinite(value);
  if (kind === "time" && number) {
    const when = new Date(value * 1000);
    if (!Number.isNaN(when.getTime())) return when.toISOString().slice(0, 19).replace("T", " ");
  }
  if (kind === "seconds" && number) return value.toFixed(2);
  if (kind === "time" || kind === "seconds") return visible(String(value), false).slice(0, 40);
  if (kind === "json") return visible(JSON.stringify(value), false);
  return visible(String(value), kind === "pre");
}

function lookup(data, path) {
  return path.split(".").reduce((value, name) => (value === null || value === undefined ? value : value[name]), data);
}

function jobLink(key) {
  const link = document.createElement("a");
  // (as server.job_link: a key that is not UTF-8 cannot be put in an address, its escaped text is)
  link.href = "/job?" + new URLSearchParams({ key: format(key, "text") }).toString();
  link.textContent = format(key, "text");
  return link;
}

function actionButtons(job) {
  const action = ["failed", "cancelled"].includes(job.state) ? "retry"
    : ["pending", "running"].includes(job.state) ? "cancel" : null;
  if (action === null) return [];
  const button = document.createElement("button");
  button.type = "button";
  button.className = "action";
  button.dataset.action = action;
  button.dataset.key = format(job.key, "text"); // (as the server draws it)
  button.disabled = document.body.dataset.actions !== "on";
  button.textContent = action;
  return [button];
}

function cell(row, th) {
  const td = document.createElement("td");
  const field = th.dataset.field;
  const kind = th.dataset.kind;
  if (kind === "job") {
    td.append(jobLink(row[field]));
  } else if (kind === "state") {
    const badge = document.createElement("span");
    badge.className = "state state-" + String(row[field]);
    badge.textContent = format(row[field], "text");
    td.append(badge);
  } else if (kind === "actions") {
    td.append(...actionButtons(row));
  } else if (kind === "pre") {
    const pre = document.createElement("pre");
    pre.textContent = format(row[field], kind);
    td.append(pre);
  } else {
    td.textContent = format(row[field], kind);
  }
  return td;
}

function draw(root, data) {
  for (const table of root.querySelectorAll("table.live[data-rows]")) {
    const columns = Array.from(table.querySelectorAll("thead th"));
    const rows = (lookup(data, table.dataset.rows) || []).map((row) => {
      const tr = document.createElement("tr");
      tr.append(...columns.map((th) => cell(row, th)));
      return tr;
    });
    table.tBodies[0].replaceChildren(...rows);
  }
  for (const element of root.querySelectorAll("[data-field]")) {
    if (element.closest("table")) continue;
    element.textContent = format(lookup(data, element.dataset.field), element.dataset.kind);
  }
  for (const element of root.querySelectorAll("[data-job-actions]")) {
    element.replaceChildren(...actionButtons(data));
  }
  const next = root.querySelector("[data-next]");
  if (next) {
    next.hidden = !data.next_after;
    if (data.next_after) {
      const query = new URLSearchParams(location.search);
      query.set("after", data.next_after);
      next.href = "/jobs?" + query.toString();
    }
  }
}

function say(text, isError) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = isError ? "error" : "";
}

let refreshing = false;

async function refresh() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.api || refreshing) return;
  refreshing = true;
  try {
    const response = await fetch(live.dataset.api, { cache: "no-store", headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) {
      say("could not refresh: " + visible(String(body.error || response.status), false), true);
      return;
    }
    draw(live, body);
    document.getElementById("updated").textContent = "updated " + new Date().toTimeString().slice(0, 8);
  } catch (error) {
    say("could not refresh: " + visible(String(error), false), true);
  } finally {
    refreshing = false;
  }
}

async function act(button) {
  const key = button.dataset.key;
  const action = button.dataset.action;
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  button.disabled = true;
  try {
    const response = await fetch("/api/jobs/" + encodeURIComponent(key) + "/" + action, { method: "POST", headers });
    const body = await response.json();
    if (response.ok) {
      say(body.message || action + ": " + visible(key, false), false);
    } else if (response.status === 401) {
      say("the token is missing or wrong: enter the dashboard's token above", true);
    } else if (response.status === 504) {
      // delivered to a master that did not answer: neither done nor refused
      say(action + " result unknown: " + visible(String(body.error || response.status), false), true);
    } else if (response.status === 503) {
      say(action + " failed: " + visible(String(body.error || response.status), false), true);
    } else {
      say(action + " refused: " + visible(String(body.error || response.status), false), true);
    }
  } catch (error) {
    say(action + " failed: " + visible(String(error), false), true);
  } finally {
    button.disabled = false;
    refresh();
  }
}

function start() {
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.action");
    if (button && !button.disabled) act(button);
  });
  const tokenForm = document.getElementById("token-form");
  if (tokenForm) {
    tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("token");
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = "";
      say("token kept for this tab", false);
    });
  }
  const filters = document.getElementById("filters");
  if (filters) {
    // Filters apply in place: the address follows (a link to share), the page is not reloaded.
    filters.addEventListener("submit", (event) => {
      event.preventDefault();
      const query = new URLSearchParams();
      for (const [name, value] of new FormData(filters)) if (value) query.set(name, value);
      const suffix = query.toString() ? "?" + query.toString() : "";
      history.replaceState(null, "", "/jobs" + suffix);
      document.getElementById("live").dataset.api = "/api/jobs" + suffix;
      refresh();
    });
  }
  setInterval(refresh, Number(document.body.dataset.refreshMs) || 2000);
}

start();
