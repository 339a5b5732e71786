// Compiled by `tsc -p clients/js` (tests/test_js_client.py): the declarations in longrun.d.ts
// are well-formed and describe the client the way its users call it. Never run.
import {
  Client,
  LongrunError,
  NotFoundError,
  type Run,
  type RunEvent,
  type RunPage,
  type Submitted,
} from "./longrun.js";

export async function usage(): Promise<void> {
  const lr = new Client({ baseUrl: "http://127.0.0.1:8000", apiKey: "lr_x" });
  const made: Submitted = await lr.create(
    { input: "hi", agent: "ticker", params: { count: 3 }, threadId: "t" },
    { idempotencyKey: "k" },
  );
  const run: Run = await lr.get(made.run_id);
  const page: RunPage = await lr.list({ status: "running", limit: 10, cursor: null });
  for await (const r of lr.listAll({ threadId: "t" })) r.run_id.toUpperCase();
  const ended: Run = await lr.wait(run.run_id, { timeout: 60 });
  const texts: string[] = [];
  for await (const e of lr.stream(made.run_id, {
    lastEventId: 3,
    onState: (state, info) => void [state, info.attempt],
  })) {
    const event: RunEvent = e;
    if (event.type === "token") texts.push(event.text);
    if (event.type === "error") texts.push(event.code, event.message);
  }
  const later: Submitted = await lr.create({ input: "x", startAfter: 30, priority: "low" });
  const at: string | null | undefined = later.start_at;
  await lr.create({ input: "x", startAt: new Date(Date.now() + 60_000) });
  await lr.create({ input: "x", startAt: at ?? "2030-01-02T03:04:05Z" });
  for await (const item of lr.createAndStream({ input: "x" }, { useToken: true })) {
    if (item.type === "created") item.run.events_url.toString();
  }
  const page2 = new Client({ baseUrl: "http://x" });
  const url = (await lr.eventsUrl(made.run_id)).events_url;
  for await (const e of page2.stream(made.run_id, { eventsUrl: url })) e.seq.toFixed();
  try {
    await lr.cancel(made.run_id);
  } catch (err) {
    if (err instanceof NotFoundError) err.requestId?.toUpperCase();
    if (err instanceof LongrunError) [err.status, err.code, err.retryAfter];
  }
  void [page, ended];
}
