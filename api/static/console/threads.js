// Threads: a conversation's messages (`GET /threads/{id}/messages`) and its runs.
import { h, statusBadge, ago, short, errorBox } from "./dom.js";

function text(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((b) => b.text ?? (b.type === "tool_use" ? `[tool ${b.name}]`
      : b.type === "tool_result" ? "[tool result]" : JSON.stringify(b))).join(" ");
  }
  return JSON.stringify(content);
}

export async function render(ctx, main, [raw]) {
  const { client, signal } = ctx;
  const threadId = raw ? decodeURIComponent(raw) : "";
  const input = h("input", { id: "t-id", value: threadId, required: true });
  main.append(h("h1", {}, threadId ? `Thread ${threadId}` : "Threads"),
    h("form", { class: "row", role: "search", onsubmit: (e) => {
      e.preventDefault();
      window.location.hash = `#/threads/${encodeURIComponent(input.value.trim())}`;
    } }, h("label", { for: "t-id" }, "Thread id", input),
    h("button", { type: "submit" }, "Open")));
  if (!threadId) return;

  const runs = (await client.list({ threadId, limit: 50, signal })).runs;
  main.append(h("h2", {}, "Runs"), runs.length
    ? h("ul", { id: "thread-runs" }, runs.map((r) => h("li", {},
      h("a", { href: `#/runs/${r.run_id}`, class: "mono" }, short(r.run_id)), " ",
      statusBadge(r.status), ` ${r.agent}, ${ago(r.created_at)}`)))
    : h("p", {}, "No runs on this thread."));

  main.append(h("h2", {}, "Messages"));
  try {
    const answer = await client.threadMessages(threadId, { limit: 200, signal });
    main.append(h("ol", { id: "messages" }, answer.messages.map((m) =>
      h("li", {}, h("strong", {}, `${m.role}: `), text(m.content)))));
  } catch (err) {
    main.append(err.status === 404 ? h("p", {}, "No messages yet.") : errorBox(err));
  }
}
