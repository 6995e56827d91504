// Our driver of graphile-worker for tests/scenarios/test_graphile_worker_profile.py, through the
// package's public API only (runMigrations, run, its events).
//
//   node worker.mjs migrate   create or upgrade graphile-worker's schema, then exit
//   node worker.mjs run       a worker pool until "stop" on stdin (or stdin closes)
//
// The database is DATABASE_URL. GW_POLL_INTERVAL (ms, graphile's default 2000) and
// GW_CONCURRENCY (default 4) tune the pool. While it runs, the driver writes one JSON object
// a line on stdout ({"event": "ready"}, {"event": "start", "id", "task", "attempts", "pool"},
// {"event": "complete", "id", "task", "failed"}) and reads commands a line on stdin:
// "close" and "open" a gate that `hold` jobs wait for, "stop" (graceful).
//
// Tasks: ok (succeeds), hold (waits for the gate, then succeeds), fail (always throws),
// flaky (throws on its first attempt, succeeds on the next).
import { createInterface } from "node:readline";
import { Logger, run, runMigrations } from "graphile-worker";

const connectionString = process.env.DATABASE_URL;
if (!connectionString) {
  process.stderr.write("worker.mjs: DATABASE_URL is not set\n");
  process.exit(2);
}

// graphile's own log lines (a failing task logs an error) go to stderr, never stdout.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    process.stderr.write(`graphile-worker ${level}: ${message}\n`);
  }
});

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

let gate = Promise.resolve();
let openGate = () => {};
function closeGate() {
  gate = new Promise((resolve) => {
    openGate = resolve;
  });
}

const taskList = {
  ok: async () => {},
  hold: async () => {
    await gate;
  },
  fail: async () => {
    throw new Error("fails by design");
  },
  flaky: async (_payload, helpers) => {
    if (helpers.job.attempts === 1) {
      throw new Error("fails its first attempt by design");
    }
  },
};

const mode = process.argv[2];
if (mode === "migrate") {
  await runMigrations({ connectionString, logger });
} else if (mode === "run") {
  const runner = await run({
    connectionString,
    logger,
    taskList,
    concurrency: Number(process.env.GW_CONCURRENCY ?? 4),
    pollInterval: Number(process.env.GW_POLL_INTERVAL ?? 2000),
    noHandleSignals: true,
  });
  runner.events.on("job:start", ({ job, worker }) => {
    const { id, task_identifier: task, attempts } = job;
    emit({ event: "start", id: String(id), task, attempts, pool: worker.workerPool.id });
  });
  runner.events.on("job:complete", ({ job, error }) => {
    const { id, task_identifier: task } = job;
    emit({ event: "complete", id: String(id), task, failed: error != null });
  });
  let stopping = null;
  const stop = () => {
    stopping ??= runner.stop();
    return stopping;
  };
  const commands = createInterface({ input: process.stdin });
  commands.on("line", (line) => {
    const command = line.trim();
    if (command === "close") closeGate();
    else if (command === "open") openGate();
    else if (command === "stop") stop();
    else process.stderr.write(`worker.mjs: unknown command ${JSON.stringify(command)}\n`);
  });
  commands.on("close", () => stop());
  emit({ event: "ready" });
  await runner.promise;
  commands.close();
} else {
  process.stderr.write("usage: node worker.mjs migrate|run\n");
  process.exit(2);
}
