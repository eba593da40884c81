// The query page: send one event to one model and see its answer, without Kafka.

import { ApiError, get, send } from "./api.js";
import { ago, h, ms, put } from "./dom.js";

const freshId = () => `ui-${Date.now().toString(36)}`;

/** The event the editor starts from: a topic's newest event with a new id, else an example. */
function sample(latest) {
  if (latest) return JSON.stringify({ ...latest.event, id: freshId() }, null, 2);
  return JSON.stringify({ id: freshId(), verb: "test", actor: { id: "logistik-ui" }, object: { id: "example-1" } }, null, 2);
}

const EXAMPLE_HINT = "An example event: \"verb\" says what happened (required), \"actor\" who did it, \"object\" what it was done to; write what the model expects.";

/** Where a JSON parse error is, as "line L, column C". */
function position(text, error) {
  const match = /position (\d+)/.exec(error.message);
  if (!match) return "";
  const index = Number(match[1]);
  const before = text.slice(0, index).split("\n");
  return ` (line ${before.length}, column ${before[before.length - 1].length + 1})`;
}

function validate(text) {
  if (!text.trim()) return { ok: false, message: "Write the event as a JSON object." };
  try {
    const value = JSON.parse(text);
    if (value === null || typeof value !== "object" || Array.isArray(value)) return { ok: false, message: "The event must be a JSON object ({ … })." };
    if (typeof value.verb !== "string" || !value.verb) return { ok: true, value, message: "Valid JSON object. Note: it has no \"verb\"; the router would refuse it, a model may too." };
    return { ok: true, value, message: "Valid JSON object." };
  } catch (error) {
    return { ok: false, message: `Not valid JSON: ${error.message.replace(/^JSON\.parse: /, "")}${position(text, error)}` };
  }
}

function outcomeClass(outcome) {
  return { ok: "good", ignored: "plain", duplicate: "plain", refused: "bad", error: "bad", timeout: "warn" }[outcome] || "plain";
}

function pretty(body) {
  if (body === null || body === undefined || body === "") return "(empty body)";
  if (typeof body === "string") {
    try {
      return JSON.stringify(JSON.parse(body), null, 2);
    } catch {
      return body;
    }
  }
  return JSON.stringify(body, null, 2);
}

/** The query page. */
export function queryPage(ctx, _arg, params) {
  let alive = true;
  let views = [];
  let edited = false;
  const wanted = params.get("node") || "";
  const modelSelect = h("select", { id: "query-model", name: "node_id", required: true }, h("option", { value: "" }, "Loading models…"));
  const textarea = h("textarea", { id: "query-event", name: "event", rows: 14, spellcheck: false, autocomplete: "off", "aria-describedby": "query-validation" });
  const validation = h("p", { id: "query-validation", class: "validation", "aria-live": "polite" });
  const origin = h("p", { id: "query-origin", class: "hint" }, EXAMPLE_HINT);
  const latest = new Map(); // topic -> its newest event (null: none), fetched once per page
  const sendButton = h("button", { type: "submit", class: "btn primary", id: "query-send" }, "Send");
  const format = h("button", { type: "button", class: "btn" }, "Format");
  const writeHint = h("p", { class: "hint", hidden: true }, "Sending a query needs write access. ",
    h("button", { type: "button", class: "btn small", onclick: () => ctx.openLogin() }, "Log in"));
  const resultBox = h("div", { class: "query-result", id: "query-result", "aria-live": "polite" },
    h("p", { class: "muted" }, "The model's answer shows here. Nothing is published: the query goes to the model only."));

  function check() {
    const outcome = validate(textarea.value);
    validation.textContent = outcome.message;
    validation.className = `validation ${outcome.ok ? "valid" : "invalid"}`;
    textarea.setAttribute("aria-invalid", String(!outcome.ok));
    const session = ctx.session();
    const refused = session.known && !session.can_write;
    sendButton.disabled = !outcome.ok || !modelSelect.value || refused;
    writeHint.hidden = !refused;
    return outcome;
  }

  textarea.addEventListener("input", () => {
    edited = true;
    check();
  });
  /** Start the editor from the chosen model's topic: its newest event when one can be read. */
  async function prefill() {
    const chosen = views.find((v) => v.node_id === modelSelect.value);
    const topic = chosen ? chosen.event : "";
    const show = () => {
      const found = latest.get(topic) || null;
      textarea.value = sample(found);
      origin.textContent = found ? `Starts from the newest event on ${topic} (${found.source}, ${ago(found.at)}), with a new id.` : EXAMPLE_HINT;
      check();
    };
    show();
    if (!topic || latest.has(topic) || !ctx.session().can_write) return;
    let found = null;
    try {
      found = await get(`/api/topics/${encodeURIComponent(topic)}/latest-event`);
    } catch {
      // No event on the topic yet, or it cannot be read: the example stays.
    }
    latest.set(topic, found);
    const still = views.find((v) => v.node_id === modelSelect.value);
    if (alive && !edited && still && still.event === topic) show();
  }

  modelSelect.addEventListener("change", () => {
    modelSelect.dataset.chosen = modelSelect.value;
    if (!edited) prefill();
    const query = new URLSearchParams();
    if (modelSelect.value) query.set("node", modelSelect.value);
    ctx.setParams(query);
    check();
  });
  format.addEventListener("click", () => {
    const outcome = check();
    if (outcome.ok) textarea.value = JSON.stringify(outcome.value, null, 2);
  });

  const form = h("form", { class: "card query-form", novalidate: true },
    h("div", { class: "stack" },
      h("label", { for: "query-model" }, "Model"), modelSelect,
      h("label", { for: "query-event" }, "Event (JSON)"), textarea, validation, origin,
      h("div", { class: "row-actions" }, writeHint, format, sendButton)));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const outcome = check();
    if (!outcome.ok || !modelSelect.value) return;
    sendButton.disabled = true;
    sendButton.textContent = "Sending…";
    resultBox.replaceChildren(h("p", { class: "muted" }, "Waiting for the model…"));
    try {
      const answer = await send("POST", "/api/query", { node_id: modelSelect.value, event: outcome.value });
      if (!alive) return;
      put(resultBox,
        h("div", { class: "result-head" },
          h("span", { class: `pill ${outcomeClass(answer.outcome)}`, id: "query-outcome" }, answer.outcome || "–"),
          h("span", { class: "result-stat" }, h("span", { class: "muted" }, "status "), h("strong", { id: "query-status" }, answer.status ?? "–")),
          h("span", { class: "result-stat" }, h("span", { class: "muted" }, "latency "), h("strong", {}, ms(answer.latency_ms))),
          h("span", { class: "mono muted url" }, answer.url || "")),
        answer.error ? h("div", { class: "callout error" }, h("strong", {}, "Error: "), answer.error) : null,
        h("pre", { class: "answer", id: "query-answer", tabindex: "0", "aria-label": "The model's answer" }, pretty(answer.body)));
    } catch (error) {
      if (!alive) return;
      const login = error instanceof ApiError && (error.status === 401 || error.status === 403) && !ctx.session().user;
      resultBox.replaceChildren(h("div", { class: "callout error", role: "alert" }, h("strong", {}, "Not sent: "), error.message,
        login ? [" ", h("button", { type: "button", class: "btn small", onclick: () => ctx.openLogin() }, "Log in")] : null));
    } finally {
      sendButton.textContent = "Send";
      check();
    }
  });

  const node = h("section", { class: "page query-page" },
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Query a model"),
      h("p", { class: "count" }, "Send one event straight to one model and see what it answers."))),
    h("div", { class: "query-grid" }, form, h("section", { class: "card", "aria-labelledby": "answer-title" }, h("h2", { id: "answer-title" }, "Answer"), resultBox)));

  function setModels() {
    const key = JSON.stringify(views.map((v) => [v.node_id, v.name, v.model_type, v.state, v.event]));
    if (modelSelect.dataset.key === key) return;
    modelSelect.dataset.key = key;
    const current = modelSelect.value || wanted;
    const topics = [...new Set(views.map((v) => v.event || "(no topic)"))].sort();
    modelSelect.replaceChildren(h("option", { value: "" }, views.length ? "Choose a model…" : "No models"),
      ...topics.map((topic) => h("optgroup", { label: topic }, views.filter((v) => (v.event || "(no topic)") === topic)
        .sort((a, b) => a.name.localeCompare(b.name) || a.node_id.localeCompare(b.node_id))
        .map((v) => h("option", { value: v.node_id }, `${v.name} · ${v.model_type} · ${v.state} · ${v.node_id}`)))));
    const before = modelSelect.dataset.chosen || "";
    if (views.some((v) => v.node_id === current)) modelSelect.value = current;
    modelSelect.dataset.chosen = modelSelect.value;
    if (!edited && modelSelect.value !== before) prefill();
    check();
  }

  textarea.value = sample(null);
  check();
  return {
    title: "Query",
    node,
    async refresh() {
      const answer = await get("/api/handlers");
      if (!alive) return;
      views = answer;
      setModels();
      check();
    },
    destroy() {
      alive = false;
    },
  };
}
