/**
 * The measurement behind docs/format.md §2.1: the cost of the two ways considered to remove the 2³²
 * random-nonce budget per KEK version from DEK wrapping, each written with raw node:crypto calls
 * (no Keywarden code), against today's raw AES-256-GCM wrap:
 *
 *   gcm   — suite 0x01: AES-256-GCM under the KEK, 96-bit random nonce (the baseline);
 *   xaes  — XAES-256-GCM (C2SP): subkey = two AES-256 blocks of the KEK over the nonce's first
 *           half (plus L = AES_K(0)), one ECB context; AES-256-GCM under the subkey;
 *   hkdf  — Tink-style: subkey = HKDF-SHA256(KEK, 32-byte random salt), extract and expand on
 *           createHmac as src/aead.ts does; AES-256-GCM under the subkey with a fixed nonce.
 *
 * Same method as run.ts: interleaved rounds, median, ratios within a round (1.00 = as fast as the
 * raw GCM wrap). A 32-byte DEK and 60 bytes of associated data, like a real wrap.
 *
 *   pnpm --filter @keywarden/benchmarks run bench:wrap-suites -- --rounds 5 --ms 200
 */
import { createCipheriv, createDecipheriv, createHmac, randomFillSync } from 'node:crypto';
import { parseArgs } from 'node:util';
import { rawXaesSubkey } from './_raw-xaes.js';

const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '5' }, ms: { type: 'string', default: '200' } },
});
const ROUNDS = Number(values.rounds);
const MS = Number(values.ms);

const kek = randomFillSync(new Uint8Array(32));
const dek = randomFillSync(new Uint8Array(32));
const aad = randomFillSync(new Uint8Array(60));
const ZERO_NONCE = new Uint8Array(12);
const INFO = new TextEncoder().encode('keywarden/dek-wrap/hkdf\x01');

function seal(key: Uint8Array, nonce: Uint8Array): Uint8Array {
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const ct = c.update(dek);
  c.final();
  return Buffer.concat([ct, c.getAuthTag()]);
}
function open(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array): Uint8Array {
  const d = createDecipheriv('aes-256-gcm', key, nonce);
  d.setAAD(aad);
  d.setAuthTag(sealed.subarray(32));
  const pt = d.update(sealed.subarray(0, 32));
  d.final();
  return pt;
}

const xaesKey = (nonce: Uint8Array): Uint8Array => rawXaesSubkey(kek, nonce);

function hkdfKey(salt: Uint8Array): Uint8Array {
  const prk = createHmac('sha256', salt).update(kek).digest();
  const okm = createHmac('sha256', prk).update(INFO).digest();
  prk.fill(0);
  return okm;
}

const gcmNonce = randomFillSync(new Uint8Array(12));
const gcmSealed = seal(kek, gcmNonce);
const xaesNonce = randomFillSync(new Uint8Array(24));
const xaesSealed = seal(xaesKey(xaesNonce), xaesNonce.subarray(12));
const salt = randomFillSync(new Uint8Array(32));
const hkdfSealed = seal(hkdfKey(salt), ZERO_NONCE);

type Case = { name: string; baseline?: string; fn: () => unknown };
const cases: Case[] = [
  { name: 'gcm wrap (suite 0x01)', fn: () => seal(kek, randomFillSync(new Uint8Array(12))) },
  {
    name: 'xaes wrap (XAES-256-GCM)',
    baseline: 'gcm wrap (suite 0x01)',
    fn: () => {
      const n = randomFillSync(new Uint8Array(24));
      const k = xaesKey(n);
      const s = seal(k, n.subarray(12));
      k.fill(0);
      return s;
    },
  },
  {
    name: 'hkdf wrap (HKDF-SHA256 per salt)',
    baseline: 'gcm wrap (suite 0x01)',
    fn: () => {
      const k = hkdfKey(randomFillSync(new Uint8Array(32)));
      const s = seal(k, ZERO_NONCE);
      k.fill(0);
      return s;
    },
  },
  { name: 'gcm unwrap (suite 0x01)', fn: () => open(kek, gcmNonce, gcmSealed) },
  {
    name: 'xaes unwrap',
    baseline: 'gcm unwrap (suite 0x01)',
    fn: () => {
      const k = xaesKey(xaesNonce);
      const p = open(k, xaesNonce.subarray(12), xaesSealed);
      k.fill(0);
      return p;
    },
  },
  {
    name: 'hkdf unwrap',
    baseline: 'gcm unwrap (suite 0x01)',
    fn: () => {
      const k = hkdfKey(salt);
      const p = open(k, ZERO_NONCE, hkdfSealed);
      k.fill(0);
      return p;
    },
  },
];

function opsPerSecond(fn: Case['fn'], ms: number): number {
  let n = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(ms) * 1_000_000n;
  let now = start;
  while (now < deadline) {
    for (let i = 0; i < 64; i++) fn();
    n += 64;
    now = process.hrtime.bigint();
  }
  return n / (Number(now - start) / 1e9);
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

for (const c of cases) opsPerSecond(c.fn, 50);
const ops = new Map<string, number[]>(cases.map((c) => [c.name, []]));
const ratios = new Map<string, number[]>(cases.map((c) => [c.name, []]));
for (let r = 0; r < ROUNDS; r++) {
  const round = new Map(cases.map((c) => [c.name, opsPerSecond(c.fn, MS)] as const));
  for (const c of cases) {
    ops.get(c.name)!.push(round.get(c.name)!);
    if (c.baseline) ratios.get(c.name)!.push(round.get(c.baseline)! / round.get(c.name)!);
  }
}
console.log(`DEK wrap constructions — ${ROUNDS} rounds × ${MS} ms, node ${process.version}, median per case\n`);
const w = Math.max(...cases.map((c) => c.name.length));
for (const c of cases) {
  const o = median(ops.get(c.name)!);
  const ratio = c.baseline ? `  ×${median(ratios.get(c.name)!).toFixed(2)} vs raw GCM` : '';
  console.log(`${c.name.padEnd(w)}  ${String(Math.round(o)).padStart(8)} ops/s  ${(1e6 / o).toFixed(2)} µs${ratio}`);
}
