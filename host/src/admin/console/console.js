// The payfn admin console: polls the admin API and renders what it says.
// Everything shown comes from /admin/v1 with the operator's token; the page
// writes data as text only (textContent), never as markup.
"use strict";

const API = "/admin/v1";
const TOKEN_KEY = "payfn-admin-token";
/// How often the page refreshes while it is visible.
const POLL_MS = 2000;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  timer: null,
  /// The previous poll's invocation and error counts per component/version,
  /// to turn counts into rates.
  previous: null,
  busy: false,
  /// Components whose versions the operator has open.
  open: new Set(),
  /// What the sections with buttons last drew, to redraw only on change.
  drawn: {},
};

// ---- small DOM helpers ----------------------------------------------------

/// An element with attributes (`class`, `data-*`, properties) and children
/// (nodes, or strings added as text).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key === "type" || key === "min" || key === "max" || key === "accept" || key === "placeholder" || key === "title") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);
const num = (n) => (n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US"));
const ms = (n) => (n ? Number(n).toFixed(2) : "–");
const short = (digest) => (digest ? digest.slice(0, 12) : "–");
const time = (unixMs) => (unixMs ? new Date(unixMs).toISOString().replace("T", " ").slice(0, 19) + "Z" : "–");

function health(up) {
  return el("span", { class: up ? "ok" : "bad" }, up ? "up" : "down");
}

/// Minor units as the currency's major unit, exactly as many decimals as it has.
function money(minor, currency) {
  let digits = 2;
  try {
    digits = new Intl.NumberFormat("en-US", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
  } catch (_) { /* an unknown code: two decimals */ }
  const value = Number(minor) / 10 ** digits;
  return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function replaceRows(tbody, rows, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colSpan: 20 }, empty))]));
}

function notify(text, isError) {
  const notice = $("notice");
  notice.textContent = text;
  notice.className = isError ? "notice error" : "notice";
  notice.hidden = false;
}

// ---- the API ----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body, contentType) {
  const headers = { Authorization: `Bearer ${state.token}`, "X-Payfn-Actor": "admin-console" };
  if (body !== undefined && contentType) headers["Content-Type"] = contentType;
  const response = await fetch(API + path, { method, headers, body, cache: "no-store" });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const message = json && json.error ? `${json.error.code}: ${json.error.message}` : `${response.status} ${text}`;
    throw new ApiError(response.status, message);
  }
  return json;
}

const postJson = (path, value) => api("POST", path, JSON.stringify(value), "application/json");

// ---- signing in -------------------------------------------------------------

function showSignIn(message) {
  stopPolling();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("console").hidden = true;
  $("nav").hidden = true;
  $("live").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  state.drawn = {};
}

async function signIn(token) {
  state.token = token;
  try {
    await api("GET", "/components");
  } catch (e) {
    showSignIn(e.status === 401 ? "That token is not valid." : `Cannot sign in: ${e.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("sign-in").hidden = true;
  $("console").hidden = false;
  $("nav").hidden = false;
  $("live").hidden = false;
  startPolling();
}

// ---- polling ---------------------------------------------------------------

function startPolling() {
  stopPolling();
  refresh();
  state.timer = setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
}

function stopPolling() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const [listing, status] = await Promise.all([api("GET", "/components"), api("GET", "/status")]);
    renderComponents(listing);
    renderTraffic(listing);
    renderShards(status);
    renderPlacement(await api("GET", "/shards"));
    await renderDeadLetters(status);
    renderBackends(status);
    renderConsumers(status);
    renderSettlement(status);
    await renderFailedEvents();
    $("updated").textContent = `live · updated ${new Date().toLocaleTimeString("en-GB")}`;
    $("live-dot").className = "dot ok";
  } catch (e) {
    if (e.status === 401) { showSignIn("The token was refused; sign in again."); return; }
    $("updated").textContent = `update failed: ${e.message}`;
    $("live-dot").className = "dot bad";
  } finally {
    state.busy = false;
  }
}

/// Runs an operator action, reports how it went, and refreshes at once.
async function act(what, action) {
  try {
    const result = await action();
    notify(`${what}: done${result ? ` (${result})` : ""}`, false);
  } catch (e) {
    notify(`${what}: ${e.message}`, true);
  }
  await refresh();
}

// ---- components --------------------------------------------------------------

function renderComponents(listing) {
  const body = $("components-body");
  // Keep what the operator is typing: a form being filled is not redrawn.
  const editing = body.querySelector("form.deploy input:focus, form.deploy select:focus, input.percent:focus") ||
    [...body.querySelectorAll("input[type=file]")].some((input) => input.files.length);
  if (editing) return;
  // Redrawn only when what serves changes, so a button is never replaced
  // under the operator's pointer (the figures live in Traffic).
  const key = JSON.stringify(listing.components.map((c) => [c.active, c.versions.map((v) => [v.digest, v.label, v.role])]));
  if (key === state.drawn.components) return;
  state.drawn.components = key;
  body.replaceChildren(...listing.components.flatMap(component));
}

/// Two rows: the component's summary, and its versions and deploy form
/// (shown while the operator has it open).
function component(c) {
  const active = c.active || {};
  const label = (digest) => {
    const v = c.versions.find((v) => v.digest === digest);
    return v && v.label ? `${v.label} (${short(digest)})` : short(digest);
  };
  const open = state.open.has(c.component);
  const toggle = el("button", {
    type: "button", class: "toggle", title: "versions and deploy",
    onclick: () => {
      if (state.open.has(c.component)) state.open.delete(c.component); else state.open.add(c.component);
      detail.hidden = !state.open.has(c.component);
      toggle.textContent = detail.hidden ? "Versions ▸" : "Versions ▾";
    },
  }, open ? "Versions ▾" : "Versions ▸");
  const rollback = el("button", {
    type: "button", class: "rollback", title: "Back to the previous version, or end the canary",
    disabled: !active.previous_digest && !active.canary_digest,
    onclick: () => {
      if (!confirm(`Roll back ${c.component}?`)) return;
      act(`roll back ${c.component}`, async () => {
        const report = await postJson(`/components/${encodeURIComponent(c.component)}/rollback`, {});
        return `now ${short(report.active.digest)}`;
      });
    },
  }, "Roll back");
  const summary = el("tr", { class: "component", "data-component": c.component },
    el("td", {}, el("strong", {}, c.component)),
    el("td", { class: "active-version mono" }, label(active.digest)),
    el("td", { class: "canary-version mono" }, active.canary_digest ? `${label(active.canary_digest)} at ${active.canary_percent}%` : "–"),
    el("td", { class: "mono" }, active.previous_digest ? label(active.previous_digest) : "–"),
    el("td", {}, `${time(active.changed_at)} by ${active.changed_by || "–"}`, el("div", { class: "muted" }, active.origin || "")),
    el("td", { class: "actions" }, toggle, " ", rollback));
  const rows = c.versions.map((v) => el("tr", { "data-digest": v.digest, class: v.role ? `role-${v.role}` : "" },
    el("td", { class: "mono" }, short(v.digest)),
    el("td", {}, v.label || ""),
    el("td", {}, v.role || ""),
    el("td", {}, time(v.deployed_at)),
    el("td", {}, v.deployed_by),
    el("td", { class: "num" }, num(v.size)),
    el("td", { class: "actions" },
      v.role === "active" ? null : el("button", {
        type: "button", class: "activate",
        onclick: () => {
          if (!confirm(`Make ${short(v.digest)} serve all of ${c.component}?`)) return;
          act(`activate ${c.component} ${short(v.digest)}`, async () => {
            await postJson(`/components/${encodeURIComponent(c.component)}/activate`, { version: v.digest });
          });
        },
      }, "Activate"),
      v.role === "active" ? null : canaryControl(c.component, v.digest),
    ),
  ));
  const detail = el("tr", { class: "detail", "data-component": c.component, hidden: !open },
    el("td", { colSpan: 6 },
      el("table", { class: "versions" },
        el("thead", {}, el("tr", {}, ["version", "label", "role", "deployed", "by", "bytes", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows)),
      deployForm(c.component)));
  return [summary, detail];
}

function canaryControl(name, digest) {
  const percent = el("input", { type: "number", min: 1, max: 99, value: 10, class: "percent", title: "percent of merchants" });
  const button = el("button", {
    type: "button", class: "canary",
    onclick: () => act(`canary ${name} ${short(digest)}`, async () => {
      await postJson(`/components/${encodeURIComponent(name)}/canary`, { version: digest, percent: Number(percent.value) });
    }),
  }, "Canary");
  return el("span", { class: "canary-control" }, percent, "% ", button);
}

function deployForm(name) {
  const file = el("input", { type: "file", accept: ".wasm,application/wasm", class: "deploy-file", required: true });
  const label = el("input", { type: "text", class: "deploy-label", placeholder: "label (optional)" });
  const mode = el("select", { class: "deploy-mode" },
    el("option", { value: "activate" }, "and activate"),
    el("option", { value: "canary" }, "as a canary"),
    el("option", { value: "upload" }, "only (activate later)"));
  const percent = el("input", { type: "number", min: 1, max: 99, value: 10, class: "percent deploy-percent", title: "canary percent" });
  const form = el("form", { class: "deploy" },
    el("span", {}, "Deploy "), file, label, mode, percent, "% ",
    el("button", { type: "submit", class: "deploy-submit" }, "Upload"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    const query = new URLSearchParams();
    if (label.value.trim()) query.set("label", label.value.trim());
    if (mode.value === "activate") query.set("activate", "true");
    if (mode.value === "canary") query.set("canary", percent.value);
    act(`deploy ${name}`, async () => {
      const answer = await api("POST", `/components/${encodeURIComponent(name)}/versions?${query}`,
        await chosen.arrayBuffer(), "application/wasm");
      form.reset();
      return `version ${short(answer.version.digest)}, prepared in ${answer.prepare_ms.toFixed(0)} ms`;
    });
  });
  return form;
}

// ---- traffic -----------------------------------------------------------------

function renderTraffic(listing) {
  const now = performance.now();
  const counts = new Map();
  const rows = [];
  for (const c of listing.components) {
    for (const v of c.versions) {
      const key = `${c.component}/${v.digest}`;
      counts.set(key, v.stats);
      if (!v.stats.invocations && !v.role) continue;
      const before = state.previous && state.previous.counts.get(key);
      const seconds = state.previous ? (now - state.previous.at) / 1000 : 0;
      const rate = (field) => (before && seconds > 0 ? Math.max(0, (v.stats[field] - before[field]) / seconds).toFixed(1) : "–");
      rows.push(el("tr", { "data-component": c.component, "data-digest": v.digest },
        el("td", {}, c.component), el("td", { class: "mono" }, v.label ? `${v.label} (${short(v.digest)})` : short(v.digest)),
        el("td", {}, v.role || ""),
        el("td", { class: "num rate" }, rate("invocations")), el("td", { class: "num" }, rate("errors")),
        el("td", { class: "num invocations" }, num(v.stats.invocations)), el("td", { class: "num" }, num(v.stats.errors)),
        el("td", { class: "num" }, ms(v.stats.mean_ms)), el("td", { class: "num" }, ms(v.stats.p50_ms)),
        el("td", { class: "num" }, ms(v.stats.p99_ms))));
    }
  }
  state.previous = { at: now, counts };
  replaceRows($("traffic-body"), rows, "no invocations yet");
}

// ---- shards, dead letters ----------------------------------------------------

function renderShards(status) {
  replaceRows($("shards-body"), status.shards.map((s) => {
    const rows = (table) => (s.rows[table] === undefined ? "–" : num(s.rows[table]) + (s.rows[table] >= 1000000 ? "+" : ""));
    const outbox = s.outbox || {};
    return el("tr", { "data-shard": s.name },
      el("td", {}, el("strong", {}, s.name), el("div", { class: "muted" }, s.backend)),
      el("td", {}, health(s.up), s.error ? el("div", { class: "error" }, s.error) : null),
      el("td", {}, `${s.pool.in_use} of ${s.pool.open} open (max ${s.pool.max})`),
      el("td", { class: "num" }, rows("payments")), el("td", { class: "num" }, rows("refunds")),
      el("td", { class: "num" }, rows("ledger_entries")), el("td", { class: "num" }, rows("outbox")),
      el("td", { class: "num pending" }, num(outbox.pending)),
      el("td", { class: `num dead ${outbox.dead_lettered ? "bad" : ""}` }, num(outbox.dead_lettered)),
      el("td", {}, outbox.oldest_pending || "–"));
  }), "no shards");
}

/// Merchants, payments and size per shard, the move form's targets, and
/// the moves (in progress first).
function renderPlacement(answer) {
  const size = (bytes) => (bytes < 0 ? "–" : bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`);
  replaceRows($("placement-body"), answer.shards.map((s) => el("tr", { "data-shard": s.name },
    el("td", {}, el("strong", {}, s.name), el("div", { class: "muted" }, s.dialect)),
    el("td", { class: "num merchants" }, num(s.merchants)),
    el("td", { class: "num" }, s.payments < 0 ? "unreachable" : num(s.payments)),
    el("td", { class: "num" }, size(s.bytes)),
    el("td", {}, s.acceptNew ? `yes (weight ${s.weight})` : "no"))), "no shards");
  const select = $("move-to");
  const names = answer.shards.map((s) => s.name);
  if (JSON.stringify(names) !== state.drawn.moveTargets) {
    state.drawn.moveTargets = JSON.stringify(names);
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  }
  const inProgress = new Set(answer.moving.map((m) => m.id));
  const moves = [...answer.moving, ...answer.moves.filter((m) => !inProgress.has(m.id))];
  replaceRows($("moves-body"), moves.map((m) => el("tr", { "data-move": m.id, class: inProgress.has(m.id) ? "moving" : "" },
    el("td", {}, `#${m.id}`), el("td", { class: "num" }, m.merchant), el("td", {}, m.from), el("td", {}, m.to),
    el("td", { class: `step ${m.step}` }, m.step), el("td", { class: "num" }, num(m.rowsCopied)),
    el("td", { class: "num" }, m.pauseMs ?? "–"), el("td", {}, new Date(m.startedAt).toLocaleString("en-GB")),
    el("td", { class: "muted" }, m.detail || ""))), "no moves yet");
}

function wireMoveForm() {
  $("move-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const merchant = Number($("move-merchant").value);
    const to = $("move-to").value;
    if (!merchant || !to) return;
    if (!confirm(`Move merchant ${merchant} to ${to}? Its writes pause for the cut-over (under a second).`)) return;
    act(`move merchant ${merchant} to ${to}`, async () => {
      const record = await postJson("/moves", { merchant, to });
      return `move #${record.id} started`;
    });
  });
}

async function renderDeadLetters(status) {
  const shards = status.shards.filter((s) => s.outbox && s.outbox.dead_lettered > 0);
  const lists = await Promise.all(shards.map((s) => api("GET", `/shards/${encodeURIComponent(s.name)}/dead-letters?limit=100`)));
  const body = $("dead-letters-body");
  const key = JSON.stringify(lists);
  if (key === state.drawn.deadLetters) return;
  state.drawn.deadLetters = key;
  if (!lists.length) {
    body.replaceChildren(el("p", { class: "empty" }, "none: every outbox row is published or still being tried"));
    return;
  }
  body.replaceChildren(...lists.map((list, i) => {
    const shard = shards[i];
    const redrive = (what, request) => act(what, async () => {
      const answer = await postJson(`/shards/${encodeURIComponent(shard.name)}/dead-letters/redrive`, request);
      return `${answer.redriven} row(s) handed back to the relay`;
    });
    return el("article", { class: "dead-letters", "data-shard": shard.name },
      el("header", {}, el("h3", {}, `${shard.name}: ${num(shard.outbox.dead_lettered)} dead-lettered`),
        el("button", {
          type: "button", class: "redrive-all",
          onclick: () => {
            if (confirm(`Re-drive every dead letter of ${shard.name}?`)) redrive(`re-drive all on ${shard.name}`, { all: true });
          },
        }, "Re-drive all")),
      el("table", {},
        el("thead", {}, el("tr", {}, ["event", "type", "aggregate", "merchant", "created", "attempts", "last error", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, list.dead_letters.map((d) => el("tr", { "data-event": d.event_id },
          el("td", { class: "mono" }, d.event_id), el("td", {}, d.event_type), el("td", { class: "mono" }, d.aggregate_id),
          el("td", { class: "num" }, d.merchant_id), el("td", {}, d.created_at), el("td", { class: "num" }, d.attempts),
          el("td", { class: "error-text" }, d.last_error || ""),
          el("td", {}, el("button", {
            type: "button", class: "redrive",
            onclick: () => redrive(`re-drive ${d.event_id}`, { event_ids: [d.event_id] }),
          }, "Re-drive")))))));
  }));
}

// Events a Kafka trigger gave up on; a re-drive sends them back to their
// topic, where each consumer applies each event at most once.
async function renderFailedEvents() {
  const body = $("failed-events-body");
  let list;
  try {
    list = await api("GET", "/events/failed?limit=100");
  } catch (e) {
    // The dead-letter topics are read from the broker: while it is away
    // this section says so, and the rest of the page stays live.
    state.drawn.failedEvents = null;
    body.replaceChildren(el("p", { class: "error" }, `cannot list failed events now: ${e.message}`));
    return;
  }
  const key = JSON.stringify(list);
  if (key === state.drawn.failedEvents) return;
  state.drawn.failedEvents = key;
  const events = list.failed_events;
  if (!events.length) {
    body.replaceChildren(el("p", { class: "empty" }, "none: every consumed event was handled"));
    return;
  }
  const redrive = (what, request) => act(what, async () => {
    const answer = await postJson("/events/redrive", request);
    const sent = answer.from_dead_letter_topics + answer.from_failed_events;
    if (answer.stopped) throw new Error(`${sent} re-driven, then stopped: ${answer.stopped}`);
    return `${sent} event(s) sent back to their topics`;
  });
  const kept = (k) => (k.kind === "dead_letter_topic" ? `${k.topic}/${k.partition}/${k.offset}` : `${k.shard}: failed_events #${k.id}`);
  body.replaceChildren(el("article", { class: "failed-events" },
    el("header", {}, el("h3", {}, `${num(events.length)}${list.more ? "+" : ""} failed`),
      el("button", {
        type: "button", class: "redrive-all-events",
        onclick: () => {
          if (confirm("Re-drive every failed event back to its topic?")) redrive("re-drive all failed events", { all: true });
        },
      }, "Re-drive all")),
    el("table", {},
      el("thead", {}, el("tr", {}, ["event", "type", "merchant", "consumer", "from", "kept in", "error", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, events.map((e) => el("tr", { "data-event": e.event_id || "" },
        el("td", { class: "mono" }, e.event_id || "–"), el("td", {}, e.event_type || "–"),
        el("td", { class: "num" }, e.merchant_id ?? "–"), el("td", {}, e.consumer || "–"),
        el("td", { class: "mono" }, e.source || "–"), el("td", { class: "mono" }, kept(e.kept_in)),
        el("td", { class: "error-text" }, e.error || ""),
        el("td", {}, e.event_id ? el("button", {
          type: "button", class: "redrive-event",
          onclick: () => redrive(`re-drive ${e.event_id}`, { event_ids: [e.event_id] }),
        }, "Re-drive") : null)))))));
}

// ---- backends, consumers, settlement ---------------------------------------------

function renderBackends(status) {
  replaceRows($("backends-body"), [
    ["Kafka (events)", status.events], ["Redis (kv)", status.kv],
  ].map(([name, h]) => el("tr", { "data-service": name.split(" ")[0].toLowerCase() },
    el("td", {}, name), el("td", {}, h.backend), el("td", {}, health(h.up)), el("td", {}, h.detail))), "");
}

function renderConsumers(status) {
  replaceRows($("consumers-body"), status.consumers.map((c) => el("tr", { "data-group": c.group },
    el("td", {}, c.group), el("td", {}, c.component), el("td", {}, c.topics.join(", ")),
    el("td", { class: `num lag ${c.lag > 0 ? "warn" : ""}` }, c.error ? "–" : num(c.lag)),
    el("td", { class: "partitions" }, c.error ? el("span", { class: "error" }, c.error)
      : c.partitions.map((p) => `${p.topic}/${p.partition}: ${p.committed === null ? "–" : num(p.committed)} / ${num(p.end)}`).join(" · ")))),
    "no Kafka triggers");
}

function renderSettlement(status) {
  replaceRows($("settlement-body"), status.settlement.map((d) => el("tr", { "data-day": d.day, "data-currency": d.currency },
    el("td", {}, d.day), el("td", {}, d.currency), el("td", { class: "num" }, num(d.merchants)),
    el("td", { class: "num" }, num(d.captures)), el("td", { class: "num" }, num(d.refunds)),
    el("td", { class: "num gross" }, money(d.gross_captured, d.currency)), el("td", { class: "num" }, money(d.refunded, d.currency)),
    el("td", { class: "num" }, money(d.fee, d.currency)), el("td", { class: "num net" }, money(d.net, d.currency)))),
    "nothing settled in the last 14 days");
  $("settlement-errors").textContent = (status.settlement_errors || []).map((e) => `left out: ${e}`).join("; ");
}

// ---- start ---------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
  });
  $("sign-out").addEventListener("click", () => showSignIn(""));
  wireMoveForm();
  document.addEventListener("visibilitychange", () => { if (!document.hidden && state.token) refresh(); });
  if (state.token) signIn(state.token); else showSignIn("");
});
