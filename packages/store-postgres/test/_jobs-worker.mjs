// One instance of the jobs tests (test/jobs.test.ts), a real process of its own on the built
// packages: runs one job against the PostgreSQL store and reports events as JSON lines on stdout.
//   node _jobs-worker.mjs SCHEMA HOLDER JOB OPTIONS_JSON      (unseal key: first stdin line, hex)
// JOB "rewrap": the bulk rewrap of the application's table app_records (id, envelope) in SCHEMA,
//   under the lease "rewrap-job/<jobId>", writing each update back to the table.
//   events: leased {token} · progress {done} · done {resumedFrom, rewrapped, unchanged, failed} · error {code}
// JOB "rotate-root": runRootRotationJob (new software root sealed under the same unseal key).
//   options.crashAt: "started" (SIGKILL itself once the job's record is written) or "committed"
//   (SIGKILL itself right after replaceRoot committed, before the audit key's promotion).
//   events: ready · done {outcome, fromRootId, rootId} · error {code}
// options.startAt: wait until this instant (ms since the epoch) before taking the lease.
// options.waitForLease: retry a lease held by another instance (every 100 ms, for 30 s).
import {
  ConflictError,
  encodeSealedRoot,
  JobLease,
  Keywarden,
  ROOT_META_NAME,
  rewrapRecords,
  rewrapUnderNewRoot,
  runRootRotationJob,
  SoftwareRoot,
} from '@keywarden/core';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { parse } from 'pg-connection-string';
import { PostgresKeyStore } from '../dist/index.js';

const [schema, holder, job, optionsJson] = process.argv.slice(2);
const options = JSON.parse(optionsJson ?? '{}');
const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const unsealKey = Uint8Array.from(Buffer.from((await lines.next()).value, 'hex'));

const store = await PostgresKeyStore.open({ schema });
const root = await SoftwareRoot.load(store);
await root.unseal(unsealKey);
// Several instances told to start at one instant (the tests of two resuming at once).
if (options.startAt) await new Promise((r) => setTimeout(r, Math.max(0, options.startAt - Date.now())));

async function withLeaseRetry(fn) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (
        !options.waitForLease ||
        !ConflictError.isInstance(err) ||
        !/is held by/.test(err.message) ||
        Date.now() > deadline
      )
        throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

try {
  if (job === 'rewrap') {
    const kw = new Keywarden({ store, root });
    // The application's own database connection (its records live beside the key store here).
    const app = new pg.Client(appConnection());
    await app.connect();
    const table = `${pg.escapeIdentifier(schema)}.app_records`;
    const lease = await withLeaseRetry(() =>
      JobLease.acquire(store, `rewrap-job/${options.jobId}`, { holder, ttlMs: options.ttlMs }),
    );
    emit({ event: 'leased', token: lease.token, at: Date.now() });
    const { rows } = await app.query(`SELECT id, envelope FROM ${table} ORDER BY id`);
    const records = rows.map((r) => ({ id: r.id, envelope: new Uint8Array(r.envelope), context: { record: r.id } }));
    const counts = { rewrapped: 0, unchanged: 0, failed: 0 };
    let resumedFrom = 0;
    for await (const u of rewrapRecords(kw, records, {
      key: 'orders',
      jobId: options.jobId,
      concurrency: 4,
      checkpointEvery: options.checkpointEvery ?? 20,
      lease,
      onProgress: (p) => {
        resumedFrom = p.resumedFrom;
        emit({ event: 'progress', done: p.done });
      },
    })) {
      counts[u.status]++;
      if (u.status === 'rewrapped')
        await app.query(`UPDATE ${table} SET envelope = $2 WHERE id = $1`, [u.id, u.envelope]);
    }
    await lease.release();
    emit({ event: 'done', resumedFrom, ...counts });
    await app.end();
    await kw.close();
  } else if (job === 'rotate-root') {
    const crashingStore =
      options.crashAt === 'committed'
        ? new Proxy(store, {
            get(target, prop) {
              if (prop === 'replaceRoot') {
                return async (update) => {
                  await target.replaceRoot(update);
                  process.kill(process.pid, 'SIGKILL');
                };
              }
              const v = Reflect.get(target, prop, target);
              return typeof v === 'function' ? v.bind(target) : v;
            },
          })
        : store;
    emit({ event: 'ready' });
    const result = await withLeaseRetry(() =>
      runRootRotationJob(store, {
        jobId: options.jobId,
        holder,
        ttlMs: options.ttlMs,
        root,
        onStarted: () => {
          if (options.crashAt === 'started') process.kill(process.pid, 'SIGKILL');
        },
        rotate: async () => {
          const created = await SoftwareRoot.createForRotation({ unsealKey, unseal: root.document.unseal });
          try {
            await rewrapUnderNewRoot(crashingStore, root, created.root, {
              name: ROOT_META_NAME,
              value: encodeSealedRoot(created.document),
            });
          } finally {
            await created.root.close();
          }
          return { rootId: created.document.rootId };
        },
      }),
    );
    emit({ event: 'done', ...result });
  }
} catch (err) {
  emit({ event: 'error', code: typeof err?.code === 'string' ? err.code : 'UNKNOWN', message: String(err?.message) });
  process.exitCode = 1;
} finally {
  unsealKey.fill(0);
  await root.close();
  await store.close();
}
// The application's connection stays open after an error: exit (stdout to a pipe is synchronous).
process.exit();

function appConnection() {
  // pg lets a connection string's (absent) password override `password`: pass the parts instead.
  const { password: _none, ...parts } = parse(process.env.KEYWARDEN_PG_URL);
  return { ...parts, password: readFileSync(process.env.KEYWARDEN_PG_PASSWORD_FILE, 'utf8').trim() };
}
