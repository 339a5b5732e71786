// Schedules from the JavaScript client against a real running stack (started by
// tests/test_js_client.py): create, read, list, the runs a schedule made, delete, and the
// API's refusals as typed errors. Another user's schedule is a 404.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Client, NotFoundError, BadRequestError } from "../../clients/js/longrun.js";

const env = process.env;
const alice = new Client({ baseUrl: env.LONGRUN_URL, apiKey: env.LONGRUN_KEY });
const bob = new Client({ baseUrl: env.LONGRUN_URL, apiKey: env.LONGRUN_OTHER_KEY });

test("a schedule is created, read, listed and deleted; another user sees none of it", async () => {
  const made = await alice.createSchedule({
    cron: "0 9 * * 1-5", timezone: "Europe/Paris", input: "report", agent: "ticker",
    params: { count: 1 },
  });
  assert.equal(made.cron, "0 9 * * 1-5");
  assert.equal(made.runs_made, 0);
  assert.ok(Date.parse(made.next_run_at) > Date.now());

  assert.deepEqual(await alice.getSchedule(made.schedule_id), made);
  const page = await alice.listSchedules({ limit: 200 });
  assert.ok(page.schedules.some((s) => s.schedule_id === made.schedule_id));
  assert.deepEqual((await alice.scheduleRuns(made.schedule_id)).runs, []);

  await assert.rejects(bob.getSchedule(made.schedule_id), NotFoundError);
  await assert.rejects(bob.deleteSchedule(made.schedule_id), NotFoundError);

  await alice.deleteSchedule(made.schedule_id);
  await assert.rejects(alice.getSchedule(made.schedule_id), NotFoundError);
});

test("an invalid cron expression or time zone is a typed 422", async () => {
  await assert.rejects(
    alice.createSchedule({ cron: "61 * * * *", input: "x" }),
    (err) => err instanceof BadRequestError && err.code === "invalid_cron",
  );
  await assert.rejects(
    alice.createSchedule({ cron: "@daily", timezone: "Nowhere/Town", input: "x" }),
    (err) => err instanceof BadRequestError && err.code === "invalid_timezone",
  );
});
