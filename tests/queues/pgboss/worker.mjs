// A pg-boss instance driven by tests/scenarios/test_pgboss_profile.py: one JSON command a line on stdin,
// {"n": its number, "op": ..., "args": {...}}, and one JSON answer a line on stdout, in order:
// {"n", "ok": true, "result"} or {"n", "ok": false, "error"}. Only pg-boss's public API is used; pg-boss's own events go to stderr.
//
// Commands (op and args):
//   start {connection, options}  new PgBoss({...connection, ...options}).start(): creates or
//                             migrates the schema, starts the supervisor
//   createQueue {name, options}
//   work {name, kind}         a worker on the queue; kind: "ok" (completes), "fail" (throws
//                             every time), "flaky" (throws on its first attempt only); every
//                             kind first waits for the gate
//   gate {open}               close the gate (handlers wait) or open it (they go on)
//   offWork {name}            stop the queue's workers, not waiting for their active jobs
//   send {name, data, options} -> the job's id
//   cancel {name, job}
//   deleteQueue {name}
//   deleteAllJobs {name}      empties the queue (a TRUNCATE of its table when it has its own)
//   jobs                      -> {"<queue>": {"<state>": count}} for every queue, read with
//                             getQueues() and findJobs(): pg-boss's own view of its jobs
//   ran                       -> [[queue, id, retryCount], ...] as handlers started
//   stop                      boss.stop(), then the process exits
import { createInterface } from 'node:readline'
import { PgBoss } from 'pg-boss'

let boss = null
const ran = []
let gate = null // null: open; else {promise, open}

function closeGate () {
  if (gate) return
  let open
  const promise = new Promise(resolve => { open = resolve })
  gate = { promise, open }
}

function openGate () {
  if (!gate) return
  gate.open()
  gate = null
}

function handler (name, kind) {
  return async ([job]) => {
    ran.push([name, job.id, job.retryCount])
    if (gate) await gate.promise
    if (kind === 'fail' || (kind === 'flaky' && job.retryCount === 0)) {
      throw new Error(`${kind} job fails on purpose`)
    }
    return { done: true }
  }
}

// findJobs pages at most this many rows; the tests send far fewer.
const PAGE = 1000

async function jobs () {
  const counts = {}
  for (const queue of await boss.getQueues()) {
    const states = {}
    for (const job of await boss.findJobs(queue.name, { limit: PAGE })) {
      states[job.state] = (states[job.state] ?? 0) + 1
    }
    counts[queue.name] = states
  }
  return counts
}

const commands = {
  async start ({ connection, options }) {
    boss = new PgBoss({ ...connection, ...options })
    boss.on('error', error => console.error(`pg-boss error: ${error.message}`))
    boss.on('warning', warning => console.error(`pg-boss warning: ${warning.message}`))
    await boss.start()
  },
  createQueue: ({ name, options }) => boss.createQueue(name, options ?? {}),
  async work ({ name, kind, options }) {
    await boss.work(name, options ?? {}, handler(name, kind))
  },
  offWork: ({ name }) => boss.offWork(name, { wait: false }),
  gate ({ open }) {
    if (open) openGate()
    else closeGate()
  },
  send: ({ name, data, options }) => boss.send(name, data ?? {}, options ?? {}),
  cancel: ({ name, job }) => boss.cancel(name, job),
  deleteQueue: ({ name }) => boss.deleteQueue(name),
  deleteAllJobs: ({ name }) => boss.deleteAllJobs(name),
  jobs,
  ran: () => ran,
  async stop () {
    openGate()
    if (boss) await boss.stop({ graceful: true, wait: true, timeout: 10_000 })
    boss = null
  }
}

const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  const { n, op, args } = JSON.parse(line)
  let answer
  try {
    const command = commands[op]
    if (!command) throw new Error(`unknown command ${op}`)
    const result = await command(args)
    answer = { n, ok: true, result: result ?? null }
  } catch (error) {
    answer = { n, ok: false, error: String(error?.message ?? error) }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
  if (op === 'stop') break
}
process.exit(0)
