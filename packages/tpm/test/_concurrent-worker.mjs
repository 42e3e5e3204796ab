// One process of the cross-process tests (concurrency.test.ts): makes its own root on the TPM
// KEYWARDEN_TPM_TCTI names (the same re-derived storage key as every other process), wraps a few
// KEKs and unwraps them CYCLES times, then prints one JSON line: { ok, errors: [code: message] }.
// Arguments: CYCLES [nolock] (nolock: without the cross-process lock, to measure the retry alone).
import { randomBytes } from 'node:crypto';
import { MemoryKeyStore } from '@keywarden/core';
import { TpmRoot } from '../dist/index.js';

const cycles = Number(process.argv[2] ?? 20);
const lockFile = process.argv[3] === 'nolock' ? false : undefined;
const errors = [];
let ok = 0;
const note = (err) => errors.push(`${err?.code ?? err?.name}: ${err?.message}`);
let root;
try {
  root = await TpmRoot.create({ store: new MemoryKeyStore(), authValue: new Uint8Array(randomBytes(32)), lockFile });
  const aad = new Uint8Array(randomBytes(16));
  const keys = [new Uint8Array(randomBytes(32)), new Uint8Array(randomBytes(32))];
  const wrapped = [];
  for (const k of keys) wrapped.push(await root.wrapKey(k, aad));
  for (let i = 0; i < cycles; i++) {
    try {
      const j = i % keys.length;
      const out = await root.unwrapKey(wrapped[j], aad);
      if (Buffer.compare(Buffer.from(out), Buffer.from(keys[j])) !== 0) throw new Error('wrong key unwrapped');
      ok++;
    } catch (err) {
      note(err);
    }
  }
} catch (err) {
  note(err);
} finally {
  await root?.close().catch(note);
}
process.stdout.write(`${JSON.stringify({ ok, errors })}\n`);
