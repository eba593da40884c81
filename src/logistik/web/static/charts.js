// Small SVG charts of a handler's per-minute figures, drawn without any library.

import { h, s } from "./dom.js";

const W = 420, H = 170;
const PAD = { left: 44, right: 8, top: 12, bottom: 24 };
const SPAN_MIN = 60;

/** Per-minute series over the last hour, oldest first; minutes without calls are zero. */
export function perMinute(minutes, nowSeconds = Date.now() / 1000) {
  const byMinute = new Map((minutes || []).map((m) => [Math.floor(m.at / 60), m]));
  const current = Math.floor(nowSeconds / 60);
  const series = [];
  for (let i = SPAN_MIN - 1; i >= 0; i--) {
    const minute = current - i;
    const m = byMinute.get(minute);
    series.push({ at: minute * 60, calls: m ? m.calls : 0, errors: m ? m.errors : 0, latency_ms: m ? m.latency_ms : null });
  }
  return series;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function clock(at) {
  return new Date(at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
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
    nodes.push(s("text", { class: "tick", x, y: H - 8, "text-anchor": anchor }, clock(series[i].at)));
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

/** Bars of one per-minute count (calls or errors). */
export function barChart(title, series, key, kind, unit) {
  const values = series.map((p) => p[key]);
  const max = Math.max(2, niceMax(Math.max(...values)));
  const total = values.reduce((a, b) => a + b, 0);
  const innerW = W - PAD.left - PAD.right;
  const barW = Math.max(1, (innerW / series.length) * 0.72);
  const bars = series.map((p, i) => {
    const v = p[key];
    const y = yOf(v, max);
    return s("rect", { class: `bar ${kind}`, x: xOf(i, series.length) - barW / 2, y, width: barW, height: Math.max(0, yOf(0, max) - y), rx: 1.5 },
      s("title", {}, `${clock(p.at)}: ${v} ${unit}`));
  });
  const format = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
  return chart(title, `${total} in the last hour`, [...frame(max, format, series), ...bars]);
}

/** A line of the mean latency per minute, with gaps where there were no calls. */
export function latencyChart(title, series) {
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
    dots.push(s("circle", { class: "dot", cx: x, cy: y, r: 2.6 }, s("title", {}, `${clock(p.at)}: ${p.latency_ms.toFixed(1)} ms mean`)));
  });
  const last = values.length ? values[values.length - 1] : null;
  const summary = last === null ? "no calls in the last hour" : `last minute ${format(last)} mean`;
  return chart(title, summary, [...frame(max, format, series), s("path", { class: "line", d }), ...dots]);
}
