// The hosts page: per endpoint, the models it runs and their state.

import { get } from "./api.js";
import { fill, h, handlerHref, stateBadge } from "./dom.js";

function hostCard(host) {
  const states = {};
  for (const m of host.handlers) states[m.state] = (states[m.state] || 0) + 1;
  const troubled = host.handlers.some((m) => m.state === "down" || m.state === "invalid");
  return h("article", { class: `card host-card ${troubled ? "troubled" : ""}` },
    h("header", { class: "host-head" },
      h("div", {}, h("h2", {}, host.hostname), h("p", { class: "mono muted" }, host.endpoint)),
      h("p", { class: "host-summary" }, Object.entries(states).map(([state, n]) => h("span", { class: `count-badge state-${state}` }, `${n} ${state}`)))),
    h("ul", { class: "host-models" }, host.handlers.map((m) => h("li", {},
      h("a", { href: handlerHref(m.node_id), class: "host-model-name" }, m.name),
      h("span", { class: `type type-${m.model_type}` }, h("span", { class: "type-name" }, m.model_type)),
      h("span", { class: "mono muted" }, `:${m.port}`),
      h("span", { class: m.version ? "version" : "version empty", "aria-hidden": m.version ? null : "true" }, m.version || "–"),
      stateBadge(m.state)))));
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** The hosts page. */
export function hostsPage() {
  let alive = true;
  const grid = h("div", { class: "host-grid" });
  const count = h("p", { class: "count" }, "Loading…");
  const node = h("section", { class: "page hosts-page" }, h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Hosts"), count)), grid);
  return {
    title: "Hosts",
    node,
    async refresh() {
      const hosts = await get("/api/hosts");
      if (!alive) return;
      const models = hosts.reduce((a, host) => a + host.handlers.length, 0);
      count.textContent = `${plural(hosts.length, "host")}, ${plural(models, "model")}`;
      fill(grid, JSON.stringify(hosts), hosts.length ? hosts.map(hostCard) : h("div", { class: "empty" }, h("h2", {}, "No hosts yet"), h("p", {}, "Hosts appear with their first model.")));
    },
    destroy() {
      alive = false;
    },
  };
}
