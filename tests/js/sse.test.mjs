// The client's SSE parser on its own: every way a server may end lines (CRLF, LF, CR), bytes
// split anywhere (a CRLF across two reads included), comments, multi-line data, retry-only
// frames, and an unterminated last frame dropped.
import { test } from "node:test";
import assert from "node:assert/strict";

import { parseSse } from "../../clients/js/longrun.js";

const TEXT = "id: 1\r\nevent: token\r\ndata: {\"a\":1}\r\n\r\n: ping\r\n\r\n"
  + "id: 2\ndata: x\ndata: y\n\nretry: 50\n\nid: 3\rdata: z\r\rid: 4\ndata: cut off";
const EXPECTED = [
  { id: "1", event: "token", data: "{\"a\":1}", retry: null },
  { id: "2", event: "message", data: "x\ny", retry: null },
  { id: null, event: "message", data: null, retry: 50 },
  { id: "3", event: "message", data: "z", retry: null },
];

function body(chunks) {
  return new ReadableStream({
    start(c) {
      for (const x of chunks) c.enqueue(new TextEncoder().encode(x));
      c.close();
    },
  });
}

async function parse(chunks) {
  const out = [];
  for await (const f of parseSse(body(chunks))) out.push(f);
  return out;
}

for (const size of [1, 2, 3, 5, 7, 13, 10_000]) {
  test(`frames come out the same whatever the reads (${size} bytes each)`, async () => {
    const chunks = [];
    for (let i = 0; i < TEXT.length; i += size) chunks.push(TEXT.slice(i, i + size));
    assert.deepEqual(await parse(chunks), EXPECTED);
  });
}

test("a large read of many events is parsed in one linear pass", async () => {
  const n = 50_000;
  let text = "";
  for (let i = 1; i <= n; i++) text += `id: ${i}\r\nevent: token\r\ndata: {"seq":${i}}\r\n\r\n`;
  const started = performance.now();
  const frames = await parse([text]);
  assert.equal(frames.length, n);
  assert.equal(frames.at(-1).id, String(n));
  // generous: a quadratic parser takes minutes here, a linear one well under a second
  assert.ok(performance.now() - started < 20_000);
});
