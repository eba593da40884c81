// The models page: every handler with its address, node and version columns, logistik's figures, filters.

import { get } from "./api.js";
import { ago, duration, fill, h, handlerHref, healthMarks, ms, num, registeredType, stamp, stateBadge, typeBadge } from "./dom.js";

const TYPE_ORDER = { model: 0, canary: 1, decoy: 2, deploy: 3 };
const STATES = ["active", "down", "gone", "disabled", "retired", "invalid"];
const TYPES = ["model", "canary", "decoy", "deploy"];

const figures = (v) => v.figures || null;
const answers = (v) => (v.figures ? v.figures.answers : null);
const errorsOf = (v) => (answers(v) ? answers(v).error + answers(v).refused : null);
const uw = (v, key) => (v.uwsgi ? v.uwsgi[key] : null);

function uwsgiCells(v) {
  if (!v.uwsgi) {
    return [{ key: "nostats", label: "uWSGI", cls: "muted nostats", colspan: 5, content: ["no stats"], text: "no stats" }];
  }
  const u = v.uwsgi;
  return [
    { key: "u-req", label: "Requests", cls: "num", content: [num(u.requests)] },
    { key: "u-exc", label: "Exceptions", cls: `num ${u.exceptions ? "err" : ""}`, content: [num(u.exceptions)] },
    { key: "u-up", label: "Uptime", cls: "num", content: [duration(u.uptime_s)] },
    { key: "u-status", label: "Status", cls: "", content: [h("span", { class: `uw-status uw-${String(u.status).toLowerCase()}` }, u.status ?? "–")] },
    { key: "u-load", label: "Load", cls: "num", content: [num(u.load)] },
  ];
}

function answerCell(v) {
  const a = answers(v);
  if (!a) return ["–"];
  const title = Object.entries(a).map(([k, n]) => `${k} ${n}`).join(", ");
  return [h("span", { class: "answers", title },
    h("span", { class: "ok" }, num(a.ok)), h("span", { class: "sep" }, "/"),
    h("span", { class: errorsOf(v) ? "err" : "zero" }, num(errorsOf(v))), h("span", { class: "sep" }, "/"),
    h("span", { class: a.timeout ? "warn" : "zero" }, num(a.timeout)))];
}

/** The latest error known of a model: its last failed call, else the probe that failed. */
function latestError(v) {
  const f = figures(v);
  if (f && f.last_error) return { text: f.last_error, at: f.last_error_at };
  if (v.circuit && v.circuit.last_error) return { text: v.circuit.last_error, at: v.circuit.since };
  if (v.reachable && !v.reachable.ok) return { text: v.reachable.detail, at: v.reachable.checked_at };
  return null;
}

function lastError(v) {
  const error = latestError(v);
  if (!error) return [h("span", { class: "muted" }, "–")];
  return [h("span", { class: "last-error", title: `${error.text}\n${stamp(error.at)}` },
    h("span", { class: "err-text" }, error.text), h("span", { class: "when" }, ago(error.at)))];
}

/** The cells of one row; `key` is what the cell shows, so unchanged cells are left alone. */
function cells(v) {
  const f = figures(v);
  const lat = f ? f.latency_ms : {};
  return [
    { key: "event", label: "Event", cls: "event secondary-phone", content: [v.event || h("span", { class: "muted" }, "none")] },
    { key: "name", label: "Name", cls: "name", content: [
      h("a", { href: handlerHref(v.node_id), class: "row-link", title: registeredType(v.node_id) && registeredType(v.node_id) !== v.model_type ? `${v.node_id} (now ${v.model_type})` : v.node_id }, v.name),
      v.version ? h("span", { class: "version" }, v.version) : null,
      v.problem ? h("span", { class: "problem-mark", title: v.problem, "aria-label": `problem: ${v.problem}` }, "!") : null] },
    { key: "node", label: "Node", cls: "num hide-narrow", content: [v.node] },
    { key: "hostname", label: "Hostname", cls: "host", content: [v.hostname] },
    { key: "endpoint", label: "Endpoint", cls: "mono hide-narrow", content: [v.endpoint] },
    { key: "port", label: "Port", cls: "num mono hide-narrow", content: [String(v.port)] },
    { key: "type", label: "Type", cls: "", content: [typeBadge(v)] },
    { key: "state", label: "State", cls: "state", content: [stateBadge(v.state), ...healthMarks(v)] },
    ...uwsgiCells(v),
    { key: "calls", label: "Calls", cls: "num strong", content: [f ? num(f.requests) : "–",
      v.in_flight ? h("span", { class: "in-flight", title: "calls waiting for the model's answer now" }, ` · ${num(v.in_flight)} in flight`) : null] },
    { key: "answers", label: "OK / err / t-o", cls: "num", content: answerCell(v) },
    { key: "p50", label: "p50", cls: "num", content: [ms(lat.p50)] },
    { key: "p99", label: "p99", cls: "num", content: [ms(lat.p99)] },
    { key: "rate", label: "Events/min", cls: "num", content: [f ? num(f.per_minute_5m) : "–"] },
    { key: "lasterr", label: "Last error", cls: "lasterr", content: lastError(v) },
  ];
}

const COLUMNS = [
  { label: "Event", sort: (v) => v.event, group: "" },
  { label: "Name", sort: (v) => v.name, group: "" },
  { label: "Node", sort: (v) => Number(v.node) || v.node, group: "", cls: "num hide-narrow" },
  { label: "Hostname", sort: (v) => v.hostname, group: "" },
  { label: "Endpoint", sort: (v) => v.endpoint, group: "", cls: "hide-narrow" },
  { label: "Port", sort: (v) => v.port, group: "", cls: "num hide-narrow" },
  { label: "Type", sort: (v) => TYPE_ORDER[v.model_type], group: "" },
  { label: "State", sort: (v) => STATES.indexOf(v.state), group: "" },
  { label: "Requests", sort: (v) => uw(v, "requests"), group: "uWSGI", cls: "num" },
  { label: "Exceptions", sort: (v) => uw(v, "exceptions"), group: "uWSGI", cls: "num" },
  { label: "Uptime", sort: (v) => uw(v, "uptime_s"), group: "uWSGI", cls: "num" },
  { label: "Status", sort: (v) => uw(v, "status"), group: "uWSGI" },
  { label: "Load", sort: (v) => uw(v, "load"), group: "uWSGI", cls: "num" },
  { label: "Calls", sort: (v) => (figures(v) ? figures(v).requests : null), group: "logistik", cls: "num" },
  { label: "OK / err / t-o", sort: (v) => errorsOf(v), group: "logistik", cls: "num", title: "answers: ok / errors (error and refused) / timeouts" },
  { label: "p50", sort: (v) => (figures(v) ? figures(v).latency_ms.p50 : null), group: "logistik", cls: "num", title: "median latency" },
  { label: "p99", sort: (v) => (figures(v) ? figures(v).latency_ms.p99 : null), group: "logistik", cls: "num", title: "99th percentile latency" },
  { label: "/min", sort: (v) => (figures(v) ? figures(v).per_minute_5m : null), group: "logistik", cls: "num", title: "calls per minute over the last 5 minutes (since logistik first called it, when that is less)" },
  { label: "Last error", sort: (v) => (figures(v) ? figures(v).last_error_at : null), group: "logistik" },
];

function defaultOrder(a, b) {
  return (a.event || "").localeCompare(b.event || "") || (a.group_id || "").localeCompare(b.group_id || "")
    || TYPE_ORDER[a.model_type] - TYPE_ORDER[b.model_type] || a.name.localeCompare(b.name)
    || String(a.node).localeCompare(String(b.node), undefined, { numeric: true }) || a.node_id.localeCompare(b.node_id);
}

function compare(x, y) {
  if (x === y) return 0;
  if (x === null || x === undefined) return 1;
  if (y === null || y === undefined) return -1;
  if (typeof x === "number" && typeof y === "number") return x - y;
  return String(x).localeCompare(String(y), undefined, { numeric: true });
}

function matches(view, text) {
  if (!text) return true;
  const hay = [view.name, view.node_id, view.event, view.hostname, view.endpoint, view.version, view.group_id,
    view.model_type, view.state, view.return_to, (view.tags || []).join(" ")].join(" ").toLowerCase();
  return text.toLowerCase().split(/\s+/).filter(Boolean).every((word) => hay.includes(word));
}

function select(name, label, all) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label),
    h("select", { name }, h("option", { value: "" }, all)));
}

function setOptions(selectNode, values, labelOf = (v) => v) {
  const key = JSON.stringify(values);
  if (selectNode.dataset.options === key) return;
  selectNode.dataset.options = key;
  const current = selectNode.value;
  const first = selectNode.options[0];
  selectNode.replaceChildren(first, ...values.map((v) => h("option", { value: v }, labelOf(v))));
  if (current && !values.includes(current)) selectNode.append(h("option", { value: current }, labelOf(current)));
  selectNode.value = current;
}

function tile(label, value, cls = "") {
  return h("div", { class: `tile ${cls}` }, h("span", { class: "tile-value" }, value), h("span", { class: "tile-label" }, label));
}

/** The models page. */
export function modelsPage(ctx, _arg, params) {
  const filters = { q: params.get("q") || "", topic: params.get("topic") || "", type: params.get("type") || "", state: params.get("state") || "", host: params.get("host") || "" };
  let sort = { index: -1, dir: 1 };
  let views = [];
  let loaded = false;
  let alive = true;

  const search = h("input", { type: "search", name: "q", placeholder: "Search name, node id, topic, host, version…", value: filters.q, autocomplete: "off" });
  const topicSelect = select("topic", "Topic", "All topics");
  const typeSelect = select("type", "Type", "All types");
  const stateSelect = select("state", "State", "All states");
  const hostSelect = select("host", "Host", "All hosts");
  const clear = h("button", { type: "button", class: "btn ghost small clear", onclick: () => {
    Object.assign(filters, { q: "", topic: "", type: "", state: "", host: "" });
    search.value = "";
    for (const sel of [topicSelect, typeSelect, stateSelect, hostSelect]) sel.querySelector("select").value = "";
    changed();
  } }, "Clear filters");
  const count = h("p", { class: "count", "aria-live": "polite" });
  const filtersToggle = h("button", { type: "button", class: "btn small filters-toggle", "aria-expanded": "false", onclick: () => {
    const open = toolbar.classList.toggle("show-filters");
    filtersToggle.setAttribute("aria-expanded", String(open));
  } }, "Filters");
  const toolbar = h("form", { class: "toolbar", role: "search", onsubmit: (e) => e.preventDefault() },
    h("label", { class: "field grow" }, h("span", { class: "field-label" }, "Search"), search),
    filtersToggle, topicSelect, typeSelect, stateSelect, hostSelect, clear);
  const tiles = h("div", { class: "tiles" });

  const headGroups = h("tr", { class: "head-groups" },
    COLUMNS.slice(0, 8).map((column) => h("th", { class: column.cls || "", "aria-hidden": "true" })),
    h("th", { colspan: 5, scope: "colgroup", class: "group" }, "uWSGI"),
    h("th", { colspan: 6, scope: "colgroup", class: "group" }, "logistik"));
  const headRow = h("tr", {}, COLUMNS.map((column, index) => {
    const button = h("button", { type: "button", class: "sort", title: column.title || `Sort by ${column.label}`, onclick: () => {
      sort = sort.index === index ? { index, dir: -sort.dir } : { index, dir: 1 };
      render();
    } }, column.label, h("span", { class: "arrow", "aria-hidden": "true" }));
    return h("th", { scope: "col", class: column.cls || "" }, button);
  }));
  const tbody = h("tbody");
  const table = h("table", { class: "models", id: "models-table" }, h("thead", {}, headGroups, headRow), tbody);
  const empty = h("div", { class: "empty", hidden: true });
  const rows = new Map();

  for (const sel of [topicSelect, typeSelect, stateSelect, hostSelect]) {
    const node = sel.querySelector("select");
    node.value = filters[node.name] || "";
    node.addEventListener("change", () => {
      filters[node.name] = node.value;
      changed();
    });
  }
  search.addEventListener("input", () => {
    filters.q = search.value;
    changed();
  });

  const node = h("section", { class: "page models-page" },
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Models"), count), tiles),
    toolbar,
    h("div", { class: "table-wrap" }, table),
    empty);

  function changed() {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) params.set(k, v);
    ctx.setParams(params);
    render();
  }

  function visible() {
    const shown = views.filter((v) => (!filters.topic || v.event === filters.topic) && (!filters.type || v.model_type === filters.type)
      && (!filters.state || v.state === filters.state) && (!filters.host || v.hostname === filters.host || v.endpoint === filters.host)
      && matches(v, filters.q));
    shown.sort(defaultOrder);
    if (sort.index >= 0) {
      const key = COLUMNS[sort.index].sort;
      shown.sort((a, b) => sort.dir * compare(key(a), key(b)) || defaultOrder(a, b));
    }
    return shown;
  }

  function renderRow(view) {
    let row = rows.get(view.node_id);
    if (!row) {
      row = h("tr", { dataset: { nodeId: view.node_id } });
      row.addEventListener("click", (event) => {
        if (event.target.closest("a, button") || String(window.getSelection())) return;
        ctx.navigate(handlerHref(view.node_id));
      });
      rows.set(view.node_id, row);
    }
    const spec = cells(view);
    const shape = spec.map((c) => c.key).join(",");
    if (row.dataset.shape !== shape) {
      row.dataset.shape = shape;
      row.replaceChildren(...spec.map((c) => h("td", { class: c.cls, colspan: c.colspan, dataset: { label: c.label } })));
    }
    spec.forEach((c, i) => {
      const cell = row.children[i];
      if (cell.className !== c.cls) cell.className = c.cls;
      fill(cell, JSON.stringify(contentKey(c.content)), c.content);
    });
    row.className = `state-row-${view.state}`;
    return row;
  }

  function render() {
    const shown = visible();
    const wanted = shown.map(renderRow);
    const wantedSet = new Set(shown.map((v) => v.node_id));
    for (const [id, row] of rows) {
      if (!views.some((v) => v.node_id === id)) rows.delete(id);
      if (!wantedSet.has(id)) row.remove();
    }
    wanted.forEach((row, i) => {
      if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] || null);
    });
    for (const th of headRow.children) th.removeAttribute("aria-sort");
    if (sort.index >= 0) headRow.children[sort.index].setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
    const filtered = Object.values(filters).some(Boolean);
    const set = ["topic", "type", "state", "host"].filter((k) => filters[k]).length;
    filtersToggle.textContent = set ? `Filters (${set})` : "Filters";
    count.textContent = !loaded ? "Loading…" : filtered ? `${shown.length} of ${views.length} models` : `${views.length} models`;
    empty.hidden = !loaded || shown.length > 0;
    if (loaded && shown.length === 0) {
      empty.replaceChildren(views.length ? h("p", {}, "No model matches these filters. ", h("button", { type: "button", class: "btn small", onclick: () => clear.click() }, "Clear filters"))
        : h("div", {}, h("h2", {}, "No models yet"), h("p", {}, "Add handlers in the config, register models in Consul, or use ",
          h("code", {}, "logistik handlers add"), ". They show up here within seconds.")));
    }
    table.hidden = !loaded || shown.length === 0;
  }

  function renderTiles() {
    const status = ctx.status();
    const byState = {};
    for (const v of views) byState[v.state] = (byState[v.state] || 0) + 1;
    const topics = status ? Object.values(status.topics || {}) : [];
    const sum = (f) => topics.reduce((a, t) => a + f(t), 0);
    const failed = sum((t) => Object.values(t.failed || {}).reduce((a, b) => a + b, 0));
    const troubled = (byState.down || 0) + (byState.invalid || 0);
    const unreachable = views.filter((v) => v.reachable && !v.reachable.ok).length;
    const key = JSON.stringify([byState, views.length, sum((t) => t.events_in), sum((t) => t.published), failed, unreachable]);
    fill(tiles, key,
      tile("active models", `${num(byState.active || 0)} / ${num(views.length)}`, "good"),
      tile("down, invalid or unreachable", num(troubled + unreachable), troubled + unreachable ? "bad" : ""),
      tile("events in", num(sum((t) => t.events_in))),
      tile("answers published", num(sum((t) => t.published))),
      tile("to failed topics", num(failed), failed ? "warn" : ""));
  }

  render();
  return {
    title: "Models",
    node,
    async refresh() {
      const answer = await get("/api/handlers");
      if (!alive) return;
      views = answer;
      loaded = true;
      setOptions(topicSelect.querySelector("select"), [...new Set(views.map((v) => v.event).filter(Boolean))].sort());
      setOptions(typeSelect.querySelector("select"), TYPES);
      setOptions(stateSelect.querySelector("select"), STATES);
      setOptions(hostSelect.querySelector("select"), [...new Set(views.map((v) => v.hostname))].sort());
      renderTiles();
      render();
    },
    destroy() {
      alive = false;
    },
  };
}

function contentKey(content) {
  return content.map((c) => (c instanceof Node ? c.outerHTML ?? c.textContent : String(c)));
}
