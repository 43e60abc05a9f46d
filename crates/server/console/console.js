// Petrel's console: a page of Petrel's own /v1 API, with the caller's API key. No framework,
// no CDN: this file and console.css are all of it, served from the binary.
"use strict";

const KEY = "petrel-console-key";
const NS = "petrel-console-ns";
const main = document.getElementById("main");
let who = null; // /v1/whoami
let timers = [];

function key() { return sessionStorage.getItem(KEY); }
function ns() { return sessionStorage.getItem(NS) || "default"; }

async function api(method, path, body, type) {
  const headers = { authorization: "Bearer " + key() };
  if (body !== undefined) headers["content-type"] = type || "application/json";
  const r = await fetch(path, { method, headers, body });
  if (r.status === 401) { logout(); throw new Error("the key was refused"); }
  return r;
}

async function json(method, path, body) {
  const r = await api(method, path, body);
  const text = await r.text();
  const value = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error(value && value.error ? value.error.message : r.status + "");
  return value;
}

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/** Whether the caller may deploy, delete and replay in the namespace. */
function canWrite() {
  if (!who) return false;
  if (who.owner || !who.authenticated) return true;
  const role = who.roles[ns()];
  return role === "admin" || role === "developer";
}

/** Runs `f` now and every `ms`, until the page changes; a failure shows, and the next run tries again. */
function every(ms, f) {
  const run = async () => {
    try { await f(); } catch (e) {
      if (!document.getElementById("refresh-error")) main.prepend(h("p", { id: "refresh-error", class: "error", role: "alert" }, e.message));
    }
  };
  run();
  timers.push(setInterval(run, ms));
}

function spark(values, cls, label) {
  const w = 120, hgt = 24, max = Math.max(1, ...values.map((v) => v || 0));
  const pts = values.map((v, i) => `${(i * w / (values.length - 1)).toFixed(1)},${(hgt - 2 - (v || 0) * (hgt - 4) / max).toFixed(1)}`).join(" ");
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("class", "spark " + cls);
  svg.setAttribute("width", w); svg.setAttribute("height", hgt);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.dataset.values = values.map((v) => v || 0).join(",");
  const line = document.createElementNS(svgNs, "polyline");
  line.setAttribute("points", pts);
  svg.append(line);
  return svg;
}

/** Petrel's own /metrics (filtered to the key's namespaces), as {name, labels, value}. */
async function metrics() {
  const text = await (await api("GET", "/metrics")).text();
  const out = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

// A zip of the files of a dropped or chosen directory (stored, not compressed: the server
// unpacks it), so that a directory deploys as `petrel deploy DIR` would send it.
const CRC = (() => { const t = []; for (let n = 0; n < 256; n++) { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; t[n] = c >>> 0; } return t; })();
function crc32(b) { let c = 0xffffffff; for (const x of b) c = CRC[(c ^ x) & 0xff] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; }
async function zipFiles(files) {
  const enc = new TextEncoder(), parts = [], central = [];
  let offset = 0;
  for (const { path, file } of files) {
    const data = new Uint8Array(await file.arrayBuffer()), name = enc.encode(path), crc = crc32(data);
    const head = new DataView(new ArrayBuffer(30));
    [[0, 0x04034b50, 4], [4, 20, 2], [14, crc, 4], [18, data.length, 4], [22, data.length, 4], [26, name.length, 2]]
      .forEach(([o, v, n]) => n === 4 ? head.setUint32(o, v, true) : head.setUint16(o, v, true));
    parts.push(head, name, data);
    const c = new DataView(new ArrayBuffer(46));
    [[0, 0x02014b50, 4], [4, 20, 2], [6, 20, 2], [16, crc, 4], [20, data.length, 4], [24, data.length, 4], [28, name.length, 2], [42, offset, 4]]
      .forEach(([o, v, n]) => n === 4 ? c.setUint32(o, v, true) : c.setUint16(o, v, true));
    central.push(c, name);
    offset += 30 + name.length + data.length;
  }
  const size = central.reduce((a, x) => a + x.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  [[0, 0x06054b50, 4], [8, files.length, 2], [10, files.length, 2], [12, size, 4], [16, offset, 4]]
    .forEach(([o, v, n]) => n === 4 ? end.setUint32(o, v, true) : end.setUint16(o, v, true));
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

function sum(xs) { return xs.reduce((a, b) => a + (b || 0), 0); }
function when(ms) { return new Date(ms).toISOString().replace("T", " ").slice(0, 19); }

// --- pages --------------------------------------------------------------------------------

function login(message) {
  main.replaceChildren(
    h("h1", {}, "Log in"),
    h("p", {}, "Paste an API key (petrel key create, or the owner's key in DATA_DIR/bootstrap-token)."),
    message ? h("p", { class: "error", role: "alert" }, message) : "",
    h("form", { id: "login", onsubmit: async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, ev.target.key.value.trim());
      try { await whoami(); location.hash = "#/functions"; route(); } catch (e) { login(e.message); }
    } },
      h("label", { for: "key" }, "API key "),
      h("input", { id: "key", name: "key", type: "password", autocomplete: "off", required: true }),
      " ", h("button", { type: "submit" }, "Log in")));
  document.getElementById("key").focus();
}

async function functions() {
  const search = h("input", { id: "search", type: "search", placeholder: "Search", "aria-label": "Search functions" });
  const sort = h("select", { id: "sort", "aria-label": "Sort by" },
    h("option", { value: "name" }, "name"), h("option", { value: "invocations" }, "invocations"),
    h("option", { value: "errors" }, "errors"));
  const body = h("tbody");
  main.replaceChildren(h("h1", {}, "Functions"), h("div", { class: "row" }, search, sort),
    h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "name"), h("th", { class: "wide" }, "runtime"), h("th", { class: "wide" }, "latest"),
        h("th", {}, "invocations (1 h)"), h("th", { class: "wide" }, "errors"), h("th", { class: "wide" }, "p99"))),
      body)));
  let list = [], series = {};
  const draw = () => {
    const q = search.value.toLowerCase();
    const rows = list.filter((f) => f.name.includes(q));
    const total = (f, k) => sum((series[f.name] || {})[k] || []);
    if (sort.value !== "name") rows.sort((a, b) => total(b, sort.value) - total(a, sort.value));
    body.replaceChildren(...rows.map((f) => {
      const s = series[f.name] || { invocations: new Array(60).fill(0), errors: new Array(60).fill(0), p99_ms: new Array(60).fill(null) };
      return h("tr", { "data-function": f.name },
        h("td", {}, h("a", { href: "#/fn/" + f.name }, f.name)), h("td", { class: "wide" }, f.runtime), h("td", { class: "wide" }, f.latest_version),
        h("td", {}, spark(s.invocations, "invocations", `${f.name}: ${sum(s.invocations)} invocations in the last hour`), " ", sum(s.invocations)),
        h("td", { class: "wide" }, spark(s.errors, "errors", `${f.name}: ${sum(s.errors)} errors`), " ", sum(s.errors)),
        h("td", { class: "wide" }, spark(s.p99_ms, "p99", `${f.name}: p99 per minute`), " ",
          (s.p99_ms.filter((x) => x !== null).pop() ?? "-") + " ms"));
    }));
  };
  search.addEventListener("input", draw);
  sort.addEventListener("change", draw);
  every(3000, async () => {
    list = (await json("GET", "/v1/functions?namespace=" + ns())).functions;
    series = (await json("GET", "/v1/series?namespace=" + ns())).functions;
    draw();
  });
}

async function fn(name) {
  const d = await json("GET", `/v1/functions/${name}?namespace=${ns()}`);
  const latest = d.versions[0];
  const spec = latest.spec;
  const aliases = (await json("GET", `/v1/functions/${name}/aliases?namespace=${ns()}`)).aliases || [];
  const out = h("div", { id: "invoke-result", "aria-live": "polite" });
  const event = h("textarea", { id: "event", "aria-label": "Event (JSON)" }, '{"name": "console"}');
  const invocations = h("tbody");
  const logs = h("pre", { id: "logs", "aria-live": "polite" });
  const dlq = h("tbody");
  const triggers = h("tbody");
  const queue = h("p", { id: "queue" });
  const usage = h("p", { id: "usage" });
  const instances = h("p", { id: "instances" });
  const rollouts = h("p", { id: "rollouts" });
  const lagHistory = {};
  const mode = h("select", { id: "invoke-mode", "aria-label": "Invoke as" },
    h("option", { value: "event" }, "raw event"), h("option", { value: "http" }, "HTTP request"));
  const method = h("select", { id: "http-method", "aria-label": "Method" }, ["GET", "POST", "PUT", "DELETE"].map((m) => h("option", {}, m)));
  const path = h("input", { id: "http-path", value: "/?name=console", "aria-label": "Path after /fn/" + name });
  const write = canWrite();
  main.replaceChildren(
    h("h1", {}, name),
    h("p", {}, h("a", { href: d.url }, d.url)),
    h("h2", {}, "Configuration"),
    h("dl", { id: "config" },
      h("dt", {}, "runtime"), h("dd", {}, spec.runtime),
      h("dt", {}, "handler"), h("dd", {}, spec.handler),
      h("dt", {}, "memory"), h("dd", {}, spec.memory_mb + " MB"),
      h("dt", {}, "timeout"), h("dd", {}, spec.timeout_ms + " ms"),
      h("dt", {}, "instances"), h("dd", {}, `${spec.min_instances} to ${spec.max_instances}, ${spec.concurrency} requests each`),
      h("dt", {}, "environment"), h("dd", {}, Object.entries(spec.env || {}).map(([k, v]) => h("div", {}, `${k}=${v}`))),
      // Only the names of secrets: their values never reach the page.
      h("dt", {}, "secrets"), h("dd", {}, (spec.secrets || []).join(", ") || "none")),
    h("h2", {}, "Versions and aliases"),
    h("div", { class: "scroll" }, h("table", {}, h("tbody", {},
      d.versions.slice(0, 10).map((v) => h("tr", {}, h("td", {}, "v" + v.version), h("td", {}, when(v.created_at)),
        h("td", { class: "wide" }, v.digest.slice(0, 12)))),
      aliases.map((a) => h("tr", {}, h("td", {}, a.name), h("td", {}, JSON.stringify(a.weights || a.version || a)), h("td", {})))))),
    h("h2", {}, "Instances"),
    instances,
    rollouts,
    h("h2", {}, "Invoke"),
    h("div", { class: "row" }, mode, method, path),
    event,
    h("div", { class: "row" }, h("button", { id: "invoke", type: "button", onclick: async () => {
      const t0 = performance.now();
      const base = ns() === "default" ? `/fn/${name}` : `/fn/${name}.${ns()}`;
      const r = mode.value === "http"
        ? await api(method.value, base + path.value, method.value === "GET" || method.value === "DELETE" ? undefined : event.value)
        : await api("POST", `/v1/functions/${name}/invoke?namespace=${ns()}`, event.value);
      const text = await r.text();
      const ms = (performance.now() - t0).toFixed(1);
      const heads = [...r.headers].filter(([k]) => k.startsWith("x-petrel") || k === "content-type").map(([k, v]) => `${k}: ${v}`).join("\n");
      out.replaceChildren(h("p", {}, h("strong", { id: "invoke-status" }, r.status), ` in ${ms} ms`), h("pre", {}, heads), h("pre", { id: "invoke-body" }, text));
    } }, "Invoke")),
    out,
    h("h2", {}, "Recent invocations"),
    h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "id"), h("th", {}, "started"),
      h("th", {}, "outcome"), h("th", {}, "duration"), h("th", { class: "wide" }, "cold"))), invocations)),
    h("h2", {}, "Logs (live)"),
    logs,
    h("h2", {}, "Triggers"),
    h("div", { class: "scroll" }, h("table", {}, triggers)),
    h("h2", {}, "Async queue"),
    queue,
    h("h2", {}, "Usage, last hour"),
    h("div", { id: "usage-chart" }),
    usage,
    h("h2", {}, "Dead letters"),
    h("div", { class: "scroll" }, h("table", {}, dlq)),
    write ? h("div", { class: "row" }, h("button", { id: "delete", class: "danger", type: "button", onclick: async () => {
      if (!confirm(`Delete ${name} with all its versions?`)) return;
      await json("DELETE", `/v1/functions/${name}?namespace=${ns()}`);
      location.hash = "#/functions";
    } }, "Delete function")) : "");
  every(2000, async () => {
    const recs = (await json("GET", `/v1/functions/${name}/invocations?namespace=${ns()}&limit=20`)).invocations;
    invocations.replaceChildren(...recs.map((r) => h("tr", { "data-invocation": r.id }, h("td", {}, r.id), h("td", {}, when(r.started_at)),
      h("td", {}, r.outcome), h("td", {}, r.duration_ms + " ms"), h("td", { class: "wide" }, r.cold_start ? "cold" : ""))));
    const r = await api("GET", `/v1/functions/${name}/logs?namespace=${ns()}&tail=20`);
    const lines = (await r.text()).split("\n").filter(Boolean).map((l) => JSON.parse(l));
    logs.textContent = lines.map((l) => `${when(l.ts)} ${l.invocation || ""} ${l.line}`).join("\n");
    const t = (await json("GET", `/v1/functions/${name}/triggers?namespace=${ns()}`)).triggers;
    // Lag, as this page has seen it since it opened (the server keeps no history of it).
    for (const x of t) (lagHistory[x.name] = lagHistory[x.name] || []).push(x.lag || 0);
    triggers.replaceChildren(...(t.length ? t.map((x) => h("tr", { "data-trigger": x.name }, h("td", {}, x.name), h("td", {}, x.kind),
      h("td", { class: "wide" }, x.source), h("td", {}, x.state), h("td", {}, x.error || ""),
      h("td", {}, spark(lagHistory[x.name].slice(-60).concat(lagHistory[x.name].length < 2 ? [x.lag || 0] : []), "lag", `${x.name}: lag`), " lag ", x.lag ?? "-")))
      : [h("tr", {}, h("td", {}, "none"))]));
    const m = await metrics();
    const mine = (n) => m.filter((x) => x.name === n && x.labels.namespace === ns() && x.labels.function === name);
    const states = mine("petrel_pool").map((x) => `${x.value} ${x.labels.state}`).join(", ");
    const cold = mine("petrel_cold_starts_total").reduce((a, x) => a + x.value, 0);
    instances.textContent = `${states || "no instances"}; ${cold} cold starts on this node`;
    const ro = ((await json("GET", `/v1/functions/${name}/rollouts?namespace=${ns()}`)).rollouts || []).filter((r) => r.state === "running" || r.state === "paused");
    rollouts.textContent = ro.length ? ro.map((r) => `rollout of ${r.alias} from v${r.from_version} to v${r.to_version}: ${r.state}, step ${r.step + 1}`).join("; ") : "no rollout in progress";
    const hour = (await json("GET", "/v1/series?namespace=" + ns())).functions[name];
    if (hour) document.getElementById("usage-chart").replaceChildren(spark(hour.gb_seconds, "gbs", `${name}: GB-s per minute`), " GB-s per minute");
    const pending = (await json("GET", `/v1/functions/${name}/async?namespace=${ns()}&limit=100`)).invocations;
    const count = (st) => pending.filter((x) => x.status === st).length;
    queue.textContent = `${count("queued")} queued, ${count("running")} running, ${count("succeeded")} succeeded, ${count("failed") + count("dead")} failed (of the last ${pending.length})`;
    const u = ((await json("GET", `/v1/usage?namespace=${ns()}&since=1h`)).functions || []).find((f) => f.function === name);
    usage.textContent = u ? `${u.invocations} invocations, ${u.errors} errors, ${u.gb_seconds.toFixed(4)} GB-s` : "none";
    const dead = (await json("GET", `/v1/functions/${name}/dlq?namespace=${ns()}`)).invocations;
    dlq.replaceChildren(...dead.map((x) => h("tr", { "data-dead": x.id }, h("td", {}, x.id), h("td", {}, x.error || ""),
      h("td", {}, write ? h("button", { class: "secondary", type: "button", onclick: async () => {
        await json("POST", `/v1/functions/${name}/dlq/replay?namespace=${ns()}`, JSON.stringify({ ids: [x.id] }));
      } }, "Replay") : ""))));
  });
}

function deploy() {
  if (!canWrite()) { main.replaceChildren(h("p", {}, "Your key cannot deploy in this namespace.")); return; }
  const name = h("input", { id: "deploy-name", required: true, pattern: "[a-z][a-z0-9\\-]*", "aria-label": "Function name" });
  const file = h("input", { id: "deploy-file", type: "file", accept: ".zip,application/zip", "aria-label": "Package (zip with petrel.toml)" });
  const out = h("div", { id: "deploy-result", "aria-live": "polite" });
  const progress = h("progress", { id: "deploy-progress", max: 100, value: 0, hidden: true });
  const send = (blob) => new Promise((done) => {
    // XMLHttpRequest, for the upload's progress; then the server checks (and compiles) it.
    const x = new XMLHttpRequest();
    x.open("PUT", `/v1/functions/${name.value}?namespace=${ns()}`);
    x.setRequestHeader("authorization", "Bearer " + key());
    x.setRequestHeader("content-type", "application/zip");
    progress.hidden = false;
    out.replaceChildren(h("p", {}, `Uploading ${blob.size} bytes ...`));
    x.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = 100 * e.loaded / e.total; };
    x.upload.onload = () => out.replaceChildren(h("p", {}, "Uploaded; the server checks the package (and compiles a component) ..."));
    x.onload = () => {
      const v = JSON.parse(x.responseText || "{}");
      out.replaceChildren(x.status < 300 ? h("p", {}, `Deployed ${v.name} version ${v.version}: `, h("a", { href: "#/fn/" + v.name }, v.url))
        : h("p", { class: "error", role: "alert" }, v.error ? v.error.message : String(x.status)));
      done();
    };
    x.onerror = () => { out.replaceChildren(h("p", { class: "error", role: "alert" }, "the upload failed")); done(); };
    x.send(blob);
  });
  const dir = h("input", { id: "deploy-dir", type: "file", webkitdirectory: true, "aria-label": "A function directory" });
  dir.addEventListener("change", async () => {
    const files = [...dir.files].map((f) => ({ path: f.webkitRelativePath.split("/").slice(1).join("/"), file: f }))
      .filter((f) => !/(^|\/)(\.git|node_modules|target|__pycache__)(\/|$)/.test(f.path));
    if (!files.some((f) => f.path === "petrel.toml")) { out.replaceChildren(h("p", { class: "error", role: "alert" }, "the directory has no petrel.toml")); return; }
    await send(await zipFiles(files));
  });
  const drop = h("div", { class: "drop", tabindex: 0 }, "Drop a zip with its petrel.toml here, or choose one: ", file,
    h("br"), "or a function directory: ", dir);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });
  main.replaceChildren(h("h1", {}, "Deploy"),
    h("form", { onsubmit: (e) => { e.preventDefault(); if (file.files[0]) send(file.files[0]); } },
      h("div", { class: "row" }, h("label", { for: "deploy-name" }, "Name"), name), drop,
      h("div", { class: "row" }, h("button", { id: "deploy", type: "submit" }, "Deploy"), progress)),
    out);
}

async function overview() {
  const box = h("div");
  main.replaceChildren(h("h1", {}, "Overview"), box);
  every(3000, async () => {
    const series = (await json("GET", "/v1/series?namespace=" + ns())).functions;
    const inv = sum(Object.values(series).map((s) => sum(s.invocations)));
    const err = sum(Object.values(series).map((s) => sum(s.errors)));
    let nodes = [h("p", { class: "muted" }, "The node list is the owner's to see.")];
    if (who.owner) {
      const n = await json("GET", "/v1/nodes");
      nodes = [h("table", {}, h("tbody", {}, (n.nodes || []).map((x) => h("tr", {}, h("td", {}, x.id || x.node_id || ""), h("td", {}, x.state || ""), h("td", {}, x.address || "")))))];
      if (!(n.nodes || []).length) nodes = [h("p", {}, "One node (not in cluster mode).")];
    }
    const m = await metrics();
    const budget = (kind) => (m.find((x) => x.name === "petrel_memory_budget_mib" && x.labels.kind === kind) || {}).value;
    const codes = m.filter((x) => x.name === "petrel_requests_rejected_total" && x.value > 0);
    box.replaceChildren(h("dl", {}, h("dt", {}, "namespace"), h("dd", {}, ns()),
      h("dt", {}, "invocations, last hour (this node)"), h("dd", { id: "total-invocations" }, inv),
      h("dt", {}, "errors, last hour"), h("dd", {}, err),
      h("dt", {}, "memory budget"), h("dd", { id: "budget" }, budget("limit") === undefined ? "the owner's to see" : `${budget("used")} of ${budget("limit")} MiB held by live instances`)),
      h("h2", {}, "Refused requests by error code"),
      codes.length ? h("table", { id: "codes" }, h("tbody", {}, codes.map((x) => h("tr", {}, h("td", {}, x.labels.code), h("td", {}, x.value))))) : h("p", {}, "none"),
      h("h2", {}, "Nodes"), ...nodes);
  });
}

// --- routing ------------------------------------------------------------------------------

async function whoami() {
  who = await json("GET", "/v1/whoami");
  const sel = document.getElementById("ns");
  const names = who.owner ? ["default", ...Object.keys(who.roles).filter((n) => n !== "default")] : Object.keys(who.roles);
  if (!names.includes(ns()) && names.length) sessionStorage.setItem(NS, names[0]);
  sel.replaceChildren(...names.map((n) => h("option", { value: n, selected: n === ns() }, n)));
  document.getElementById("nav").hidden = false;
  for (const a of document.querySelectorAll("[data-needs=write]")) a.hidden = !canWrite();
}

function logout() {
  sessionStorage.removeItem(KEY);
  who = null;
  document.getElementById("nav").hidden = true;
  location.hash = "#/login";
}

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  if (!key()) return login();
  try {
    if (!who) await whoami();
    const [, page, arg] = location.hash.split("/");
    if (page === "fn" && arg) await fn(decodeURIComponent(arg));
    else if (page === "deploy") deploy();
    else if (page === "overview") await overview();
    else await functions();
    main.focus();
  } catch (e) {
    main.replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
  }
}

document.getElementById("logout").addEventListener("click", logout);
document.getElementById("ns").addEventListener("change", (e) => { sessionStorage.setItem(NS, e.target.value); who = null; route(); });
window.addEventListener("hashchange", route);
route();
