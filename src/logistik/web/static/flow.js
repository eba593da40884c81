// The flow page: topics, the model groups subscribed to them, and where their answers go.

import { get } from "./api.js";
import { fill, h, handlerHref, num, stateBadge, typeBadge } from "./dom.js";

const TYPE_ORDER = { model: 0, canary: 1, decoy: 2, deploy: 3 };

function groupBy(list, key) {
  const groups = new Map();
  for (const item of list) {
    const k = key(item);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(item);
  }
  return groups;
}

function lane(topic, handlers, figures) {
  const groups = [...groupBy(handlers, (v) => v.group_id)].sort(([a], [b]) => a.localeCompare(b));
  const failedTopics = [...new Set(handlers.map((v) => v.failed_topic || `${topic}-failed`))];
  const failed = figures ? Object.values(figures.failed || {}).reduce((a, b) => a + b, 0) : 0;
  return h("section", { class: "lane", "aria-label": `topic ${topic}` },
    h("div", { class: "flow-topic" },
      h("span", { class: "flow-kind" }, "topic"),
      h("h2", { class: "mono" }, topic),
      h("p", { class: "flow-figures" }, h("span", {}, `${num(figures ? figures.events_in : 0)} in`), h("span", {}, `${num(figures ? figures.published : 0)} published`),
        h("span", { class: failed ? "err" : "" }, `${num(failed)} failed`)),
      h("p", { class: "flow-failed" }, h("span", { class: "muted" }, "failures → "), failedTopics.map((t) => h("span", { class: "mono chip failed-chip" }, t)))),
    h("div", { class: "flow-groups" }, groups.map(([group, members]) => {
      members.sort((a, b) => TYPE_ORDER[a.model_type] - TYPE_ORDER[b.model_type] || a.name.localeCompare(b.name));
      const outputs = [...new Set(members.filter((v) => v.model_type === "model" || v.model_type === "canary").map((v) => v.return_to).filter(Boolean))];
      const live = members.some((v) => v.state === "active" && (v.model_type === "model" || v.model_type === "canary"));
      return h("div", { class: "flow-row" },
        h("span", { class: "arrow-in", "aria-hidden": "true" }),
        h("div", { class: `flow-group ${live ? "" : "no-live"}` },
          h("div", { class: "flow-group-head" }, h("span", { class: "flow-kind" }, "group"), h("strong", { class: "mono" }, group),
            live ? null : h("span", { class: "badge state-down", title: "no active production or canary instance" }, "nobody answers")),
          h("ul", {}, members.map((v) => h("li", {}, typeBadge(v), h("a", { href: handlerHref(v.node_id) }, v.name),
            h("span", { class: "mono muted small" }, `${v.hostname}:${v.port}`), stateBadge(v.state))))),
        h("span", { class: "arrow-out", "aria-hidden": "true" }),
        h("div", { class: "flow-out" }, h("span", { class: "flow-kind" }, "answers to"),
          outputs.length ? outputs.map((t) => h("span", { class: "mono chip" }, t)) : h("span", { class: "muted" }, "nothing published")));
    })));
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** The flow page. */
export function flowPage(ctx) {
  let alive = true;
  const body = h("div", { class: "flow" });
  const count = h("p", { class: "count" }, "Loading…");
  const node = h("section", { class: "page flow-page" }, h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Flow"), count)), body);
  return {
    title: "Flow",
    node,
    async refresh() {
      const views = await get("/api/handlers");
      if (!alive) return;
      const status = ctx.status();
      const byTopic = [...groupBy(views.filter((v) => v.event), (v) => v.event)].sort(([a], [b]) => a.localeCompare(b));
      const unrouted = views.filter((v) => !v.event);
      const groups = new Set(views.filter((v) => v.event).map((v) => `${v.event}/${v.group_id}`)).size;
      const outputs = new Set(views.filter((v) => v.model_type === "model" || v.model_type === "canary").map((v) => v.return_to).filter(Boolean)).size;
      count.textContent = `${plural(byTopic.length, "topic")} → ${plural(groups, "group")} → ${plural(outputs, "answer topic")}`;
      const topics = (status && status.topics) || {};
      fill(body, JSON.stringify([views.map((v) => [v.node_id, v.state, v.model_type, v.traffic, v.decoy, v.return_to, v.failed_topic, v.group_id]), topics]),
        byTopic.length ? byTopic.map(([topic, handlers]) => lane(topic, handlers, topics[topic])) : h("div", { class: "empty" }, h("h2", {}, "Nothing flows yet"), h("p", {}, "Topics appear with the first model that handles them.")),
        unrouted.length ? h("section", { class: "card" }, h("h2", {}, "Without a topic"),
          h("ul", { class: "plain-list" }, unrouted.map((v) => h("li", {}, h("a", { href: handlerHref(v.node_id) }, v.name), " ", stateBadge(v.state), " ", h("span", { class: "muted" }, v.problem || ""))))) : null);
    },
    destroy() {
      alive = false;
    },
  };
}
