// A model's rollout on its detail page: the form that starts one, its steps as a timeline of
// decisions with their figures, and a chart of the canary against production.

import { ApiError, get, send } from "./api.js";
import { fill, h, ms, num, pct, s, stamp } from "./dom.js";

const STYLESHEET = "/static/rollout.css";
if (!document.querySelector(`link[href="${STYLESHEET}"]`)) {
  document.head.append(h("link", { rel: "stylesheet", href: STYLESHEET }));
}

const OUTCOME_HINTS = {
  start: "the rollout started",
  advance: "every check passed: the next step's share",
  hold: "not enough evidence yet, or held as asked",
  rollback: "traffic back to 0",
  promote: "the candidate became production",
  pause: "no decisions until resumed",
  resume: "deciding again",
  abort: "ended by hand, traffic back to 0",
  "ended-by-hand": "an operator acted on the group by hand",
};

function interval(values, format) {
  if (!values || values[0] === null || values[0] === undefined) return "";
  const high = values[1] === null || values[1] === undefined ? "∞" : format(values[1]);
  return ` [${format(values[0])}, ${high}]`;
}

function figuresTable(figures) {
  if (!figures || !figures.canary) return null;
  const rows = ["canary", "production"].map((side) => {
    const f = figures[side] || {};
    return h("tr", { dataset: { side } },
      h("th", { scope: "row" }, side),
      h("td", { dataset: { label: "Calls" } }, num(f.calls)),
      h("td", { dataset: { label: "Errors" } }, `${num(f.errors)} (${pct(f.error_rate)}${interval(f.error_interval, pct)})`),
      h("td", { dataset: { label: "Timeouts" } }, num(f.timeouts)),
      h("td", { dataset: { label: "p50" } }, `${ms(f.p50_ms)}${interval(f.p50_interval_ms, ms)}`),
      h("td", { dataset: { label: "p99" } }, `${ms(f.p99_ms)}${interval(f.p99_interval_ms, ms)}`),
      h("td", { dataset: { label: "Agreement" } }, f.compared ? `${pct(f.agreement)} of ${num(f.compared)}${interval(f.agreement_interval, pct)}` : "–"));
  });
  const checks = figures.checks || {};
  const notes = Object.entries(checks).filter(([, c]) => c && c.state).map(([name, c]) => h("span", { class: `check check-${c.state}` }, `${name}: ${c.state}`));
  const window = figures.window || {};
  return h("div", { class: "rollout-figures" },
    h("div", { class: "table-wrap" }, h("table", { class: "rollout-table" },
      h("thead", {}, h("tr", {}, ["", "Calls", "Errors (rate, 95% interval)", "Timeouts", "p50 (bounds)", "p99 (bounds)", "Agreement"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows))),
    h("p", { class: "muted small" }, notes, window.production_from && window.production_from !== "this step" ? ` · production: ${window.production_from}` : "",
      window.processes && window.processes.length ? ` · counted by ${window.processes.length} process(es)` : ""));
}

function stepsBar(view) {
  return h("ol", { class: "rollout-steps", "aria-label": "Steps" }, view.steps.map((share, i) => {
    const state = view.status === "promoted" || i < view.step ? "done" : i === view.step ? (view.status === "rolled-back" ? "failed" : "current") : "todo";
    const label = share === 0 ? "shadow" : `${share}%`;
    return h("li", { class: `rollout-step ${state}`, "aria-current": i === view.step && view.status === "running" ? "step" : null }, label);
  }));
}

function timeline(view) {
  const items = (view.decisions || []).slice().reverse().map((d) => h("li", { class: `decision outcome-${d.outcome}`, dataset: { outcome: d.outcome, step: String(d.step) } },
    h("div", { class: "decision-head" },
      h("span", { class: `badge decision-badge outcome-${d.outcome}`, title: OUTCOME_HINTS[d.outcome] || d.outcome }, d.outcome),
      h("span", { class: "decision-share" }, d.share === 0 && view.from_decoy && d.step === 0 ? "shadow stage" : `at ${pct(d.share)}`),
      h("time", { class: "muted small", datetime: d.at, title: stamp(d.at) }, new Date(d.at).toLocaleTimeString())),
    h("p", { class: "decision-reason" }, d.reason, d.rule && d.rule !== d.outcome ? h("span", { class: "muted small" }, ` (${d.rule})`) : null),
    d.figures && d.figures.canary ? h("details", {}, h("summary", {}, "Figures"), figuresTable(d.figures)) : null));
  return h("ol", { class: "rollout-timeline", "aria-label": "Decisions, newest first" }, items);
}

const W = 420, H = 150, PAD = { left: 44, right: 8, top: 10, bottom: 20 };

function lineChart(title, points, key, format) {
  const values = points.flatMap((p) => [p.canary[key], p.production[key]]).filter((v) => v !== null && v !== undefined);
  const max = Math.max(...values, key === "error_rate" ? 0.05 : 1) * 1.1;
  const x = (i) => PAD.left + ((W - PAD.left - PAD.right) * (points.length > 1 ? i / (points.length - 1) : 0.5));
  const y = (v) => PAD.top + (H - PAD.top - PAD.bottom) * (1 - v / max);
  const line = (side) => {
    let d = "";
    points.forEach((p, i) => {
      const v = p[side][key];
      if (v === null || v === undefined) return;
      d += `${d ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
    });
    return s("path", { class: `line ${side}`, d });
  };
  const grid = [0, 0.5, 1].flatMap((share) => [
    s("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y(max * share), y2: y(max * share) }),
    s("text", { class: "tick", x: PAD.left - 6, y: y(max * share) + 4, "text-anchor": "end" }, format(max * share)),
  ]);
  const last = points[points.length - 1];
  const summary = last ? `canary ${format(last.canary[key])} · production ${format(last.production[key])}` : "no calls yet";
  return h("figure", { class: "chart rollout-chart" },
    h("figcaption", {}, h("span", { class: "chart-title" }, title), h("span", { class: "chart-summary" }, summary)),
    s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: ${summary}` }, grid, line("production"), line("canary")));
}

function charts(view) {
  const points = view.series || [];
  if (!points.length) return h("p", { class: "muted" }, "No calls counted yet.");
  return h("div", { class: "charts rollout-charts" },
    lineChart("Error rate", points, "error_rate", (v) => (v === null || v === undefined ? "–" : pct(v))),
    lineChart("p99 latency", points, "p99_ms", ms),
    h("p", { class: "legend muted small" }, h("span", { class: "key canary" }, "canary"), " ", h("span", { class: "key production" }, "production")));
}

function input(id, label, attrs, hint) {
  return h("div", { class: "field" },
    h("label", { class: "field-label", for: id }, label),
    h("input", { id, name: id, ...attrs }),
    hint ? h("span", { class: "muted small" }, hint) : null);
}

function startForm(onStart) {
  const form = h("form", { class: "rollout-form", id: "rollout-form", novalidate: false },
    h("div", { class: "rollout-grid" },
      input("rollout-steps", "Steps (% of events)", { type: "text", value: "5,25,50,100", required: true, pattern: "[0-9., %]+" }, "e.g. 5,25,50,100"),
      input("rollout-min-events", "Canary answers per step", { type: "number", min: "1", value: "500", required: true }),
      input("rollout-step-wait", "Step lasts at least", { type: "text", value: "10m", required: true }, "90, 30s, 10m, 1h"),
      input("rollout-max-error", "Error rate may rise by (points %)", { type: "number", min: "0", max: "100", step: "0.1", value: "1", required: true }),
      input("rollout-max-p99", "p99 may be (times production's)", { type: "number", min: "1", step: "0.05", value: "1.2", required: true }),
      input("rollout-max-p50", "Median may be (times production's)", { type: "number", min: "1", step: "0.05", value: "1.2", required: true }),
      input("rollout-min-agreement", "Agreement at least (%)", { type: "number", min: "0", max: "100", step: "0.5", value: "95", required: true }),
      input("rollout-shadow", "Shadow share (%)", { type: "number", min: "0", max: "100", step: "1", value: "0", required: true }, "canary events also sent to production"),
      h("div", { class: "field" }, h("label", { class: "field-label", for: "rollout-on-slow" }, "A slower canary"),
        h("select", { id: "rollout-on-slow", name: "rollout-on-slow" }, h("option", { value: "rollback" }, "rolls back"), h("option", { value: "hold" }, "holds")))),
    h("div", { class: "rollout-form-actions" }, h("button", { type: "submit", class: "btn primary" }, "Start rollout")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    const value = (id) => form.querySelector(`#${id}`).value;
    onStart({
      steps: value("rollout-steps"),
      min_events: Number(value("rollout-min-events")),
      step_wait: value("rollout-step-wait"),
      max_error_rate_increase: Number(value("rollout-max-error")) / 100,
      max_p99_increase: Number(value("rollout-max-p99")),
      max_p50_increase: Number(value("rollout-max-p50")),
      min_agreement: Number(value("rollout-min-agreement")) / 100,
      shadow_share: Number(value("rollout-shadow")) / 100,
      on_slow: value("rollout-on-slow"),
    });
  });
  return form;
}

/** The rollout card of a detail page: refresh(view) with the handler's API view. */
export function rolloutSection(ctx, nodeId) {
  const formSlot = h("div", { class: "rollout-start" });
  const current = h("div", { class: "rollout-current", id: "rollout-current" });
  const result = h("div", { role: "status", "aria-live": "polite", class: "result" });
  const node = h("section", { class: "card rollout-card", "aria-labelledby": "rollout-title", id: "rollout" },
    h("h2", { id: "rollout-title" }, "Progressive rollout"), result, formSlot, current);
  let busy = false;

  function say(kind, ...text) {
    result.replaceChildren(h("p", { class: `notice ${kind}` }, ...text));
  }

  async function act(path, body, done) {
    if (busy) return;
    busy = true;
    try {
      await send("POST", path, body);
      say("success", done);
      fill(formSlot, "", null);
      ctx.refresh();
    } catch (error) {
      const login = error instanceof ApiError && (error.status === 401 || error.status === 403);
      say("error", h("strong", {}, "Refused: "), error.message,
        login ? h("button", { type: "button", class: "btn small", onclick: () => ctx.openLogin() }, "Log in") : null);
    } finally {
      busy = false;
    }
  }

  function controls(view) {
    if (!ctx.session().can_write || !["running", "paused"].includes(view.status)) return null;
    const button = (verb, label, cls = "") => h("button", { type: "button", class: `btn small ${cls}`, dataset: { rolloutAction: verb },
      onclick: () => act(`/api/rollouts/${view.id}/${verb}`, undefined, `Rollout ${view.id}: ${verb} done.`) }, label);
    return h("div", { class: "actions" },
      view.status === "running" ? button("pause", "Pause") : button("resume", "Resume", "primary"),
      button("abort", "Abort", "danger-outline"));
  }

  function renderRollout(view) {
    const key = JSON.stringify([view.status, view.step, (view.decisions || []).length, view.updated_at, (view.series || []).length,
      view.current && view.current.reason, ctx.session().can_write]);
    fill(current, key,
      h("div", { class: "rollout-head" },
        h("span", { class: `badge rollout-status status-${view.status}`, id: "rollout-status" }, view.status),
        h("span", {}, `rollout ${view.id} of group ${view.group_id}`),
        view.reason ? h("span", { class: "muted" }, `: ${view.reason}`) : null),
      stepsBar(view),
      controls(view),
      view.current ? h("p", { class: "rollout-now" }, h("strong", {}, `Now: ${view.current.outcome}. `), view.current.reason) : null,
      view.current ? figuresTable(view.current.figures) : null,
      charts(view),
      h("h3", {}, "Decisions"),
      timeline(view));
  }

  async function refresh(handlerView) {
    const listed = await get(`/api/rollouts?node_id=${encodeURIComponent(nodeId)}`);
    const latest = listed[0];
    const active = latest && ["running", "paused", "promoting"].includes(latest.status);
    const candidate = ["canary", "decoy"].includes(handlerView.model_type) && handlerView.state === "active";
    if (!active && candidate) {
      const canWrite = ctx.session().can_write;
      fill(formSlot, `form-${canWrite}`, canWrite
        ? [h("p", { class: "muted" }, handlerView.model_type === "decoy"
          ? "The decoy first shadows production (its agreement is measured), then becomes a canary whose share grows step by step."
          : "The canary's share grows step by step while its errors, latency and answers are compared with production's; it is promoted after the last step or rolled back as soon as the figures say so."),
        startForm((options) => act("/api/rollouts", { node_id: nodeId, ...options }, `Rollout of ${nodeId} started.`))]
        : h("p", { class: "hint" }, "Log in with write access to start a rollout of this model. ",
          h("button", { type: "button", class: "btn small primary", onclick: () => ctx.openLogin() }, "Log in")));
    } else {
      fill(formSlot, "", null);
    }
    // Production and deploy handlers without a rollout of their own have nothing to show here.
    node.hidden = !latest && !candidate;
    if (!latest) {
      fill(current, "none", null);
      return;
    }
    renderRollout(await get(`/api/rollouts/${latest.id}`));
  }

  return { node, refresh };
}
