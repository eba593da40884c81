// One model: every field, its state and problem, charts over time, and the rollout actions.

import { ApiError, get, send } from "./api.js";
import { SPANS, barChart, bucketsOf, fittingSpan, latencyChart } from "./charts.js";
import { ago, duration, fill, h, healthMarks, measuredText, ms, nowType, num, pct, stamp, stateBadge, typeBadge } from "./dom.js";
import { rolloutSection } from "./rollout.js";

function actionsFor(v) {
  const retired = v.retired || v.state === "retired";
  const list = [];
  if (!retired && v.state === "disabled") list.push("enable");
  if (!retired && v.state !== "disabled") list.push("disable");
  if (!retired && v.model_type !== "model") list.push("promote");
  if (!retired && v.model_type === "model") list.push("demote");
  if (!retired && v.model_type === "canary") list.push("traffic");
  if (!retired) list.push("retire");
  list.push("delete");
  return list;
}

const LABELS = { enable: "Enable", disable: "Disable", promote: "Promote", demote: "Demote", traffic: "Set traffic", retire: "Retire", delete: "Delete" };
const DONE = { enable: "enabled", disable: "disabled", promote: "promoted to production", demote: "demoted to a standby canary", traffic: "traffic set", retire: "retired", delete: "deleted" };

function explain(action, v) {
  const who = `${v.name} (${v.node_id})`;
  switch (action) {
    case "enable": return [`${who} gets events again.`];
    case "disable": return [`${who} gets no events until it is enabled again.`];
    case "promote": return [`${who} becomes production of group ${v.group_id} on ${v.event}, with every ${v.model_type} of version ${v.version || "(none)"} in the group.`,
      "The group's current production instances become standby canaries with traffic 0, so promoting one of them back undoes this."];
    case "demote": return [`${who} becomes a standby canary with traffic 0; another production instance of group ${v.group_id} must be active.`];
    case "traffic": return [`The share of group ${v.group_id}'s events that ${who} answers instead of production.`];
    case "retire": return [`${who} is taken out of rotation for good: discovery never brings it back.`];
    case "delete": return [`${who} is removed from the store. Discovery adds it again if it is still registered.`];
    default: return [who];
  }
}

function trafficInput(current) {
  const number = h("input", { type: "number", id: "traffic-input", name: "traffic", min: "0", max: "100", step: "0.1", required: true, value: String(Math.round(current * 1000) / 10) });
  const range = h("input", { type: "range", min: "0", max: "100", step: "1", value: String(Math.round(current * 100)), "aria-label": "Traffic share slider" });
  range.addEventListener("input", () => (number.value = range.value));
  number.addEventListener("input", () => (range.value = number.value));
  return { node: h("div", { class: "traffic-field" }, h("label", { for: "traffic-input" }, "Traffic share (%)"), h("div", { class: "traffic-inputs" }, range, number, h("span", {}, "%"))), number };
}

function field(label, value, cls = "") {
  const shown = value === null || value === undefined || value === "" ? h("span", { class: "muted" }, "–") : value;
  return [h("dt", {}, label), h("dd", { class: cls }, shown)];
}

function fieldsOf(v) {
  const yesNo = (b) => (b ? "yes" : "no");
  return [
    ["Routing", [
      ["event (topic)", v.event, "mono"], ["group", v.group_id, "mono"], ["service id", v.service_id, "mono"],
      ["return to", v.return_to, "mono"], ["failed topic", v.failed_topic || (v.event ? `${v.event}-failed (default)` : ""), "mono"],
    ]],
    ["Endpoint", [
      ["url", v.url, "mono"], ["hostname", v.hostname], ["endpoint", v.endpoint, "mono"], ["port", String(v.port), "mono"],
      ["path", v.path, "mono"], ["method", v.method],
    ]],
    ["Model", [
      ["type", v.model_type], ["declared type", v.declared_model_type], ["version", v.version, "mono"], ["node", v.node, "mono"],
      ["traffic", v.model_type === "canary" ? `${pct(v.traffic)} set${v.share ? `; answered ${measuredText(v)}` : ""}` : h("span", { class: "muted" }, "only canaries take a share")], ["environment", v.environment],
      ["tags", (v.tags || []).length ? h("span", { class: "tags" }, v.tags.map((t) => h("span", { class: "tag" }, t))) : ""],
    ]],
    ["Behaviour", [
      ["enabled", yesNo(v.enabled)], ["retired", yesNo(v.retired)], ["timeout", v.timeout === null || v.timeout === undefined ? "router default" : `${v.timeout} s`],
      ["retries", v.retries === null || v.retries === undefined ? "router default" : String(v.retries)], ["in flight", num(v.in_flight)],
      ["batches", v.batch_max_size > 1 ? `up to ${v.batch_max_size} events per request, waiting up to ${v.batch_max_wait_ms ?? 5} ms` : "one event per request"],
    ]],
    ["Source", [
      ["source", v.source], ["Consul service id", v.consul_service_id, "mono"], ["updated", v.updated_at ? `${stamp(v.updated_at)} (${ago(v.updated_at)})` : ""],
      ["decoy compared", v.model_type === "decoy" || v.decoy.compared ? `${num(v.decoy.compared)} answers, ${num(v.decoy.agreed)} agreed (${pct(v.decoy.agreement)})` : ""],
    ]],
  ];
}

function figureTiles(v) {
  const f = v.figures;
  if (!f) return [h("p", { class: "muted" }, "logistik has not called this model since it started.")];
  const a = f.answers;
  const t = (label, value, cls = "") => h("div", { class: `tile ${cls}` }, h("span", { class: "tile-value" }, value), h("span", { class: "tile-label" }, label));
  return [h("div", { class: "tiles wide" },
    t("calls", num(f.requests)), t("ok", num(a.ok), "good"), t("errors", num(a.error + a.refused), a.error + a.refused ? "bad" : ""),
    t("timeouts", num(a.timeout), a.timeout ? "warn" : ""), t("ignored / dup.", `${num(a.ignored)} / ${num(a.duplicate)}`),
    t("retries", num(f.retries)), t("p50", ms(f.latency_ms.p50)), t("p95", ms(f.latency_ms.p95)), t("p99", ms(f.latency_ms.p99)),
    t(f.uptime_s < 300 ? "calls/min (since first call)" : "calls/min (last 5 min)", num(f.per_minute_5m)), t("in flight", num(v.in_flight)), t("watched for", duration(f.uptime_s)),
    v.model_type === "canary" ? t("share measured (set)", `${v.share ? pct(v.share.measured) : "–"} (${pct(v.traffic)})`) : null,
    v.model_type === "decoy" ? t("agrees with production", v.decoy.compared ? `${pct(v.decoy.agreement)} of ${num(v.decoy.compared)}` : "–") : null),
  f.last_error ? h("div", { class: "callout error" }, h("strong", {}, "Last error "), h("span", { class: "muted" }, `${ago(f.last_error_at)} · ${stamp(f.last_error_at)}`),
    h("pre", { class: "error-text" }, f.last_error)) : null];
}

function uwsgiBlock(v) {
  if (!v.uwsgi) return [h("p", { class: "muted" }, "no stats: the model's uWSGI stats server was not found or did not answer.")];
  const u = v.uwsgi;
  return [h("dl", { class: "fields compact" }, field("requests", num(u.requests)), field("exceptions", num(u.exceptions)),
    field("uptime", duration(u.uptime_s)), field("status", u.status), field("load", num(u.load)))];
}

/** Whether logistik can reach the model, its circuit breaker, and the calls in flight. */
function healthBlock(v) {
  const reach = v.reachable;
  const c = v.circuit;
  return [h("dl", { class: "fields compact health" },
    field("reachable", reach ? h("span", { class: reach.ok ? "good" : "err" }, `${reach.ok ? "yes" : "no"}: ${reach.detail} (checked ${ago(reach.checked_at)})`) : h("span", { class: "muted" }, "not probed: it is not routed to")),
    field("circuit", c ? `${c.state}${c.since ? ` since ${stamp(c.since)} (${ago(c.since)})` : ""}; ${num(c.failures)} failed calls in a row` : h("span", { class: "muted" }, "–")),
    field("in flight", num(v.in_flight))),
  c && c.last_error ? h("pre", { class: "error-text" }, c.last_error) : null];
}

/** The detail page of one handler. */
export function detailPage(ctx, nodeId, params) {
  let alive = true;
  let view = null;
  let busy = false;
  const head = h("div", { class: "detail-head" });
  const problem = h("div", { class: "problem-slot" });
  const actions = h("div", { class: "actions", role: "group", "aria-label": "Rollout actions" });
  const result = h("div", { class: "result", role: "status", "aria-live": "polite", id: "action-result" });
  const figuresBox = h("div", { class: "figures" });
  const health = h("div", { class: "health-box" });
  const charts = h("div", { class: "charts" });
  let span = SPANS[params && params.get("span")] ? params.get("span") : null; // null: fit the data
  const spanButtons = Object.entries(SPANS).map(([name, spec]) => h("button", {
    type: "button", class: "btn small", dataset: { span: name }, "aria-pressed": "false",
    onclick: () => {
      span = name;
      const query = new URLSearchParams();
      query.set("span", name);
      ctx.setParams(query);
      refresh().catch(() => {});
    },
  }, spec.label));
  const spanPicker = h("div", { class: "span-picker", role: "group", "aria-label": "Chart span" }, h("span", { class: "muted" }, "Charts over "), spanButtons);
  const uwsgi = h("div");
  const fields = h("div", { class: "field-groups" });
  const missing = h("div", { class: "empty", hidden: true });
  const rollout = rolloutSection(ctx, nodeId);
  const body = h("div", { class: "detail-body" },
    h("section", { class: "card actions-card", "aria-labelledby": "actions-title" }, h("h2", { id: "actions-title" }, "Rollout"), actions, result),
    rollout.node,
    h("section", { class: "card", "aria-labelledby": "health-title" }, h("h2", { id: "health-title" }, "Health"), health),
    h("section", { class: "card", "aria-labelledby": "figures-title" }, h("h2", { id: "figures-title" }, "What logistik saw"), figuresBox, spanPicker, charts),
    h("div", { class: "two" },
      h("section", { class: "card", "aria-labelledby": "fields-title" }, h("h2", { id: "fields-title" }, "Fields"), fields),
      h("section", { class: "card", "aria-labelledby": "uwsgi-title" }, h("h2", { id: "uwsgi-title" }, "uWSGI"), uwsgi)));
  const node = h("section", { class: "page detail-page" },
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Models"), h("span", { "aria-hidden": "true" }, " / "), h("span", { class: "mono" }, nodeId)),
    head, problem, body, missing);

  function say(kind, ...text) {
    result.replaceChildren(h("p", { class: `notice ${kind}` }, ...text));
  }

  async function run(action) {
    if (!view || busy) return;
    const v = view;
    let extra = null;
    let traffic = null;
    if (action === "traffic") {
      traffic = trafficInput(v.traffic);
      extra = traffic.node;
    }
    const verb = LABELS[action];
    const ok = await ctx.confirm({
      title: action === "traffic" ? `Set the traffic of ${v.name}?` : `${verb} ${v.name}?`,
      text: explain(action, v),
      confirmLabel: action === "traffic" ? "Set traffic" : `${verb} ${v.name}`,
      danger: action === "delete" || action === "retire",
      extra,
    });
    if (!ok) return;
    busy = true;
    renderActions();
    const path = `/api/handlers/${encodeURIComponent(v.node_id)}`;
    try {
      if (action === "delete") await send("DELETE", path);
      else if (action === "traffic") await send("PUT", `${path}/traffic`, { traffic: Number(traffic.number.value) / 100 });
      else await send("POST", `${path}/${action}`);
      const share = action === "traffic" ? ` to ${Number(traffic.number.value)}%` : "";
      say("success", h("strong", {}, `${v.name}: ${DONE[action]}${share}.`));
      if (action === "delete") {
        view = null;
        head.replaceChildren(h("h1", {}, `${v.name} was deleted`));
        body.hidden = true;
        problem.replaceChildren();
        node.insertBefore(h("div", { class: "card" }, result, h("p", {}, h("a", { href: "#/" }, "Back to the models"))), missing);
        return;
      }
      await refresh();
    } catch (error) {
      const hint = error instanceof ApiError && (error.status === 401 || error.status === 403)
        ? [" ", h("button", { type: "button", class: "btn small", onclick: () => ctx.openLogin() }, "Log in")] : [];
      say("error", h("strong", {}, `Could not ${action === "traffic" ? "set the traffic of" : action} ${v.name}: `), error.message, ...hint);
    } finally {
      busy = false;
      renderActions();
      ctx.refresh();
    }
  }

  function renderActions() {
    if (!view) return;
    const session = ctx.session();
    const list = actionsFor(view);
    const key = JSON.stringify([list, session.can_write, session.user, busy, view.node_id]);
    if (!session.can_write) {
      fill(actions, key, h("p", { class: "hint" },
        session.user ? `${session.user} may only read: changing models needs write access.` : "Log in with write access to enable, disable, promote, demote, retire or delete this model. ",
        session.user ? null : h("button", { type: "button", class: "btn small primary", onclick: () => ctx.openLogin() }, "Log in")));
      return;
    }
    fill(actions, key, list.map((action) => h("button", {
      type: "button",
      class: `btn ${action === "delete" || action === "retire" ? "danger-outline" : action === "promote" ? "primary" : ""}`,
      dataset: { action },
      disabled: busy,
      onclick: () => run(action),
    }, LABELS[action])));
  }

  async function refresh() {
    let answer;
    try {
      answer = await get(`/api/handlers/${encodeURIComponent(nodeId)}`);
    } catch (error) {
      if (!alive) return;
      if (error instanceof ApiError && error.status === 404 && !body.hidden) {
        head.replaceChildren(h("h1", {}, "No such model"));
        body.hidden = true;
        problem.replaceChildren();
        missing.hidden = false;
        missing.replaceChildren(h("p", {}, `logistik has no handler ${nodeId}. `, h("a", { href: "#/" }, "Back to the models")));
        return;
      }
      throw error;
    }
    if (!alive || body.hidden) return;
    view = answer;
    const v = view;
    const changed = nowType(v.node_id, v.model_type);
    fill(head, JSON.stringify([v.name, v.node_id, v.state, v.model_type, v.traffic, v.decoy, v.share, v.url, v.version, v.reachable, v.circuit]),
      h("div", { class: "title-row" }, h("h1", {}, v.name), typeBadge(v), stateBadge(v.state), ...healthMarks(v),
        v.version ? h("span", { class: "version" }, v.version) : null),
      h("p", { class: "sub" }, h("span", { class: "mono" }, v.node_id), changed ? [" ", changed] : null, h("span", { class: "muted" }, " · "), h("span", { class: "mono" }, `${v.method} ${v.url}`),
        h("a", { class: "btn small ghost", href: `#/query?node=${encodeURIComponent(v.node_id)}` }, "Query this model")),
      changed ? h("p", { class: "hint", id: "identity-note" }, `A node id (service_id-hostname-type-node) is fixed when a model is registered, so this one still says ${v.node_id.split("-").slice(-2, -1)[0]}: a promotion changes the type, not the node id. It is ${v.model_type} now.`) : null);
    fill(problem, v.problem || "", v.problem ? h("div", { class: "callout error", role: "alert" }, h("strong", {}, "Problem: "), v.problem) : null);
    renderActions();
    const f = v.figures;
    fill(figuresBox, JSON.stringify(f && { ...f, uptime_s: Math.floor(f.uptime_s / 60) }) + v.in_flight, figureTiles(v));
    fill(health, JSON.stringify([v.reachable, v.circuit, v.in_flight, v.reachable && ago(v.reachable.checked_at)]), healthBlock(v));
    const shown = span || fittingSpan(f ? f.uptime_s : null);
    for (const button of spanButtons) button.setAttribute("aria-pressed", String(button.dataset.span === shown));
    const spec = SPANS[shown];
    const series = bucketsOf(f && f.series ? f.series[shown] : null, shown);
    fill(charts, JSON.stringify([shown, series]),
      barChart(`Throughput (calls per ${spec.per})`, series, "calls", "calls", "calls", spec.last),
      latencyChart(`Latency (mean per ${spec.per})`, series, spec.last),
      barChart(`Errors per ${spec.per}`, series, "errors", "errors", "errors", spec.last));
    fill(fields, JSON.stringify([v, ago(v.updated_at)]), fieldsOf(v).map(([title, rows]) =>
      h("div", { class: "field-group" }, h("h3", {}, title), h("dl", { class: "fields" }, rows.map(([label, value, cls]) => field(label, value, cls))))));
    fill(uwsgi, JSON.stringify(v.uwsgi), uwsgiBlock(v));
    await rollout.refresh(v);
    document.title = `${v.name} · logistik`;
  }

  return {
    title: nodeId,
    node,
    refresh,
    destroy() {
      alive = false;
    },
  };
}
