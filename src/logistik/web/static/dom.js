// Small DOM helpers: elements are built with text nodes only, never from HTML strings.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setProps(node, props, isSvg) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (!isSvg && key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

/** An HTML element: h("a", {href: "#/"}, "text", child, ...). */
export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  setProps(node, props, false);
  return append(node, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setProps(node, attrs, true);
  return append(node, children);
}

/** Replace a node's children (null and false children are left out). */
export function put(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** Replace a node's children only when their text key changed (keeps focus and selection). */
export function fill(node, key, ...children) {
  if (node.dataset.key === key) return;
  node.dataset.key = key;
  node.replaceChildren();
  append(node, children);
}

const numberFormat = new Intl.NumberFormat(undefined);
const decimalFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** A count with thousands separators, "–" for missing. */
export function num(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number.isInteger(value) ? numberFormat.format(value) : decimalFormat.format(value);
}

/** Milliseconds, readable at a glance. */
export function ms(value) {
  if (value === null || value === undefined) return "–";
  if (value >= 10000) return `${decimalFormat.format(value / 1000)} s`;
  if (value >= 100) return `${Math.round(value)} ms`;
  return `${decimalFormat.format(value)} ms`;
}

/** A duration in seconds as "3d 4h", "5m 2s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s0 = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s0 / 86400), hr = Math.floor((s0 % 86400) / 3600);
  const m = Math.floor((s0 % 3600) / 60), sec = s0 % 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}

/** A share 0..1 as a percentage. */
export function pct(value) {
  if (value === null || value === undefined) return "–";
  return `${decimalFormat.format(value * 100)}%`;
}

/** How long ago an ISO time or unix-seconds time was. */
export function ago(when) {
  if (when === null || when === undefined || when === "") return "–";
  const t = typeof when === "number" ? when * 1000 : Date.parse(when);
  if (Number.isNaN(t)) return String(when);
  const seconds = (Date.now() - t) / 1000;
  if (seconds < 5) return "just now";
  return `${duration(seconds).split(" ")[0]} ago`;
}

/** A full local time for a title attribute. */
export function stamp(when) {
  if (when === null || when === undefined || when === "") return "";
  const t = typeof when === "number" ? when * 1000 : Date.parse(when);
  return Number.isNaN(t) ? String(when) : new Date(t).toLocaleString();
}

const STATE_HINTS = {
  active: "gets events",
  down: "its checks fail: gets no events until they pass",
  gone: "deregistered: kept for the record",
  disabled: "disabled by hand",
  retired: "retired: never comes back",
  invalid: "cannot be routed to (see its problem)",
};

/** A colour-coded state badge. */
export function stateBadge(state) {
  return h("span", { class: `badge state-${state}`, title: STATE_HINTS[state] || state }, state);
}

/** What a canary's measured share says in words, "" when its group had no recent calls. */
export function measuredText(view) {
  const share = view.share;
  if (!share) return "";
  return `${pct(share.measured)} of the group's last ${num(share.of_calls)} calls (${duration(share.window_s).replace(/ 0s$/, "")})`;
}

/** A model type badge, with a canary's set and measured share or a decoy's agreement. */
export function typeBadge(view) {
  const type = view.model_type;
  const extras = [];
  if (type === "canary") {
    extras.push(h("span", { class: "type-extra" }, `${pct(view.traffic)} set`));
    if (view.share) extras.push(h("span", { class: "type-measured" }, `${pct(view.share.measured)} measured`));
  }
  const agreement = view.decoy && view.decoy.compared ? view.decoy.agreement : null;
  if (type === "decoy") extras.push(h("span", { class: "type-extra" }, `agrees ${pct(agreement)}`));
  const title = {
    model: "production: answers the group's events",
    canary: `set to answer ${pct(view.traffic)} of the group's events instead of production${view.share ? `; answered ${measuredText(view)}` : ""}`,
    decoy: `shadow: gets every event, never published; ${agreement !== null ? `its answer agreed with production's for ${pct(agreement)} of ${num(view.decoy.compared)} events` : "no answer compared with production's yet"}`,
    deploy: "registered, gets no events until promoted",
  }[type];
  return h("span", { class: `type type-${type}`, title }, h("span", { class: "type-name" }, type), extras);
}

const NODE_TYPE = /-(model|canary|decoy|deploy)-[^-]*$/;

/** The type a node id was registered with (its third part), or null. */
export function registeredType(nodeId) {
  const match = NODE_TYPE.exec(nodeId || "");
  return match ? match[1] : null;
}

/** "now model" beside a node id whose type changed since it was registered, else null. */
export function nowType(nodeId, currentType) {
  const registered = registeredType(nodeId);
  if (!currentType || !registered || registered === currentType) return null;
  return h("span", { class: "now-type", title: `registered as ${registered}; a promotion or demotion changes the type, never the node id` }, `now ${currentType}`);
}

/** The address of a handler's detail page. */
export function handlerHref(nodeId) {
  return `#/handler/${encodeURIComponent(nodeId)}`;
}

/** Marks beside the state: a model that cannot be reached, a circuit that is not closed. */
export function healthMarks(v) {
  const marks = [];
  if (v.reachable && !v.reachable.ok) {
    marks.push(h("span", { class: "health-mark bad", title: `${v.reachable.detail} (checked ${stamp(v.reachable.checked_at)})` }, "unreachable"));
  }
  const c = v.circuit;
  if (c && c.state !== "closed") {
    const since = c.since ? new Date(c.since).toLocaleTimeString() : "";
    const what = c.state === "open" ? "gets no calls until its cool-down ends" : "one probe call decides";
    marks.push(h("span", { class: "health-mark warn", title: `circuit ${c.state} since ${stamp(c.since)}: ${what}; ${c.failures} failed calls in a row${c.last_error ? `, the last: ${c.last_error}` : ""}` },
      `circuit ${c.state}${since ? ` since ${since}` : ""}`));
  }
  return marks;
}
