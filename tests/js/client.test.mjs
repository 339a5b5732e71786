// The JavaScript client against a real running stack (started by tests/test_js_client.py,
// which passes its addresses in the environment): an API, a worker, and a TCP proxy in front
// of the API whose links this test cuts through LONGRUN_CONTROL (`POST /cut`).
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";

import {
  Client, NotFoundError, UnauthorizedError, BadRequestError, ConflictError, LongrunError,
} from "../../clients/js/longrun.js";

const env = process.env;
const direct = new Client({ baseUrl: env.LONGRUN_URL, apiKey: env.LONGRUN_KEY });
const proxied = new Client({ baseUrl: env.LONGRUN_PROXY_URL, apiKey: env.LONGRUN_KEY });
const bob = new Client({ baseUrl: env.LONGRUN_URL, apiKey: env.LONGRUN_OTHER_KEY });

async function cut() {
  const resp = await fetch(`${env.LONGRUN_CONTROL}/cut`, { method: "POST" });
  assert.equal(resp.status, 200);
}

const ticker = (count, interval_ms) => ({ input: "x", agent: "ticker", params: { count, interval_ms } });
const tokens = (events) => events.filter((e) => e.type === "token").map((e) => e.text);
const oneTo = (n) => Array.from({ length: n }, (_, i) => String(i + 1));

function assertGapless(events) {
  assert.deepEqual(events.map((e) => e.seq), Array.from({ length: events.length }, (_, i) => i + 1));
}

/** Follows a run, cutting the proxy's links once each of `at` tokens has arrived. */
async function followWithCuts(client, runId, at, options = {}) {
  const events = [];
  const states = [];
  const cuts = [...at];
  for await (const e of client.stream(runId, { ...options, onState: (s) => states.push(s) })) {
    events.push(e);
    if (e.type === "token" && cuts.length && Number(e.text) >= cuts[0]) {
      cuts.shift();
      await cut();
    }
  }
  return { events, reconnects: states.filter((s) => s === "reconnecting").length };
}

test("a stream cut three times mid-run hands out every event exactly once, in order", async () => {
  const run = await proxied.create(ticker(30, 120));
  const { events, reconnects } = await followWithCuts(proxied, run.run_id, [4, 12, 21]);
  assertGapless(events);
  assert.deepEqual(tokens(events), oneTo(30));
  assert.equal(events.at(-1).type, "done");
  assert.ok(reconnects >= 3, `reconnected ${reconnects} times`);
});

test("a keyless client streams with the events_url token, across cuts", async () => {
  // Given a run submitted by a client that holds the key, and one (a page) that does not
  const run = await direct.create(ticker(20, 120));
  const page = new Client({ baseUrl: env.LONGRUN_PROXY_URL });
  const viaProxy = (url) => {
    const u = new URL(url);
    const p = new URL(env.LONGRUN_PROXY_URL);
    u.host = p.host;
    return u.toString();
  };
  // When it follows the run with the token alone, and the link is cut twice
  const { events, reconnects } = await followWithCuts(page, run.run_id, [5, 13], {
    eventsUrl: viaProxy(run.events_url),
    refreshEventsUrl: async () => viaProxy((await direct.eventsUrl(run.run_id)).events_url),
  });
  // Then it saw everything once
  assertGapless(events);
  assert.deepEqual(tokens(events), oneTo(20));
  assert.ok(reconnects >= 2);
});

test("createAndStream submits and follows; a resume after the end replays nothing", async () => {
  const seen = [];
  let created;
  for await (const item of direct.createAndStream(ticker(5, 10))) {
    if (item.type === "created") created = item.run;
    else seen.push(item);
  }
  assert.equal(created.status, "queued");
  assertGapless(seen);
  assert.deepEqual(tokens(seen), oneTo(5));
  const after = [];
  for await (const e of direct.stream(created.run_id, { lastEventId: seen.at(-1).seq })) after.push(e);
  assert.deepEqual(after, []);
  const resumed = [];
  for await (const e of direct.stream(created.run_id, { lastEventId: 3 })) resumed.push(e.seq);
  assert.deepEqual(resumed, seen.slice(3).map((e) => e.seq));
});

test("wait returns the ended run (the server's /wait route, or polling where it has none)", async () => {
  const run = await direct.create(ticker(3, 50));
  const ended = await direct.wait(run.run_id, { timeout: 60, pollInterval: 0.2 });
  assert.equal(ended.status, "succeeded");
  assert.equal(ended.run_id, run.run_id);
});

test("wait follows the /wait contract: 202 with Retry-After, then 200 with the final run", async () => {
  // A stand-in for the route's contract only (the real stack is used everywhere else).
  const asked = [];
  const server = http.createServer((req, res) => {
    asked.push(req.url);
    const done = asked.length >= 3;
    res.writeHead(done ? 200 : 202, { "content-type": "application/json", "retry-after": "0" });
    res.end(JSON.stringify({ run_id: "r", status: done ? "succeeded" : "running" }));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    const c = new Client({ baseUrl: `http://127.0.0.1:${server.address().port}`, apiKey: "k" });
    const run = await c.wait("r", { timeout: 10, poll: 5 });
    assert.equal(run.status, "succeeded");
    assert.equal(asked.length, 3);
    assert.match(asked[0], /^\/runs\/r\/wait\?timeout=5$/);
  } finally {
    server.close();
  }
});

test("wait gives up at its timeout with a typed error", async () => {
  const run = await direct.create(ticker(1000, 100));
  try {
    await assert.rejects(direct.wait(run.run_id, { timeout: 1, pollInterval: 0.2 }),
      (err) => err instanceof LongrunError && err.code === "wait_timeout");
  } finally {
    await direct.cancel(run.run_id);
  }
});

test("cancel ends a running run: its stream closes with `cancelled`; cancelling again is a 409", async () => {
  const run = await direct.create(ticker(1000, 50));
  const events = [];
  for await (const e of direct.stream(run.run_id)) {
    events.push(e);
    if (e.type === "token" && e.text === "3") await direct.cancel(run.run_id);
  }
  assert.equal(events.at(-1).type, "cancelled");
  assertGapless(events);
  assert.equal((await direct.get(run.run_id)).status, "cancelled");
  await assert.rejects(direct.cancel(run.run_id), (err) => err instanceof ConflictError
    && err.code === "already_finished" && typeof err.requestId === "string");
});

test("list pages newest first with keyset cursors, and filters by thread and status", async () => {
  const thread = `js-${Date.now()}`;
  const made = [];
  for (let i = 0; i < 3; i++) made.push((await direct.create({ ...ticker(1, 1), threadId: thread })).run_id);
  const first = await direct.list({ limit: 2, threadId: thread });
  assert.deepEqual(first.runs.map((r) => r.run_id), [made[2], made[1]]);
  assert.ok(first.next_cursor);
  const all = [];
  for await (const r of direct.listAll({ limit: 2, threadId: thread })) all.push(r.run_id);
  assert.deepEqual(all, [...made].reverse());
  for (const id of made) await direct.wait(id, { timeout: 60, pollInterval: 0.2 });
  const done = await direct.list({ threadId: thread, status: "succeeded" });
  assert.equal(done.runs.length, 3);
  assert.deepEqual((await direct.list({ threadId: thread, status: "queued" })).runs, []);
  const messages = await direct.threadMessages(thread).catch((e) => e);
  assert.ok(!(messages instanceof LongrunError) || messages instanceof NotFoundError);
});

test("errors are typed and carry the request id", async () => {
  const run = await direct.create(ticker(1, 1));
  await assert.rejects(bob.get(run.run_id), (err) => err instanceof NotFoundError
    && err.status === 404 && /^[\w-]+$/.test(err.requestId));
  await assert.rejects(async () => { for await (const _ of bob.stream(run.run_id)) { /* none */ } },
    NotFoundError);
  const stranger = new Client({ baseUrl: env.LONGRUN_URL, apiKey: "lr_not_a_key" });
  await assert.rejects(stranger.list(), (err) => err instanceof UnauthorizedError
    && err.code === "unauthorized" && Boolean(err.requestId));
  await assert.rejects(direct.create({ input: "x", threadId: "not a valid id!" }),
    (err) => err instanceof BadRequestError && err.status >= 400 && Boolean(err.requestId));
  await assert.rejects(direct.get("not-a-uuid"), (err) => err.code === "invalid_run_id");
});

/** A stand-in SSE server playing one scripted answer per connection; records each request's
 * Last-Event-ID. For what the real stack cannot be made to do (serve a hole, repeat events). */
async function scripted(answers) {
  const asked = [];
  const server = http.createServer((req, res) => {
    asked.push(req.headers["last-event-id"] ?? null);
    const frames = answers[Math.min(asked.length - 1, answers.length - 1)];
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.end(frames.map(([seq, type]) =>
      `id: ${seq}\nevent: ${type}\ndata: ${JSON.stringify({ seq, type, text: String(seq) })}\n\n`).join(""));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { asked, server, url: `http://127.0.0.1:${server.address().port}` };
}

test("a hole in the stream is never handed out: the client asks again from the last event", async () => {
  const s = await scripted([
    [[1, "start"], [2, "token"], [4, "token"]],
    [[3, "token"], [4, "token"], [5, "done"]],
  ]);
  try {
    const c = new Client({ baseUrl: s.url, apiKey: "k" });
    const seqs = [];
    for await (const e of c.stream("r", { maxBackoff: 0.05 })) seqs.push(e.seq);
    assert.deepEqual(seqs, [1, 2, 3, 4, 5]);
    assert.deepEqual(s.asked, [null, "2"]);
  } finally {
    s.server.close();
  }
});

test("events a server repeats after a reconnect are dropped, not handed out twice", async () => {
  const s = await scripted([
    [[1, "start"], [2, "token"]],
    [[1, "start"], [2, "token"], [3, "token"], [4, "done"]],
  ]);
  try {
    const c = new Client({ baseUrl: s.url, apiKey: "k" });
    const seqs = [];
    for await (const e of c.stream("r", { maxBackoff: 0.05 })) seqs.push(e.seq);
    assert.deepEqual(seqs, [1, 2, 3, 4]);
    assert.deepEqual(s.asked, [null, "2"]);
  } finally {
    s.server.close();
  }
});

test("a delayed start: startAfter and startAt (a Date or RFC 3339 text) reach the run; both at once is a 422", async () => {
  const later = await direct.create({ ...ticker(1, 1), startAfter: 120 });
  assert.equal(later.status, "queued");
  assert.ok(later.start_at);
  const when = new Date(Date.now() + 3_600_000);
  const at = await direct.create({ ...ticker(1, 1), startAt: when });
  assert.equal(Date.parse(at.start_at), when.getTime());
  const run = await direct.get(at.run_id);
  assert.equal(run.status, "queued");
  assert.equal(run.start_at, at.start_at);
  await assert.rejects(
    direct.create({ ...ticker(1, 1), startAfter: 5, startAt: when }),
    (err) => err instanceof LongrunError && err.status === 422 && err.code === "invalid_start",
  );
  for (const r of [later, at]) await direct.cancel(r.run_id);
});
