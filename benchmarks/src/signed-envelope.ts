/**
 * The cost of the signed envelope suite 0x02 (docs/format.md §4.9, issue 16 item 10): 1 KiB through
 * Keywarden's in-memory API, signed and unsigned, beside the AWS Encryption SDK's committing suite
 * without and with its ECDSA P-384 signature (its default), which is the like-for-like peer of the
 * signed suite. Same method as run.ts: interleaved rounds, per-round ratios to the raw node:crypto
 * envelope of the group (1.00 = as fast as raw), the median over rounds; absolute figures printed
 * beside them (per CPU second, _measure.ts).
 *
 *   cd benchmarks && npx tsc -p tsconfig.json && node dist/signed-envelope.js --rounds 5 --ms 300
 *
 * Stand-alone so that it can run while run.ts is being reworked; its four Keywarden cases are meant
 * to become rows of run.ts's `encrypt 1 KiB` / `decrypt 1 KiB` groups.
 */
import { createCipheriv, createDecipheriv, randomBytes, randomFillSync } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Keywarden, MemoryKeyStore, SoftwareRoot } from '@keywarden/core';
import { esdkPeer } from './_esdk.js';
import { calibrate, type Fn, median, opsPerSecond } from './_measure.js';

const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '5' }, ms: { type: 'string', default: '300' } },
});
const ROUNDS = Number(values.rounds);
const MS = Number(values.ms);

/** The raw ceiling: one AES-256-GCM data key, one AES-256-GCM wrap of it, like run.ts's raw row. */
const rawKek = randomFillSync(new Uint8Array(32));
function rawEncrypt(payload: Uint8Array): Uint8Array {
  const dek = randomFillSync(new Uint8Array(32));
  const wrapNonce = randomFillSync(new Uint8Array(12));
  const w = createCipheriv('aes-256-gcm', rawKek, wrapNonce);
  const wrapped = Buffer.concat([w.update(dek), w.final(), w.getAuthTag()]);
  const nonce = randomFillSync(new Uint8Array(12));
  const c = createCipheriv('aes-256-gcm', dek, nonce);
  const body = Buffer.concat([c.update(payload), c.final(), c.getAuthTag()]);
  return Buffer.concat([wrapNonce, wrapped, nonce, body]);
}
function rawDecrypt(env: Uint8Array): Uint8Array {
  const u = createDecipheriv('aes-256-gcm', rawKek, env.subarray(0, 12));
  u.setAuthTag(env.subarray(44, 60));
  const dek = Buffer.concat([u.update(env.subarray(12, 44)), u.final()]);
  const d = createDecipheriv('aes-256-gcm', dek, env.subarray(60, 72));
  const body = env.subarray(72);
  d.setAuthTag(body.subarray(body.length - 16));
  return Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]);
}

interface Case {
  label: string;
  fn: Fn;
}

async function main(): Promise<void> {
  const store = new MemoryKeyStore();
  const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
  const kw = new Keywarden({ store, root });
  await kw.createKey('bench');
  const context = { tenant: 'bench', purpose: 'benchmark' };
  const payload = new Uint8Array(randomBytes(1024));
  const { esdk, keyring, fairSuite } = esdkPeer();
  const unsigned = await kw.encrypt(payload, { key: 'bench', context });
  const signed = await kw.encrypt(payload, { key: 'bench', context, signed: true });
  const raw = rawEncrypt(payload);
  const esdkFair = (await esdk.encrypt(keyring, payload, { encryptionContext: context, suiteId: fairSuite })).result;
  const esdkSigned = (await esdk.encrypt(keyring, payload, { encryptionContext: context })).result;

  const groups: Array<{ name: string; cases: Case[] }> = [
    {
      name: 'encrypt 1 KiB',
      cases: [
        { label: 'raw node:crypto envelope', fn: () => rawEncrypt(payload) },
        { label: 'keywarden', fn: () => kw.encrypt(payload, { key: 'bench', context }) },
        {
          label: 'keywarden signed (suite 0x02)',
          fn: () => kw.encrypt(payload, { key: 'bench', context, signed: true }),
        },
        {
          label: 'aws-encryption-sdk committing, no signature',
          fn: () => esdk.encrypt(keyring, payload, { encryptionContext: context, suiteId: fairSuite }),
        },
        {
          label: 'aws-encryption-sdk default (+ ECDSA P-384)',
          fn: () => esdk.encrypt(keyring, payload, { encryptionContext: context }),
        },
      ],
    },
    {
      name: 'decrypt 1 KiB',
      cases: [
        { label: 'raw node:crypto envelope', fn: () => rawDecrypt(raw) },
        { label: 'keywarden', fn: () => kw.decrypt(unsigned, { key: 'bench', context }) },
        {
          label: 'keywarden signed, requireSigned',
          fn: () => kw.decrypt(signed, { key: 'bench', context, requireSigned: true }),
        },
        { label: 'aws-encryption-sdk committing, no signature', fn: () => esdk.decrypt(keyring, esdkFair) },
        { label: 'aws-encryption-sdk default (+ ECDSA P-384)', fn: () => esdk.decrypt(keyring, esdkSigned) },
      ],
    },
  ];

  for (const group of groups) {
    const batches = [];
    for (const c of group.cases) batches.push(await calibrate(c.fn, 100));
    const ratios: number[][] = group.cases.map(() => []);
    const rates: number[][] = group.cases.map(() => []);
    for (let r = 0; r < ROUNDS; r++) {
      const round: number[] = [];
      for (let i = 0; i < group.cases.length; i++) {
        round.push(await opsPerSecond((group.cases[i] as Case).fn, MS, batches[i] as number));
      }
      for (let i = 0; i < round.length; i++) {
        (ratios[i] as number[]).push((round[0] as number) / (round[i] as number));
        (rates[i] as number[]).push(round[i] as number);
      }
    }
    console.log(
      `\n${group.name} (${ROUNDS} rounds × ${MS} ms CPU; ratio to raw, median [min–max]; ops per CPU second)`,
    );
    for (let i = 0; i < group.cases.length; i++) {
      const rs = ratios[i] as number[];
      const ops = median(rates[i] as number[]);
      const line = `  ${(group.cases[i] as Case).label.padEnd(46)} ×${median(rs).toFixed(2)} [${Math.min(...rs).toFixed(2)}–${Math.max(...rs).toFixed(2)}]  ${ops.toFixed(0)} op/s  ${(1e6 / ops).toFixed(0)} µs/op`;
      console.log(line);
    }
  }
  await kw.close();
}

await main();
