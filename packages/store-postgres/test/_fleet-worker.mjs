// One application instance of the fleet tests (test/fleet.test.ts), a real process of its own:
// opens the store (built dist, as an application would), loads and unseals the software root, and
// answers JSON commands, one per stdin line, with one JSON line on stdout.
//   {"op":"decrypt","envelope":"<base64>"}        → {"ok":true} | {"ok":false,"code":"KW_…"}
//   {"op":"decryptUntilRefused","envelope":"…"}   → {"ok":true,"refusedAt":<ms epoch>,"code":"KW_…"}
//   {"op":"rotate","at":<ms epoch>}               → waits until `at`, rotates; {"ok":true,"version":N} | {"ok":false,"code":…}
//   {"op":"disable","version":N}                  → {"ok":true,"startedAt":<ms>,"at":<ms epoch after commit>}
// The unseal key arrives on the first stdin line (hex), never in argv or the environment.
import { createInterface } from 'node:readline';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { invalidateCachesOnChange, PostgresKeyStore } from '../dist/index.js';

const schema = process.argv[2];
const mode = process.argv[3]; // watch | poll | none
const pollIntervalMs = Number(process.argv[4] ?? 1000);
const lines = createInterface({ input: process.stdin });
const iterator = lines[Symbol.asyncIterator]();
const unsealKey = Uint8Array.from(Buffer.from((await iterator.next()).value, 'hex'));

const store = await PostgresKeyStore.open({ schema });
const root = await SoftwareRoot.load(store);
await root.unseal(unsealKey);
unsealKey.fill(0);
// A cache TTL far beyond the test: only the change notifications can make a change seen here.
const kw = new Keywarden({ store, root, cache: { ttlMs: 3_600_000 } });
const stop =
  mode === 'none' ? undefined : await invalidateCachesOnChange(store, kw, { pollIntervalMs, listen: mode === 'watch' });
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);

const codeOf = (err) => (typeof err?.code === 'string' ? err.code : String(err));
for (;;) {
  const next = await iterator.next();
  if (next.done) break;
  const cmd = JSON.parse(next.value);
  let reply;
  try {
    if (cmd.op === 'decrypt') {
      await kw.decrypt(Buffer.from(cmd.envelope, 'base64'), { key: 'orders' });
      reply = { ok: true };
    } else if (cmd.op === 'decryptUntilRefused') {
      const envelope = Buffer.from(cmd.envelope, 'base64');
      const deadline = Date.now() + 30_000;
      reply = { ok: false, code: 'TIMEOUT' };
      while (Date.now() < deadline) {
        try {
          await kw.decrypt(envelope, { key: 'orders' });
        } catch (err) {
          reply = { ok: true, refusedAt: Date.now(), code: codeOf(err) };
          break;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    } else if (cmd.op === 'rotate') {
      await new Promise((r) => setTimeout(r, Math.max(0, cmd.at - Date.now())));
      const info = await kw.rotateKey('orders');
      reply = { ok: true, version: info.primaryVersion };
    } else if (cmd.op === 'disable') {
      const startedAt = Date.now();
      await kw.disableVersion('orders', cmd.version);
      reply = { ok: true, startedAt, at: Date.now() };
    } else {
      reply = { ok: false, code: 'UNKNOWN_OP' };
    }
  } catch (err) {
    reply = { ok: false, code: codeOf(err) };
  }
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}
await stop?.();
await kw.close();
await root.close();
await store.close();
