// The web page: runs, a run's live progress, its records, and the streaming chat.
// Plain ES module, no build step: every page is drawn from the HTTP API under /v1, with the
// bearer token (when the server has tokens) kept in this tab's sessionStorage.

const TOKEN_KEY = "mitrailleuse.token";
const CHAT_KEY = "mitrailleuse.chat";
const ACTIVE = new Set(["queued", "running", "batch_submitted", "cancelling", "stopping"]);
const FINAL = new Set(["completed", "failed", "cancelled", "stopped_budget"]);
const RESUMABLE = new Set(["created", "cancelled", "stopped_budget", "failed"]);
const PAGE_SIZE = 50;
const view = document.getElementById("view");

class Unauthorized extends Error {}

// --- talking to the API ------------------------------------------------------------------

function authHeaders(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function send(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      detail = (await response.json()).detail || detail;
    } catch {}
    throw new Error(detail);
  }
  return response;
}

async function api(path, options = {}) {
  return (await send(path, options)).json();
}

function postJson(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

// Server-Sent Events over fetch: EventSource cannot send a bearer token.
async function* sse(path, lastId, signal) {
  const headers = authHeaders(lastId ? { "Last-Event-ID": lastId } : {});
  const response = await fetch(path, { headers, signal });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = {};
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (line === "") {
        if (event.data !== undefined) yield event;
        event = {};
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        event[name] = name === "data" && event.data !== undefined ? `${event.data}\n${text}` : text;
      }
    }
  }
}

// Follow a stream to its end, reconnecting with the last event's id when the connection drops.
async function follow(path, lastId, onEvent, signal) {
  for (;;) {
    try {
      for await (const event of sse(path, lastId, signal)) {
        lastId = event.id || lastId;
        if (onEvent(event, lastId) === false) return;
      }
      return;
    } catch (error) {
      if (signal.aborted || error instanceof Unauthorized) throw error;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

async function download(path, name) {
  const blob = await (await send(path)).blob();
  const link = el("a", { href: URL.createObjectURL(blob), download: name });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

// --- drawing ------------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

// Replace a node's children: lists are spread, null and undefined left out.
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

const enc = encodeURIComponent;
const money = (usd) =>
  usd === null || usd === undefined ? "–" : `$${Number(usd).toFixed(Math.abs(usd) >= 0.01 ? 2 : 6)}`;
const count = (n) => Math.round(n).toLocaleString();
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const stateBadge = (state, id) => el("span", { class: `state ${state}`, id }, state);
const json = (value) => el("pre", {}, JSON.stringify(value, null, 2));

function taskHref(kind, id) {
  const [user, folder] = id.split("/");
  return `#/${kind}/${enc(user)}/${enc(folder)}`;
}

function showLogin() {
  fill(view, document.getElementById("login").content.cloneNode(true));
  document.getElementById("login-form").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("login-token").value);
    try {
      await api("/v1/tasks?page_size=1");
      route();
    } catch (error) {
      sessionStorage.removeItem(TOKEN_KEY);
      document.getElementById("login-error").textContent =
        error instanceof Unauthorized ? "That token is not known here." : error.message;
    }
  });
}

// --- the runs ----------------------------------------------------------------------------

async function runsPage(signal, params) {
  const state = params.get("state") || "";
  const provider = params.get("provider") || "";
  const page = params.get("page") || "";
  const query = new URLSearchParams({ order: "newest", page_size: PAGE_SIZE, state, provider });
  if (page) query.set("page_token", page);
  const tasks = await api(`/v1/tasks?${query}`);
  const filter = (name, value, choices) =>
    el(
      "select",
      {
        id: `filter-${name}`,
        onchange: (changed) => {
          const next = new URLSearchParams({ state, provider, [name]: changed.target.value });
          location.hash = `#/?${next}`;
        },
      },
      el("option", { value: "" }, `any ${name}`),
      choices.map((c) => el("option", { value: c, selected: c === value }, c)),
    );
  const providers = ["openai", "deepseek", "deepl", "anthropic", "gemini"];
  const states = [...ACTIVE, ...FINAL, "created"];
  const rows = tasks.tasks.map((task) =>
    el(
      "tr",
      { class: "clickable", "data-task-id": task.id, onclick: () => (location.hash = taskHref("run", task.id)) },
      el("td", {}, el("a", { href: taskHref("run", task.id) }, task.task_name), el("div", { class: "muted" }, task.id)),
      el("td", {}, stateBadge(task.state)),
      el("td", {}, task.api),
      el("td", {}, task.mode || "–"),
      el("td", { class: "num" }, `${task.counts.done} / ${task.counts.total}`),
      el("td", { class: "num" }, String(task.counts.failed)),
      el("td", { class: "num" }, String(task.counts.cached)),
      el("td", { class: "num" }, money(task.spent_usd)),
      el("td", {}, when(task.started_at)),
      el("td", {}, when(task.finished_at)),
    ),
  );
  fill(view,
    el("h1", {}, "Runs"),
    el("div", { class: "row" }, filter("state", state, states), filter("provider", provider, providers)),
    el(
      "table",
      { id: "runs-table" },
      el("thead", {}, el("tr", {}, ["task", "state", "provider", "mode", "done", "failed", "cached", "cost", "started", "ended"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows),
    ),
    tasks.tasks.length ? null : el("p", { class: "muted" }, "No tasks here yet."),
    el(
      "div",
      { class: "row" },
      page ? el("button", { class: "secondary", onclick: () => history.back() }, "← Newer") : null,
      tasks.next_page_token
        ? el("button", { class: "secondary", id: "runs-next", onclick: () => (location.hash = `#/?${new URLSearchParams({ state, provider, page: tasks.next_page_token })}`) }, "Older →")
        : null,
    ),
  );
  if (tasks.tasks.some((task) => ACTIVE.has(task.state))) {
    setTimeout(() => signal.aborted || runsPage(signal, params), 2000);
  }
}

// --- one run -----------------------------------------------------------------------------

// The request and token rates over time, each as a share of its limit (the dashed line).
function rateChart(samples) {
  const width = 600;
  const height = 90;
  const top = Math.max(1, ...samples.map((s) => Math.max(s.requests, s.tokens)));
  const x = (i) => (samples.length < 2 ? 0 : (i / (samples.length - 1)) * width);
  const y = (v) => height - 4 - (v / top) * (height - 8);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("id", "run-chart");
  svg.setAttribute("preserveAspectRatio", "none");
  const line = (points, colour, dash) => {
    const path = document.createElementNS(svg.namespaceURI, "polyline");
    path.setAttribute("points", points);
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", colour);
    path.setAttribute("stroke-width", "2");
    if (dash) path.setAttribute("stroke-dasharray", "6 4");
    svg.append(path);
  };
  line(`0,${y(1)} ${width},${y(1)}`, "#c0392b", true);
  line(samples.map((s, i) => `${x(i)},${y(s.requests)}`).join(" "), "#2456c8");
  line(samples.map((s, i) => `${x(i)},${y(s.tokens)}`).join(" "), "#1f8a4c");
  return svg;
}

async function runPage(signal, params, user, folder) {
  const base = `/v1/tasks/${enc(user)}/${enc(folder)}`;
  const id = `${user}/${folder}`;
  let task = await api(base);
  const samples = [];
  const figure = (label, key) => el("div", {}, label, el("b", { id: `run-${key}` }, "–"));
  const bar = el("div", { class: "bar", id: "run-bar" });
  const chart = el("div", {});
  const batches = el("div", { id: "run-batches" });
  const downloads = el("div", { class: "row", id: "downloads" });
  const cancel = el("button", { class: "danger", id: "cancel" }, "Cancel");
  const resume = el("button", { id: "resume" }, "Resume");
  const message = el("p", { class: "error", id: "run-message" });
  cancel.addEventListener("click", async () => {
    if (!confirm(`Cancel ${task.task_name}? Items in flight finish; nothing new is sent.`)) return;
    task = await postJson(`${base}/cancel`);
    draw(task);
  });
  resume.addEventListener("click", async () => {
    if (!confirm(`Send ${task.task_name} to the fleet? Items already answered are not paid again.`)) return;
    try {
      task = await postJson(`${base}/execute`);
      route();
    } catch (error) {
      message.textContent = error.message;
    }
  });
  fill(view,
    el("h1", {}, task.task_name, " ", stateBadge(task.state, "run-state")),
    el("p", { class: "muted" }, `${id} · ${task.api} · ${task.mode || "not run yet"}`),
    bar,
    el("div", { class: "figures" }, figure("done", "done"), figure("failed", "failed"), figure("cached", "cached"), figure("spent", "spent"), figure("projected", "projected"), figure("ETA", "eta"), figure("requests / min", "rate"), figure("tokens / min", "tokens")),
    chart,
    el("div", { class: "row" }, cancel, resume, el("a", { href: taskHref("records", id), id: "records-link" }, "Records →")),
    message,
    downloads,
    batches,
  );

  function draw(current, rates) {
    const counts = current.counts;
    const part = (n, kind) => el("span", { class: kind, style: `width:${counts.total ? (100 * n) / counts.total : 0}%` });
    fill(bar, part(counts.succeeded - counts.cached, "ok"), part(counts.cached, "cached"), part(counts.failed, "bad"));
    const state = document.getElementById("run-state");
    state.textContent = current.state;
    state.className = `state ${current.state}`;
    document.getElementById("run-done").textContent = `${counts.done} / ${counts.total}`;
    document.getElementById("run-failed").textContent = String(counts.failed);
    document.getElementById("run-cached").textContent = String(counts.cached);
    document.getElementById("run-spent").textContent = money(current.spent_usd);
    document.getElementById("run-projected").textContent = money(current.projected_usd);
    const share = (rate, limit) => (rates && limit ? rate / limit : 0);
    samples.push({
      t: Date.now() / 1000,
      done: counts.done,
      requests: share(rates?.requests_per_minute, rates?.requests_per_minute_limit),
      tokens: share(rates?.tokens_per_minute, rates?.tokens_per_minute_limit),
    });
    samples.splice(0, Math.max(0, samples.length - 120));
    const first = samples.find((s) => s.t >= samples[samples.length - 1].t - 20) || samples[0];
    const last = samples[samples.length - 1];
    const speed = last.t > first.t ? (last.done - first.done) / (last.t - first.t) : 0;
    const left = counts.total - counts.done;
    document.getElementById("run-eta").textContent = FINAL.has(current.state) ? "done" : speed > 0 ? `${Math.ceil(left / speed)} s` : "–";
    if (rates) {
      document.getElementById("run-rate").textContent = `${count(rates.requests_per_minute)} / ${count(rates.requests_per_minute_limit)}`;
      const tokens = rates.tokens_per_minute_limit ? ` / ${count(rates.tokens_per_minute_limit)}` : "";
      document.getElementById("run-tokens").textContent = `${count(rates.tokens_per_minute)}${tokens}`;
      fill(chart, el("p", { class: "muted" }, "requests (blue) and tokens (green) per minute, as a share of their limits (dashed)"), rateChart(samples));
    }
    cancel.disabled = !ACTIVE.has(current.state);
    resume.disabled = !RESUMABLE.has(current.state);
    resume.textContent = current.state === "created" ? "Start" : "Resume";
    if (FINAL.has(current.state) && !downloads.childElementCount) {
      for (const name of ["results.jsonl", "errors.jsonl", "results.csv"]) {
        downloads.append(el("button", { class: "secondary", "data-download": name, onclick: () => download(`${base}/download/${name}`, `${folder}-${name}`).catch((e) => (message.textContent = e.message)) }, `⬇ ${name}`));
      }
    }
  }

  async function drawBatches() {
    if (task.mode !== "batch") return;
    const found = await api(`${base}/batches`);
    fill(batches,
      el("h2", {}, "Native batches"),
      el("table", {}, el("thead", {}, el("tr", {}, ["#", "items", "step", "provider id", "raw status", "counts"].map((h) => el("th", {}, h)))),
        el("tbody", {}, found.map((b) => el("tr", {}, el("td", {}, String(b.number)), el("td", { class: "num" }, String(b.items)), el("td", {}, b.step), el("td", {}, b.batch_id || "–"), el("td", {}, b.raw_status || "–"), el("td", {}, JSON.stringify(b.request_counts)))))),
    );
  }

  draw(task);
  await drawBatches();
  if (!task.run_id) return;
  await follow(`${base}/events`, params.get("after") || "", (event) => {
    if (event.event === "error") {
      message.textContent = JSON.parse(event.data).detail;
      return false;
    }
    const progress = JSON.parse(event.data);
    task = { ...task, state: progress.state, counts: progress.counts, spent_usd: progress.spent_usd, projected_usd: progress.projected_usd };
    draw(task, progress.rates);
    if (progress.finished) {
      drawBatches();
      return false;
    }
    return true;
  }, signal);
}

// --- a run's records ---------------------------------------------------------------------

async function recordsPage(signal, params, user, folder) {
  const base = `/v1/tasks/${enc(user)}/${enc(folder)}`;
  const show = params.get("show") || "all";
  const q = params.get("q") || "";
  const offset = params.get("offset") || "0";
  const query = new URLSearchParams({ show, q, offset, limit: PAGE_SIZE });
  const page = await api(`${base}/records?${query}`);
  const detail = el("div", { id: "record-detail" });
  const layout = el("div", { class: "split" });
  const go = (changes) => (location.hash = `${taskHref("records", `${user}/${folder}`)}?${new URLSearchParams({ show, q, ...changes })}`);
  const search = el("input", { id: "records-search", type: "search", placeholder: "find text", value: q });
  search.addEventListener("keydown", (key) => key.key === "Enter" && go({ q: search.value, offset: 0 }));
  const rows = page.rows.map((row) =>
    el(
      "tr",
      { class: "clickable", "data-offset": row.offset, "data-status": row.status, onclick: () => open(row.offset) },
      el("td", { class: "num" }, String(row.index)),
      el("td", {}, row.id),
      el("td", {}, stateBadge(row.status === "succeeded" ? "completed" : "failed"), row.cached ? " cached" : "", row.similar_to ? " similar" : ""),
      el("td", {}, row.preview),
      el("td", { class: "num" }, String(row.attempts)),
      el("td", { class: "num" }, row.latency_ms === null ? "–" : `${row.latency_ms} ms`),
      el("td", { class: "num" }, money(row.cost_usd)),
    ),
  );

  async function open(at) {
    let found;
    try {
      found = await api(`${base}/records/${at}`);
    } catch (error) {
      fill(detail, el("p", { class: "error" }, error.message));
      return;
    }
    const record = found.record;
    const messages = found.request && found.request.messages;
    layout.classList.add("open");
    fill(detail,
      el("h2", {}, record.id, " ", stateBadge(record.status === "succeeded" ? "completed" : "failed")),
      el("h2", {}, "Request"),
      messages ? el("div", { class: "chat-log", id: "record-request" }, messages.map((m) => el("div", { class: `msg ${m.role === "user" ? "user" : "assistant"}` }, `${m.role}: ${typeof m.content === "string" ? m.content : JSON.stringify(m.content)}`))) : json(found.request),
      record.error ? [el("h2", {}, "Error"), el("pre", { id: "record-error" }, `${record.error.type}: ${record.error.message}`)] : null,
      record.parsed !== undefined ? [el("h2", {}, "Parsed"), json(record.parsed)] : null,
      el("h2", {}, "Output"),
      el("pre", { id: "record-output" }, record.output === null ? "–" : typeof record.output === "string" ? record.output : JSON.stringify(record.output, null, 2)),
      el("h2", {}, "Response"),
      json(record.response),
    );
  }

  layout.append(
    el("div", {},
      el("table", { id: "records-table" },
        el("thead", {}, el("tr", {}, ["#", "id", "status", "output", "attempts", "latency", "cost"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows)),
      page.rows.length ? null : el("p", { class: "muted" }, page.next_offset === null ? "No records here." : "None in this part of the file."),
      el("div", { class: "row" },
        offset !== "0" ? el("button", { class: "secondary", onclick: () => history.back() }, "← Back") : null,
        page.next_offset !== null ? el("button", { class: "secondary", id: "records-next", onclick: () => go({ offset: page.next_offset }) }, "Next →") : null,
        el("span", { class: "muted" }, `read ${Math.round((100 * page.scanned_to) / Math.max(page.size, 1))} % of the results`),
      ),
    ),
    detail,
  );
  if (signal.aborted) return;
  fill(view,
    el("h1", {}, "Records ", el("a", { href: taskHref("run", `${user}/${folder}`) }, `${user}/${folder}`)),
    el("div", { class: "row" },
      el("select", { id: "records-show", onchange: (changed) => go({ show: changed.target.value, offset: 0 }) },
        ["all", "failed", "cached", "similar"].map((s) => el("option", { value: s, selected: s === show }, s))),
      search,
    ),
    layout,
  );
}

// --- the chat ----------------------------------------------------------------------------

function chatState() {
  return JSON.parse(sessionStorage.getItem(CHAT_KEY) || "null") || { api: "openai", model: "", messages: [], session: null };
}

async function chatPage(signal) {
  const providers = await api("/v1/chat/providers");
  const state = chatState();
  const save = () => sessionStorage.setItem(CHAT_KEY, JSON.stringify(state));
  const log = el("div", { class: "chat-log", id: "chat-log" });
  const error = el("p", { class: "error", id: "chat-error" });
  const input = el("textarea", { id: "chat-input", placeholder: "Ask something" });
  const sendButton = el("button", { id: "chat-send" }, "Send");
  const apiSelect = el("select", { id: "chat-api" }, providers.map((p) => el("option", { value: p.api, selected: p.api === state.api }, p.api)));
  const modelSelect = el("select", { id: "chat-model" });
  const models = () => {
    const chosen = providers.find((p) => p.api === apiSelect.value) || providers[0];
    const names = [...new Set([chosen.model, ...chosen.models])].filter((m) => m !== "*");
    if (!names.includes(state.model)) state.model = chosen.model;
    fill(modelSelect, ...names.map((m) => el("option", { value: m, selected: m === state.model }, m)));
  };
  apiSelect.addEventListener("change", () => { state.api = apiSelect.value; models(); save(); });
  modelSelect.addEventListener("change", () => { state.model = modelSelect.value; save(); });
  models();

  const bubble = (role, text, id) => el("div", { class: `msg ${role}`, id }, text);
  fill(log, ...state.messages.map((m) => bubble(m.role, m.content)));

  async function stream() {
    const session = state.session;
    const answer = bubble("assistant", session.text, "chat-answer");
    document.getElementById("chat-answer")?.removeAttribute("id");
    log.append(answer);
    sendButton.disabled = true;
    await follow(session.url, session.lastId, (event, lastId) => {
      if (event.data === "[DONE]") {
        state.messages.push({ role: "assistant", content: session.text });
        state.session = null;
        save();
        return false;
      }
      if (event.event === "error") {
        error.textContent = JSON.parse(event.data).error.message;
        state.session = null;
        save();
        return false;
      }
      const chunk = JSON.parse(event.data);
      const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
      if (piece) {
        session.text += piece;
        answer.textContent = session.text;
      }
      session.lastId = lastId;
      save();
      return true;
    }, signal);
    sendButton.disabled = false;
  }

  sendButton.addEventListener("click", async () => {
    const text = input.value.trim();
    if (!text) return;
    error.textContent = "";
    state.messages.push({ role: "user", content: text });
    log.append(bubble("user", text));
    input.value = "";
    save();
    try {
      const opened = await postJson("/v1/chat/async", { api: state.api, model: state.model, messages: state.messages });
      state.session = { id: opened.session_id, url: opened.stream_url, text: "", lastId: "" };
      save();
      await stream();
    } catch (failed) {
      if (failed instanceof Unauthorized) throw failed;
      error.textContent = failed.message;
    }
  });

  fill(view,
    el("h1", {}, "Chat"),
    el("div", { class: "row" }, apiSelect, modelSelect, el("button", { class: "secondary", id: "chat-clear", onclick: () => { sessionStorage.removeItem(CHAT_KEY); route(); } }, "New chat")),
    log,
    input,
    el("div", { class: "row" }, sendButton),
    error,
  );
  if (state.session) await stream(); // a reload mid-answer: the rest, from where it stopped
}

// --- routing -----------------------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, runsPage],
  [/^#\/run\/([^/]+)\/([^/]+)$/, runPage],
  [/^#\/records\/([^/]+)\/([^/]+)$/, recordsPage],
  [/^#\/chat$/, chatPage],
];
let running = null;

async function route() {
  running?.abort();
  const controller = (running = new AbortController());
  const [path, query] = (location.hash || "#/").split("?");
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  if (!found) {
    fill(view, el("p", {}, "No such page. ", el("a", { href: "#/" }, "The runs")));
    return;
  }
  const [pattern, page] = found;
  const parts = path.match(pattern).slice(1).map(decodeURIComponent);
  try {
    await page(controller.signal, new URLSearchParams(query || ""), ...parts);
  } catch (error) {
    if (error instanceof Unauthorized) showLogin();
    else if (!controller.signal.aborted) view.append(el("p", { class: "error", id: "page-error" }, error.message));
  }
}

window.addEventListener("hashchange", route);
route();
