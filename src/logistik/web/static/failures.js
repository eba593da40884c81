// The failures page: the records this router wrote to failed topics most recently.

import { get } from "./api.js";
import { ago, fill, h, handlerHref, nowType, num, stamp } from "./dom.js";

const LIMIT = 100;

function topicFigures(status) {
  const topics = Object.entries((status && status.topics) || {});
  if (!topics.length) return null;
  return h("table", { class: "plain topic-figures" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Topic"), h("th", { scope: "col", class: "num" }, "Events in"),
      h("th", { scope: "col", class: "num" }, "Published"), h("th", { scope: "col" }, "Failed, by reason"))),
    h("tbody", {}, topics.map(([name, t]) => h("tr", {},
      h("td", { class: "mono", dataset: { label: "Topic" } }, name), h("td", { class: "num", dataset: { label: "Events in" } }, num(t.events_in)),
      h("td", { class: "num", dataset: { label: "Published" } }, num(t.published)),
      h("td", { dataset: { label: "Failed" } }, Object.keys(t.failed).length ? Object.entries(t.failed).map(([reason, n]) => h("span", { class: "reason" }, `${reason} ${num(n)}`)) : h("span", { class: "muted" }, "none"))))));
}

/** Node ids, each with its type now when a promotion changed it since it was registered. */
function nodes(list, types) {
  if (!list || !list.length) return h("span", { class: "muted" }, "–");
  return h("span", { class: "node-list" }, list.map((id) => h("span", {}, h("a", { href: handlerHref(id), class: "mono" }, id), nowType(id, types.get(id)) ? [" ", nowType(id, types.get(id))] : null)));
}

function row(f, types) {
  return h("tr", {},
    h("td", { dataset: { label: "When" }, title: stamp(f.at) }, ago(f.at)),
    h("td", { class: "mono", dataset: { label: "Topic" } }, h("span", {}, f.topic, h("span", { class: "muted" }, " → "), f.failed_topic)),
    h("td", { dataset: { label: "Reason" } }, h("span", { class: "reason" }, f.reason)),
    h("td", { class: "error-cell", dataset: { label: "Error" }, title: f.error || "" }, f.error || h("span", { class: "muted" }, "–")),
    h("td", { class: "mono", dataset: { label: "Event id" } }, f.event_id ? h("span", { class: "event-id", title: f.event_id }, f.event_id) : "–"),
    h("td", { class: "mono", dataset: { label: "Group" } }, f.group || "–"),
    h("td", { dataset: { label: "Models" } }, nodes(f.nodes, types)),
    h("td", { class: "num", dataset: { label: "Retries" } }, num(f.retries)),
    h("td", { class: "mono muted", dataset: { label: "Source" } }, f.source || "–"));
}

/** The failures page. */
export function failuresPage(ctx) {
  let alive = true;
  const figures = h("div", { class: "card" });
  const list = h("div");
  const count = h("p", { class: "count" }, "Loading…");
  const node = h("section", { class: "page failures-page" },
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Failures"), count)),
    figures, list);
  return {
    title: "Failures",
    node,
    async refresh() {
      const [failures, handlers] = await Promise.all([get(`/api/failures?limit=${LIMIT}`), get("/api/handlers")]);
      if (!alive) return;
      const types = new Map(handlers.map((v) => [v.node_id, v.model_type]));
      count.textContent = failures.length ? `The ${failures.length} most recent records written to failed topics by this router` : "Nothing written to a failed topic since this router started";
      const status = ctx.status();
      fill(figures, JSON.stringify(status && status.topics), h("h2", {}, "Per topic"), topicFigures(status) || h("p", { class: "muted" }, "No events routed yet."));
      fill(list, JSON.stringify([failures, failures.map((f) => ago(f.at)), [...types]]), failures.length
        ? h("div", { class: "table-wrap" }, h("table", { class: "failures", id: "failures-table" },
          h("thead", {}, h("tr", {}, ["When", "Topic → failed topic", "Reason", "Error", "Event id", "Group", "Models", "Retries", "Source"]
            .map((label) => h("th", { scope: "col", class: label === "Retries" ? "num" : "" }, label)))),
          h("tbody", {}, failures.map((f) => row(f, types)))))
        : h("div", { class: "empty" }, h("h2", {}, "No failures"), h("p", {}, "Every event so far was answered, ignored or already handled.")));
    },
    destroy() {
      alive = false;
    },
  };
}
