// Submit: pick an agent (the ones the API's schema names), type the input, params as JSON
// (checked as you type), a thread; then watch the run.
import { h, replace, errorBox } from "./dom.js";

async function agents(client, signal) {
  try {
    const schema = (await client.request("GET", "/openapi.json", { signal })).body;
    const agent = schema.components.schemas.SubmitRun.properties.agent;
    return agent.anyOf.find((o) => o.enum)?.enum ?? [];
  } catch {
    return [];
  }
}

/** The params object, or a message saying what is wrong with the text. */
export function parseParams(text) {
  if (!text.trim()) return { params: null };
  try {
    const value = JSON.parse(text);
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return { problem: "params must be a JSON object, like {\"count\": 10}" };
    }
    return { params: value };
  } catch (err) {
    return { problem: `not JSON: ${err.message}` };
  }
}

export async function render(ctx, main) {
  const { client, signal } = ctx;
  const names = await agents(client, signal);
  const agent = h("select", { id: "s-agent" }, h("option", { value: "" }, "default"),
    names.map((n) => h("option", { value: n }, n)));
  const input = h("textarea", { id: "s-input", required: true, rows: 4 });
  const params = h("textarea", { id: "s-params", rows: 3, "aria-describedby": "s-params-help",
    spellcheck: false });
  const help = h("p", { id: "s-params-help" }, "A JSON object, e.g. {\"count\": 50}; empty for none.");
  const thread = h("input", { id: "s-thread", pattern: "[A-Za-z0-9._:\\-]{1,128}",
    placeholder: "none" });
  const failure = h("div");
  const go = h("button", { type: "submit" }, "Submit and watch");

  const check = () => {
    const got = parseParams(params.value);
    params.setAttribute("aria-invalid", got.problem ? "true" : "false");
    help.textContent = got.problem ?? "A JSON object, e.g. {\"count\": 50}; empty for none.";
    help.className = got.problem ? "error" : "";
    go.disabled = Boolean(got.problem);
    return got;
  };
  params.addEventListener("input", check);

  const form = h("form", { class: "panel", "aria-labelledby": "submit-h", onsubmit: async (e) => {
    e.preventDefault();
    const got = check();
    if (got.problem) { params.focus(); return; }
    go.disabled = true;
    try {
      const run = await client.create({ input: input.value, agent: agent.value || null,
        params: got.params, threadId: thread.value.trim() || null });
      window.location.hash = `#/runs/${run.run_id}`;
    } catch (err) {
      replace(failure, errorBox(err));
      go.disabled = false;
    }
  } },
  h("h1", { id: "submit-h" }, "Submit a run"),
  h("label", { for: "s-agent" }, "Agent", agent),
  h("label", { for: "s-input" }, "Input", input),
  h("label", { for: "s-params" }, "Params (JSON)", params), help,
  h("label", { for: "s-thread" }, "Thread (optional)", thread),
  h("div", { class: "row" }, go), failure);
  main.append(form);
  agent.focus();
}
