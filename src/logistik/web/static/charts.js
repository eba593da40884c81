// Small SVG charts of a handler's per-minute figures, drawn without any library.

import { h, s } from "./dom.js";

const W = 420, H = 170;
const PAD = { left: 44, right: 8, top: 12, bottom: 24 };

/** The spans a chart can show: the API's series name, buckets shown, and words for people. */
export const SPANS = {
  "5m": { buckets: 30, label: "5 min", per: "10 s", last: "the last 5 minutes" },
  "1h": { buckets: 60, label: "1 hour", per: "minute", last: "the last hour" },
  "24h": { buckets: 24, label: "24 hours", per: "hour", last: "the last 24 hours" },
};

/** The span that fits what logistik saw of a model: 5 min for a new one (or one not called
 *  yet), else an hour. */
export function fittingSpan(watchedSeconds) {
  return watchedSeconds === null || watchedSeconds === undefined || watchedSeconds < 300 ? "5m" : "1h";
}

/** A series of buckets up to now, oldest first; buckets without calls are zero. */
export function bucketsOf(series, span, nowSeconds = Date.now() / 1000) {
  const step = (series && series.step_s) || 60;
  const byStart = new Map(((series && series.points) || []).map((p) => [Math.floor(p.at / step), p]));
  const current = Math.floor(nowSeconds / step);
  const points = [];
  for (let i = SPANS[span].buckets - 1; i >= 0; i--) {
    const start = current - i;
    const p = byStart.get(start);
    points.push({ at: start * step, step, calls: p ? p.calls : 0, errors: p ? p.errors : 0, latency_ms: p ? p.latency_ms : null });
  }
  return points;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function clock(at, step = 60) {
  const options = step < 60 ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
  return new Date(at * 1000).toLocaleTimeString([], options);
}

function frame(max, format, series) {
  const innerH = H - PAD.top - PAD.bottom;
  const nodes = [];
  for (const share of [0, 0.5, 1]) {
    const y = PAD.top + innerH * (1 - share);
    nodes.push(s("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }));
    nodes.push(s("text", { class: "tick", x: PAD.left - 6, y: y + 4, "text-anchor": "end" }, format(max * share)));
  }
  const labels = [[0, "start"], [series.length / 2, "middle"], [series.length - 1, "end"]];
  for (const [index, anchor] of labels) {
    const i = Math.floor(index);
    const x = xOf(i, series.length);
    nodes.push(s("text", { class: "tick", x, y: H - 8, "text-anchor": anchor }, clock(series[i].at, series[i].step)));
  }
  return nodes;
}

function xOf(i, n) {
  const innerW = W - PAD.left - PAD.right;
  return PAD.left + (innerW * (i + 0.5)) / n;
}

function yOf(value, max) {
  const innerH = H - PAD.top - PAD.bottom;
  return PAD.top + innerH * (1 - value / max);
}

function chart(title, summary, body) {
  return h("figure", { class: "chart" },
    h("figcaption", {}, h("span", { class: "chart-title" }, title), h("span", { class: "chart-summary" }, summary)),
    s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: ${summary}`, preserveAspectRatio: "xMidYMid meet" }, body));
}

/** Bars of one count per bucket (calls or errors); `last` names the span ("the last hour"). */
export function barChart(title, series, key, kind, unit, last = "the last hour") {
  const values = series.map((p) => p[key]);
  const max = Math.max(2, niceMax(Math.max(...values)));
  const total = values.reduce((a, b) => a + b, 0);
  const innerW = W - PAD.left - PAD.right;
  const barW = Math.max(1, (innerW / series.length) * 0.72);
  const bars = series.map((p, i) => {
    const v = p[key];
    const y = yOf(v, max);
    return s("rect", { class: `bar ${kind}`, x: xOf(i, series.length) - barW / 2, y, width: barW, height: Math.max(0, yOf(0, max) - y), rx: 1.5 },
      s("title", {}, `${clock(p.at, p.step)}: ${v} ${unit}`));
  });
  const format = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
  return chart(title, `${total} in ${last}`, [...frame(max, format, series), ...bars]);
}

/** A line of the mean latency per bucket, with gaps where there were no calls. */
export function latencyChart(title, series, last = "the last hour") {
  const values = series.map((p) => p.latency_ms).filter((v) => v !== null && v !== undefined);
  const max = niceMax(Math.max(0, ...values));
  const format = (v) => (v >= 1000 ? `${(v / 1000).toFixed(1)}s` : v >= 10 || v === 0 ? `${Math.round(v)}ms` : `${v.toFixed(1)}ms`);
  let d = "";
  let drawing = false;
  const dots = [];
  series.forEach((p, i) => {
    if (p.latency_ms === null || p.latency_ms === undefined) {
      drawing = false;
      return;
    }
    const x = xOf(i, series.length), y = yOf(p.latency_ms, max);
    d += `${drawing ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    drawing = true;
    dots.push(s("circle", { class: "dot", cx: x, cy: y, r: 2.6 }, s("title", {}, `${clock(p.at, p.step)}: ${p.latency_ms.toFixed(1)} ms mean`)));
  });
  const latest = values.length ? values[values.length - 1] : null;
  const summary = latest === null ? `no calls in ${last}` : `latest ${format(latest)} mean`;
  return chart(title, summary, [...frame(max, format, series), s("path", { class: "line", d }), ...dots]);
}
