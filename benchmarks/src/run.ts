/**
 * Hot-path benchmarks. Machines here are shared and noisy, so every Keywarden number is reported
 * as a ratio to a raw baseline measured in the same run, interleaved round by round, and the
 * median of the rounds is kept. Nothing here asserts a time; `--max-ratio NAME=R` turns a ratio
 * into a failing exit code for CI regression checks.
 *
 *   pnpm bench                       # default: 7 rounds of 300 ms per case
 *   pnpm bench -- --rounds 3 --ms 100 --json results/latest.json
 */
import { createCipheriv, createDecipheriv, randomBytes, randomFillSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import {
  buildClient,
  CommitmentPolicy,
  RawAesKeyringNode,
  RawAesWrappingSuiteIdentifier,
} from '@aws-crypto/client-node';
import { Keywarden, MemoryKeyStore, SoftwareRoot, SUITE_DEK_AES256GCM, wrapDataKey } from '@keywarden/core';
import { rawXaesSubkey } from './_raw-xaes.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '7' },
    ms: { type: 'string', default: '300' },
    json: { type: 'string' },
    'max-ratio': { type: 'string', multiple: true, default: [] },
  },
});
const ROUNDS = Number(values.rounds);
const MS = Number(values.ms);

/** `baseline`: the raw operation the ratio is taken against (kept stable across releases so ratios
 * compare); `suiteBaseline`: a second ratio against the raw form of the same wrap suite. */
type Case = { name: string; baseline?: string; suiteBaseline?: string; fn: () => Promise<unknown> | unknown };

/** Runs fn repeatedly for about `ms` and returns operations per second. Batches of 64 keep the
 * clock reads off the measured path. */
async function opsPerSecond(fn: Case['fn'], ms: number): Promise<number> {
  let n = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(ms) * 1_000_000n;
  let now = start;
  while (now < deadline) {
    for (let i = 0; i < 64; i++) await fn();
    n += 64;
    now = process.hrtime.bigint();
  }
  return n / (Number(now - start) / 1e9);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

// ── Raw baselines ─────────────────────────────────────────────────────────────────────────────
const rawKek = new Uint8Array(randomBytes(32));
const aad = new TextEncoder().encode('keywarden-bench');
function rawWrap(dek: Uint8Array): Uint8Array {
  const nonce = randomFillSync(new Uint8Array(12));
  const c = createCipheriv('aes-256-gcm', rawKek, nonce);
  c.setAAD(aad);
  const ct = c.update(dek);
  c.final();
  const out = new Uint8Array(12 + 32 + 16);
  out.set(nonce, 0);
  out.set(ct, 12);
  out.set(c.getAuthTag(), 44);
  return out;
}
function rawUnwrap(w: Uint8Array): Uint8Array {
  const d = createDecipheriv('aes-256-gcm', rawKek, w.subarray(0, 12));
  d.setAAD(aad);
  d.setAuthTag(w.subarray(44));
  const pt = d.update(w.subarray(12, 44));
  d.final();
  return pt;
}
/** The same 32-byte wrap with XAES-256-GCM (wrap suite 0x02): subkey from the KEK and nonce[0, 12),
 * AES-256-GCM under it with nonce[12, 24). */
function rawXaesWrap(dek: Uint8Array): Uint8Array {
  const nonce = randomFillSync(new Uint8Array(24));
  const kx = rawXaesSubkey(rawKek, nonce);
  const c = createCipheriv('aes-256-gcm', kx, nonce.subarray(12));
  c.setAAD(aad);
  const ct = c.update(dek);
  c.final();
  kx.fill(0);
  const out = new Uint8Array(24 + 32 + 16);
  out.set(nonce, 0);
  out.set(ct, 24);
  out.set(c.getAuthTag(), 56);
  return out;
}
function rawXaesUnwrap(w: Uint8Array): Uint8Array {
  const kx = rawXaesSubkey(rawKek, w.subarray(0, 24));
  const d = createDecipheriv('aes-256-gcm', kx, w.subarray(12, 24));
  d.setAAD(aad);
  d.setAuthTag(w.subarray(56));
  const pt = d.update(w.subarray(24, 56));
  d.final();
  kx.fill(0);
  return pt;
}
function rawEncrypt(pt: Uint8Array): Uint8Array {
  const dek = randomFillSync(new Uint8Array(32));
  const wrapped = rawWrap(dek);
  const nonce = randomFillSync(new Uint8Array(12));
  const c = createCipheriv('aes-256-gcm', dek, nonce);
  const ct = Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
  return Buffer.concat([wrapped, nonce, ct]);
}
function rawDecrypt(env: Uint8Array): Uint8Array {
  const dek = rawUnwrap(env.subarray(0, 60));
  const nonce = env.subarray(60, 72);
  const body = env.subarray(72);
  const d = createDecipheriv('aes-256-gcm', dek, nonce);
  d.setAuthTag(body.subarray(body.length - 16));
  return Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]);
}

async function main(): Promise<void> {
  const store = new MemoryKeyStore();
  const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
  const kw = new Keywarden({ store, root });
  const kekMaterial = new Uint8Array(randomBytes(32));
  const kek = await kw.importKey('bench', kekMaterial);
  const context = { tenant: 'bench', purpose: 'benchmark' };
  const dk = await kw.generateDataKey('bench', context);
  // A data key wrapped before suite 0x02 (AES-256-GCM under the KEK): the legacy unwrap path.
  const oldWrapped = wrapDataKey(
    kekMaterial,
    { keyId: kek.id, version: 1 },
    dk.plaintext,
    context,
    new Uint8Array(randomBytes(12)),
    SUITE_DEK_AES256GCM,
  );
  kekMaterial.fill(0);
  const rawWrapped = rawWrap(dk.plaintext);
  const rawXaesWrapped = rawXaesWrap(dk.plaintext);
  const payload = new Uint8Array(randomBytes(1024));
  const kwEnvelope = await kw.encrypt(payload, { key: 'bench', context });
  const rawEnvelope = rawEncrypt(payload);

  const esdk = buildClient(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);
  const keyring = new RawAesKeyringNode({
    keyName: 'bench',
    keyNamespace: 'keywarden-bench',
    unencryptedMasterKey: new Uint8Array(randomBytes(32)),
    wrappingSuite: RawAesWrappingSuiteIdentifier.AES256_GCM_IV12_TAG16_NO_PADDING,
  });
  const awsEnvelope = (await esdk.encrypt(keyring, payload, { encryptionContext: context })).result;

  const cases: Case[] = [
    { name: 'raw node:crypto DEK wrap (AES-256-GCM, 32 B)', fn: () => rawWrap(randomFillSync(new Uint8Array(32))) },
    {
      name: 'raw node:crypto DEK wrap (XAES-256-GCM, 32 B)',
      fn: () => rawXaesWrap(randomFillSync(new Uint8Array(32))),
    },
    {
      name: 'keywarden generateDataKey',
      baseline: 'raw node:crypto DEK wrap (AES-256-GCM, 32 B)',
      suiteBaseline: 'raw node:crypto DEK wrap (XAES-256-GCM, 32 B)',
      fn: () => kw.generateDataKey('bench', context),
    },
    { name: 'raw node:crypto DEK unwrap', fn: () => rawUnwrap(rawWrapped) },
    { name: 'raw node:crypto DEK unwrap (XAES-256-GCM)', fn: () => rawXaesUnwrap(rawXaesWrapped) },
    {
      name: 'keywarden decryptDataKey',
      baseline: 'raw node:crypto DEK unwrap',
      suiteBaseline: 'raw node:crypto DEK unwrap (XAES-256-GCM)',
      fn: () => kw.decryptDataKey(dk.wrapped, context, { key: 'bench' }),
    },
    {
      name: 'keywarden decryptDataKey (old suite 0x01 key)',
      baseline: 'raw node:crypto DEK unwrap',
      fn: () => kw.decryptDataKey(oldWrapped, context, { key: 'bench' }),
    },
    { name: 'raw node:crypto envelope encrypt 1 KiB', fn: () => rawEncrypt(payload) },
    {
      name: 'keywarden encrypt 1 KiB',
      baseline: 'raw node:crypto envelope encrypt 1 KiB',
      fn: () => kw.encrypt(payload, { key: 'bench', context }),
    },
    {
      name: 'aws-encryption-sdk encrypt 1 KiB (raw AES keyring)',
      baseline: 'raw node:crypto envelope encrypt 1 KiB',
      fn: () => esdk.encrypt(keyring, payload, { encryptionContext: context }),
    },
    { name: 'raw node:crypto envelope decrypt 1 KiB', fn: () => rawDecrypt(rawEnvelope) },
    {
      name: 'keywarden decrypt 1 KiB',
      baseline: 'raw node:crypto envelope decrypt 1 KiB',
      fn: () => kw.decrypt(kwEnvelope, { context, key: 'bench' }),
    },
    {
      name: 'aws-encryption-sdk decrypt 1 KiB (raw AES keyring)',
      baseline: 'raw node:crypto envelope decrypt 1 KiB',
      fn: () => esdk.decrypt(keyring, awsEnvelope),
    },
  ];

  for (const c of cases) await opsPerSecond(c.fn, 50); // warm-up (JIT, caches)
  const samples = new Map<string, number[]>(cases.map((c) => [c.name, []]));
  const ratios = new Map<string, number[]>();
  const suiteRatios = new Map<string, number[]>();
  for (let r = 0; r < ROUNDS; r++) {
    const round = new Map<string, number>();
    for (const c of cases) {
      const ops = await opsPerSecond(c.fn, MS);
      round.set(c.name, ops);
      samples.get(c.name)!.push(ops);
    }
    // ratio = baseline ops / case ops, within the round: 1.0 is as fast as raw, 2.0 twice as slow
    for (const c of cases) {
      if (c.suiteBaseline) {
        const list = suiteRatios.get(c.name) ?? [];
        list.push(round.get(c.suiteBaseline)! / round.get(c.name)!);
        suiteRatios.set(c.name, list);
      }
      if (!c.baseline) continue;
      const list = ratios.get(c.name) ?? [];
      list.push(round.get(c.baseline)! / round.get(c.name)!);
      ratios.set(c.name, list);
    }
  }

  const rows = cases.map((c) => ({
    case: c.name,
    opsPerSecond: Math.round(median(samples.get(c.name)!)),
    baseline: c.baseline ?? null,
    slowdownVsBaseline: c.baseline ? Number(median(ratios.get(c.name)!).toFixed(2)) : null,
    suiteBaseline: c.suiteBaseline ?? null,
    slowdownVsSuiteBaseline: c.suiteBaseline ? Number(median(suiteRatios.get(c.name)!).toFixed(2)) : null,
  }));
  console.log(`Keywarden hot path — ${ROUNDS} rounds × ${MS} ms, node ${process.version}, median per case`);
  console.log('slowdown = baseline ops/s ÷ case ops/s in the same round (1.00 = as fast as raw)\n');
  const w = Math.max(...rows.map((r) => r.case.length));
  for (const r of rows) {
    const ratio = r.slowdownVsBaseline === null ? '' : `  ×${r.slowdownVsBaseline.toFixed(2)} vs raw`;
    const suite =
      r.slowdownVsSuiteBaseline === null ? '' : `  (×${r.slowdownVsSuiteBaseline.toFixed(2)} vs raw XAES-256-GCM)`;
    console.log(`${r.case.padEnd(w)}  ${String(r.opsPerSecond).padStart(9)} ops/s${ratio}${suite}`);
  }
  if (values.json) {
    mkdirSync(dirname(values.json), { recursive: true });
    writeFileSync(values.json, `${JSON.stringify({ node: process.version, rounds: ROUNDS, ms: MS, rows }, null, 2)}\n`);
  }

  let failed = false;
  for (const spec of values['max-ratio'] as string[]) {
    const [name, max] = spec.split('=');
    const row = rows.find((r) => r.case === name);
    if (!row || row.slowdownVsBaseline === null || Number.isNaN(Number(max))) {
      console.error(`bench: --max-ratio ${spec}: no such case with a baseline`);
      failed = true;
    } else if (row.slowdownVsBaseline > Number(max)) {
      console.error(`bench: ${name} is ×${row.slowdownVsBaseline} its baseline, above the allowed ×${max}`);
      failed = true;
    }
  }
  await kw.close();
  if (failed) process.exitCode = 1;
}

await main();
