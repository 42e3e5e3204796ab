/**
 * The Keywarden benchmark suite (issue 11). Machines here are shared and noisy, so every figure is
 * a ratio to the raw node:crypto ceiling of its group measured in the same rounds, interleaved case
 * by case; the median over rounds is kept and absolute numbers are only printed beside it.
 *
 *   pnpm bench            # full: 7 rounds × 200 ms, streaming 1 GiB; writes results/ and latest/
 *   pnpm bench:check      # short (< 3 min, CI): compares with baseline.json, fails on a regression
 *   pnpm bench:baseline   # short run, rewrites baseline.json (review its diff)
 *   node dist/run.js --profile check --only 'decrypt' --rounds 3   # while developing
 *
 * Peers in the same run: raw node:crypto (the ceiling), and the AWS Encryption SDK for JavaScript
 * with its committing, non-signing suite (ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY: the fair
 * peer, the same guarantees as a Keywarden envelope) and with its default suite (the same plus an
 * ECDSA P-384 signature per message, which Keywarden does not do: not a like-for-like comparison).
 * The PKCS#11 root's rows (KEK in the HSM and in memory, against a raw pkcs11js loop on the same
 * SoftHSM2 token, started by harness/softhsm.sh) are gated where stable (KEK in memory; KEK in the HSM
 * with 64 callers: _pkcs11-groups.ts; wall-clock scaling and event-loop delay: pkcs11.ts). The TPM root's rows (TpmRoot.unwrapKey and @keywarden/tss2
 * against a raw ESAPI loop on the same swtpm, and the cached-KEK data-key rate) are ungated too
 * (_tpm-groups.ts; wall-clock rates: tpm.ts). Rows for audit on/off and bulk
 * rewrap come with those features; no row stands in for them. The agent round trip (AgentClient
 * against an in-process call) is not written yet (README.md).
 */
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  randomBytes,
  randomFillSync,
  timingSafeEqual,
} from 'node:crypto';
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  DataKeyCache,
  envelopeHeaderLength,
  Keywarden,
  MemoryKeyStore,
  SoftwareRoot,
  SUITE_DEK_AES256GCM,
  wrapDataKey,
} from '@keywarden/core';
import { AgentClient, AgentServer } from '@keywarden/agent';
import { combineShares, splitSecret } from '@keywarden/split-knowledge';
import { combine as rawCombine, split as rawSplit } from 'shamir-secret-sharing';
import { AUDIT_GROUP_NAMES } from './_audit-groups.js';
import { esdkPeer } from './_esdk.js';
import { PKCS11_GROUP_PREFIX, pkcs11Groups } from './_pkcs11-groups.js';
import { tpmGroups } from './_tpm-groups.js';
import { type Group, measureGroups, round2 } from './_groups.js';
import { median } from './_measure.js';
import { rawXaesSubkey } from './_raw-xaes.js';
import { type Kind, type Meta, markdown, type Row, svg, type Target } from './_report.js';

const PKG_DIR = fileURLToPath(new URL('..', import.meta.url));

const { values } = parseArgs({
  options: {
    profile: { type: 'string', default: 'full' },
    rounds: { type: 'string' },
    ms: { type: 'string' },
    'stream-mib': { type: 'string' },
    'stream-rounds': { type: 'string' },
    only: { type: 'string' },
    out: { type: 'string' },
    publish: { type: 'boolean', default: false },
    check: { type: 'boolean', default: false },
    'write-baseline': { type: 'boolean', default: false },
    baseline: { type: 'string' },
    runs: { type: 'string' },
    'settle-ms': { type: 'string' },
  },
});

const PROFILES = {
  full: { rounds: 7, ms: 200, warmupMs: 120, settleMs: 150, streamMiB: 1024, streamRounds: 3 },
  check: { rounds: 5, ms: 80, warmupMs: 50, settleMs: 100, streamMiB: 64, streamRounds: 3 },
} as const;
const profileName = values.profile as keyof typeof PROFILES;
if (!(profileName in PROFILES)) throw new Error(`bench: unknown profile ${values.profile} (full, check)`);
const P = PROFILES[profileName];
const ROUNDS = Number(values.rounds ?? P.rounds);
const MS = Number(values.ms ?? P.ms);
const SETTLE_MS = Number(values['settle-ms'] ?? P.settleMs);
const STREAM_MIB = Number(values['stream-mib'] ?? P.streamMiB);
const STREAM_ROUNDS = Number(values['stream-rounds'] ?? P.streamRounds);
const CONCURRENCY = 64;
const ONLY = values.only ? new RegExp(values.only, 'i') : undefined;
/** Groups whose device could not be started outside CI (their gated rows are not missing). */
const SKIPPED_GROUPS: string[] = [];

const BASELINE_FILE = values.baseline ?? join(PKG_DIR, 'baseline.json');
/** Whole runs to take the median of: 1, or 5 when writing a baseline (their spread sets the tolerances). */
const RUNS = Number(values.runs ?? (values['write-baseline'] ? 5 : 1));
/** Regression gate (README.md §Regression gate): the tolerance is TOLERANCE_FACTOR × the spread
 * measured between baseline runs, never below DEFAULT_TOLERANCE nor above MAX_TOLERANCE. */
const DEFAULT_TOLERANCE = 0.3;
const TOLERANCE_FACTOR = 2;
const MAX_TOLERANCE = 2;
/**
 * Lower bounds on the tolerance of rows whose spread five baseline runs can underestimate, from a
 * study of consecutive check runs with no code change (README.md §Regression gate): the 64 KiB and
 * 1 MiB rows swung up to +112% over their median (memory-bandwidth contention from other jobs, for
 * the raw ceiling and Keywarden alike, in phases that outlast a re-measurement), streaming rows up
 * to +44% between full runs.
 */
const TOLERANCE_FLOORS: ReadonlyArray<readonly [RegExp, number]> = [
  [/^(encrypt|decrypt) (64 KiB|1 MiB) \|/, 1.2],
  [/^stream /, 0.6],
  // A ~20 µs rewrap against a ~2 ms decrypt + re-encrypt of 1 MiB: per-round ratios of one run
  // spread ×1.7 (0.0099–0.0168). Gated against gross regressions only — above all a rewrap that
  // reads the body again, which would put the row near ×1.
  [/^rewrap a 1 MiB record/, 2],
  // The audit group's 1 KiB envelope rows (an envelope call of ~70-100 µs against a record of ~2 µs):
  // three consecutive check runs on a quiet machine gave "each" on encrypt ×1.65, ×1.08, ×1.23 and on
  // decrypt ×1.01, ×1.66, ×1.34 (2026-11-30), a swing the five baseline runs happened not to show.
  [/^audit on vs off: (encrypt|decrypt) 1 KiB \|/, 0.6],
  // Keywarden's 1 KiB encrypt against the raw envelope moves with the machine's phase: on unchanged
  // code it read ×1.85–2.63 (raw ~45 µs, Keywarden ~100 µs per call) at 06:00 on 2026-11-30, where
  // the five baseline runs of 02:05 gave ×1.11 (its raw ceiling then ~70 µs): Keywarden's call
  // allocates more native buffers, and fresh allocations were then several times dearer. Gated
  // against gross regressions only (beyond 2.5× its baseline).
  [/^encrypt 1 KiB \|/, 1.5],
  // A cached data key (~3-5 µs a call) against a raw AES-GCM wrap (~25 µs): on unchanged code the
  // twenty fresh-clone rehearsals of 2026-11-29/30 read ×0.14-0.27 (+93% over the baseline's ×0.14),
  // and one of them failed the gate at ×0.20, confirmed by its second measurement. Gated against
  // gross regressions only: a cache that stops hitting reads as the uncached row (×0.8-1.2).
  [/^generateDataKey \| keywarden \+ data-key cache$/, 1.9],
];
function toleranceFloor(id: string): number {
  let floor = DEFAULT_TOLERANCE;
  for (const [re, min] of TOLERANCE_FLOORS) if (re.test(id)) floor = Math.max(floor, min);
  return floor;
}

const REWRAP_HEADER_LABEL = 'keywarden rewrapEnvelope, format v2, header only';

/** Issue 11's hot-path targets and issue 10's rewrap target (at least 50× cheaper than decrypt +
 * re-encrypt), reported in the results (never asserted in unit tests). */
const TARGETS: Target[] = [
  { id: `rewrap a 1 MiB record to the new primary | ${REWRAP_HEADER_LABEL}`, max: 0.02 },
  { id: 'generateDataKey | keywarden', max: 1.4 },
  { id: 'decryptDataKey | keywarden', max: 1.4 },
  { id: 'encrypt 1 KiB | keywarden', max: 1.7 },
  { id: 'decrypt 1 KiB | keywarden', max: 1.7 },
  { id: `stream encrypt ${STREAM_MIB} MiB | keywarden`, max: 1.3 },
  { id: `stream decrypt ${STREAM_MIB} MiB | keywarden`, max: 1.3 },
];

// ── Raw node:crypto ceilings ──────────────────────────────────────────────────────────────────
const rawKek = new Uint8Array(randomBytes(32));
const rawAad = new TextEncoder().encode('keywarden-bench');
function rawWrap(dek: Uint8Array): Uint8Array {
  const nonce = randomFillSync(new Uint8Array(12));
  const c = createCipheriv('aes-256-gcm', rawKek, nonce);
  c.setAAD(rawAad);
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
  d.setAAD(rawAad);
  d.setAuthTag(w.subarray(44));
  const pt = d.update(w.subarray(12, 44));
  d.final();
  return pt;
}
/** The same 32-byte wrap with XAES-256-GCM (wrap suite 0x02): the cheapest form of that suite. */
function rawXaesWrap(dek: Uint8Array): Uint8Array {
  const nonce = randomFillSync(new Uint8Array(24));
  const kx = rawXaesSubkey(rawKek, nonce);
  const c = createCipheriv('aes-256-gcm', kx, nonce.subarray(12));
  c.setAAD(rawAad);
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
  d.setAAD(rawAad);
  d.setAuthTag(w.subarray(56));
  const pt = d.update(w.subarray(24, 56));
  d.final();
  kx.fill(0);
  return pt;
}
/** A raw envelope: random DEK, GCM-wrapped under the KEK, GCM data under the DEK. */
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

/**
 * Reference: the operations Keywarden's format needs per message, in raw node:crypto with nothing
 * else (no parsing, no checks, no context encoding): an XAES-256-GCM wrap of the DEK on a kept ECB
 * context, HKDF-SHA256 extract + two expands (body key and key commitment), the body's GCM. Not a
 * ceiling: it shows where the format's own cost ends and Keywarden's JavaScript begins.
 */
const floorEcb = createCipheriv('aes-256-ecb', rawKek, null).setAutoPadding(false);
const FLOOR_INFO_KEY = new TextEncoder().encode('keywarden/v1/data-key\x01');
const FLOOR_INFO_COMMIT = new TextEncoder().encode('keywarden/v1/commit\x01');
const ONE = Uint8Array.of(1);
function floorSubkey(nonce: Uint8Array): Uint8Array {
  const l = floorEcb.update(new Uint8Array(16));
  const m = new Uint8Array(32);
  for (let i = 0; i < 16; i++) m[i] = m[16 + i] = l[i] as number;
  for (let i = 0; i < 12; i++) {
    m[4 + i] = (m[4 + i] as number) ^ (nonce[i] as number);
    m[20 + i] = (m[20 + i] as number) ^ (nonce[i] as number);
  }
  return floorEcb.update(m);
}
function floorKeys(dek: Uint8Array, messageId: Uint8Array): [Uint8Array, Uint8Array] {
  const prk = createHmac('sha256', messageId).update(dek).digest();
  const enc = createHmac('sha256', prk).update(FLOOR_INFO_KEY).update(ONE).digest();
  const commit = createHmac('sha256', prk).update(FLOOR_INFO_COMMIT).update(ONE).digest();
  return [enc, commit];
}
function floorEncrypt(pt: Uint8Array): Uint8Array {
  const r = randomFillSync(new Uint8Array(32 + 24 + 32 + 12)); // DEK, wrap nonce, message id, nonce
  const dek = r.subarray(0, 32);
  const wn = r.subarray(32, 56);
  const c = createCipheriv('aes-256-gcm', floorSubkey(wn), wn.subarray(12));
  c.setAAD(rawAad);
  const wrapped = Buffer.concat([c.update(dek), c.final(), c.getAuthTag()]);
  const [enc, commit] = floorKeys(dek, r.subarray(56, 88));
  const b = createCipheriv('aes-256-gcm', enc, r.subarray(88));
  b.setAAD(rawAad);
  // wrap nonce (24) ‖ wrapped DEK (48) ‖ message id (32) ‖ commitment (32) ‖ nonce (12) ‖ body ‖ tag
  return Buffer.concat([
    wn,
    wrapped,
    r.subarray(56, 88),
    commit,
    r.subarray(88),
    b.update(pt),
    b.final(),
    b.getAuthTag(),
  ]);
}
function floorDecrypt(env: Uint8Array): Uint8Array {
  const wn = env.subarray(0, 24);
  const d = createDecipheriv('aes-256-gcm', floorSubkey(wn), wn.subarray(12));
  d.setAAD(rawAad);
  d.setAuthTag(env.subarray(56, 72));
  const dek = d.update(env.subarray(24, 56));
  d.final();
  const [enc, commit] = floorKeys(dek, env.subarray(72, 104));
  if (!timingSafeEqual(commit, env.subarray(104, 136))) throw new Error('floor: commitment');
  const body = env.subarray(148);
  const b = createDecipheriv('aes-256-gcm', enc, env.subarray(136, 148));
  b.setAAD(rawAad);
  b.setAuthTag(body.subarray(body.length - 16));
  return Buffer.concat([b.update(body.subarray(0, body.length - 16)), b.final()]);
}

const SIZES: Array<[string, number]> = [
  ['1 KiB', 1024],
  ['64 KiB', 64 * 1024],
  ['1 MiB', 1024 * 1024],
];

async function buildGroups(): Promise<{ groups: Group[]; close: () => Promise<void> }> {
  const store = new MemoryKeyStore();
  const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
  const kw = new Keywarden({ store, root });
  const kekMaterial = new Uint8Array(randomBytes(32));
  const kek = await kw.importKey('bench', kekMaterial);
  // The cache as an application would configure it: bounded by age and messages.
  const cache = new DataKeyCache(kw, { maxAgeMs: 60_000, maxMessages: 4096 });
  const context = { tenant: 'bench', purpose: 'benchmark' };
  const expected = { key: 'bench' };
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

  const { esdk, keyring, fairSuite } = esdkPeer();
  const FAIR = 'aws-encryption-sdk, committing, no signature (fair peer)';
  const SIGNING = 'aws-encryption-sdk default suite (+ ECDSA P-384 signature)';

  const groups: Group[] = [
    {
      name: 'generateDataKey',
      cases: [
        {
          label: 'raw node:crypto AES-256-GCM wrap of 32 B',
          kind: 'raw',
          fn: () => rawWrap(randomFillSync(new Uint8Array(32))),
        },
        {
          label: 'raw node:crypto XAES-256-GCM wrap of 32 B',
          kind: 'reference',
          fn: () => rawXaesWrap(randomFillSync(new Uint8Array(32))),
        },
        { label: 'keywarden', kind: 'keywarden', fn: () => kw.generateDataKey('bench', context) },
        {
          label: 'keywarden + data-key cache',
          kind: 'keywarden-cached',
          fn: () => cache.generateDataKey('bench', context),
        },
      ],
    },
    {
      name: 'decryptDataKey',
      cases: [
        { label: 'raw node:crypto AES-256-GCM unwrap of 32 B', kind: 'raw', fn: () => rawUnwrap(rawWrapped) },
        {
          label: 'raw node:crypto XAES-256-GCM unwrap of 32 B',
          kind: 'reference',
          fn: () => rawXaesUnwrap(rawXaesWrapped),
        },
        { label: 'keywarden', kind: 'keywarden', fn: () => kw.decryptDataKey(dk.wrapped, context, expected) },
        {
          label: 'keywarden, old suite 0x01 key',
          kind: 'keywarden',
          fn: () => kw.decryptDataKey(oldWrapped, context, expected),
        },
        {
          label: 'keywarden + data-key cache',
          kind: 'keywarden-cached',
          fn: () => cache.decryptDataKey(dk.wrapped, context, expected),
        },
      ],
    },
  ];

  for (const [sizeName, size] of SIZES) {
    const payload = new Uint8Array(randomBytes(size));
    const kwEnvelope = await kw.encrypt(payload, { key: 'bench', context });
    const rawEnvelope = rawEncrypt(payload);
    const floorEnvelope = floorEncrypt(payload);
    const fairEnvelope = (await esdk.encrypt(keyring, payload, { encryptionContext: context, suiteId: fairSuite }))
      .result;
    const signedEnvelope = (await esdk.encrypt(keyring, payload, { encryptionContext: context })).result;
    groups.push(
      {
        name: `encrypt ${sizeName}`,
        cases: [
          { label: 'raw node:crypto envelope', kind: 'raw', fn: () => rawEncrypt(payload) },
          ...(size === 1024
            ? [
                {
                  label: "raw node:crypto, Keywarden's construction (format floor)",
                  kind: 'reference' as Kind,
                  fn: () => floorEncrypt(payload),
                },
              ]
            : []),
          { label: 'keywarden', kind: 'keywarden', fn: () => kw.encrypt(payload, { key: 'bench', context }) },
          {
            label: 'keywarden + data-key cache',
            kind: 'keywarden-cached',
            fn: () => cache.encrypt(payload, { key: 'bench', context }),
          },
          {
            label: FAIR,
            kind: 'peer-fair',
            fn: () => esdk.encrypt(keyring, payload, { encryptionContext: context, suiteId: fairSuite }),
          },
          {
            label: SIGNING,
            kind: 'peer-signing',
            fn: () => esdk.encrypt(keyring, payload, { encryptionContext: context }),
          },
        ],
      },
      {
        name: `decrypt ${sizeName}`,
        cases: [
          { label: 'raw node:crypto envelope', kind: 'raw', fn: () => rawDecrypt(rawEnvelope) },
          ...(size === 1024
            ? [
                {
                  label: "raw node:crypto, Keywarden's construction (format floor)",
                  kind: 'reference' as Kind,
                  fn: () => floorDecrypt(floorEnvelope),
                },
              ]
            : []),
          { label: 'keywarden', kind: 'keywarden', fn: () => kw.decrypt(kwEnvelope, { key: 'bench', context }) },
          {
            label: 'keywarden + data-key cache',
            kind: 'keywarden-cached',
            fn: () => cache.decrypt(kwEnvelope, { key: 'bench', context }),
          },
          { label: FAIR, kind: 'peer-fair', fn: () => esdk.decrypt(keyring, fairEnvelope) },
          { label: SIGNING, kind: 'peer-signing', fn: () => esdk.decrypt(keyring, signedEnvelope) },
        ],
      },
    );
  }

  // N parallel callers on one process: one call = N concurrent messages (absolute figure: msg/s).
  const small = new Uint8Array(randomBytes(1024));
  const smallKw = await kw.encrypt(small, { key: 'bench', context });
  const smallRaw = rawEncrypt(small);
  const fanOut = (f: () => unknown) => () => Promise.all(Array.from({ length: CONCURRENCY }, f));
  groups.push(
    {
      name: `encrypt 1 KiB, ${CONCURRENCY} concurrent callers`,
      cases: [
        { label: 'raw node:crypto envelope', kind: 'raw', perCall: CONCURRENCY, fn: fanOut(() => rawEncrypt(small)) },
        {
          label: 'keywarden',
          kind: 'keywarden',
          perCall: CONCURRENCY,
          fn: fanOut(() => kw.encrypt(small, { key: 'bench', context })),
        },
        {
          label: 'keywarden + data-key cache',
          kind: 'keywarden-cached',
          perCall: CONCURRENCY,
          fn: fanOut(() => cache.encrypt(small, { key: 'bench', context })),
        },
        {
          label: FAIR,
          kind: 'peer-fair',
          perCall: CONCURRENCY,
          fn: fanOut(() => esdk.encrypt(keyring, small, { encryptionContext: context, suiteId: fairSuite })),
        },
      ],
    },
    {
      name: `decrypt 1 KiB, ${CONCURRENCY} concurrent callers`,
      cases: [
        {
          label: 'raw node:crypto envelope',
          kind: 'raw',
          perCall: CONCURRENCY,
          fn: fanOut(() => rawDecrypt(smallRaw)),
        },
        {
          label: 'keywarden',
          kind: 'keywarden',
          perCall: CONCURRENCY,
          fn: fanOut(() => kw.decrypt(smallKw, { key: 'bench', context })),
        },
        {
          label: 'keywarden + data-key cache',
          kind: 'keywarden-cached',
          perCall: CONCURRENCY,
          fn: fanOut(() => cache.decrypt(smallKw, { key: 'bench', context })),
        },
      ],
    },
  );

  // Shamir M-of-N: the library call Keywarden builds on is the ceiling (splitSecret asks it for all
  // 255 points so that a share's printed index is its x-coordinate, then encodes and checksums).
  const secret = new Uint8Array(randomBytes(32));
  const rawShares = await rawSplit(secret, 5, 3);
  const kwShares = (await splitSecret(secret, { shares: 5, threshold: 3, purpose: 'unseal-key' })).encoded;
  groups.push(
    {
      name: 'Shamir split 3-of-5 (32 B)',
      cases: [
        { label: 'raw shamir-secret-sharing split', kind: 'raw', fn: () => rawSplit(secret, 5, 3) },
        {
          label: 'keywarden splitSecret',
          kind: 'keywarden',
          fn: () => splitSecret(secret, { shares: 5, threshold: 3, purpose: 'unseal-key' }),
        },
      ],
    },
    {
      name: 'Shamir combine 3 shares (32 B)',
      cases: [
        { label: 'raw shamir-secret-sharing combine', kind: 'raw', fn: () => rawCombine(rawShares.slice(0, 3)) },
        { label: 'keywarden combineShares', kind: 'keywarden', fn: () => combineShares(kwShares.slice(1, 4)) },
      ],
    },
  );

  // Rewrap (issue 10): moving a 1 MiB record onto the key's new primary, against decrypting and
  // re-encrypting it (the ceiling: what a rewrap cost before envelope format v2). A stored data key
  // is rewrapped with one unwrap and one wrap; a format v2 envelope (docs/format.md §4.10) has only
  // its header replaced — given the header alone (what `keywarden rewrap` reads from a file), or the
  // whole envelope, whose 1 MiB body is then copied into the returned buffer. A key of its own, so
  // that its rotation moves no other row.
  await kw.createKey('bench-rewrap');
  const rewrapDk = await kw.generateDataKey('bench-rewrap', context);
  const rewrapEnv = await kw.encrypt(new Uint8Array(randomBytes(1024 * 1024)), { key: 'bench-rewrap', context });
  const rewrapHead = rewrapEnv.subarray(0, envelopeHeaderLength(rewrapEnv));
  await kw.rotateKey('bench-rewrap');
  const rewrapExpected = { key: 'bench-rewrap' };
  groups.push({
    name: 'rewrap a 1 MiB record to the new primary',
    cases: [
      {
        label: 'decrypt + re-encrypt the 1 MiB envelope',
        kind: 'raw',
        fn: async () => {
          const plaintext = await kw.decrypt(rewrapEnv, { ...rewrapExpected, context });
          await kw.encrypt(plaintext, { key: 'bench-rewrap', context });
        },
      },
      {
        label: 'keywarden rewrapDataKey (payload untouched)',
        kind: 'keywarden',
        fn: () => kw.rewrapDataKey(rewrapDk.wrapped, context, rewrapExpected),
      },
      {
        label: REWRAP_HEADER_LABEL,
        kind: 'keywarden',
        fn: () => kw.rewrapEnvelope(rewrapHead, { ...rewrapExpected, context }),
      },
      {
        label: 'keywarden rewrapEnvelope, format v2, whole envelope (body copied)',
        kind: 'keywarden',
        fn: () => kw.rewrapEnvelope(rewrapEnv, { ...rewrapExpected, context }),
      },
    ],
  });

  // Audit on against off (_audit-groups.ts; gated): measured in a process of its own
  // (measureAuditGroups, below).

  // The agent: the same data key unwrapped in this process and through @keywarden/agent over its
  // unix socket (the server runs in this process too, so CPU time counts both ends of the socket).
  const agentDir = mkdtempSync(join(tmpdir(), 'kw-bench-agent-'));
  const agent = await AgentServer.start({ socket: join(agentDir, 'agent.sock'), store, root });
  const agentClient = await AgentClient.connect(join(agentDir, 'agent.sock'));
  groups.push({
    name: 'decryptDataKey through the agent',
    cases: [
      {
        label: 'in-process Keywarden',
        kind: 'raw',
        fn: () => kw.decryptDataKey(dk.wrapped, context, expected),
      },
      {
        label: 'AgentClient over the unix socket',
        kind: 'keywarden-agent',
        fn: () => agentClient.decryptDataKey(dk.wrapped, context, expected),
      },
    ],
  });

  // The PKCS#11 root on a SoftHSM2 token started by harness/softhsm.sh (ungated rows).
  const wantPkcs11 = !ONLY || ONLY.test('PKCS#11 data key wrap + unwrap');
  const p11 = wantPkcs11 ? await pkcs11Groups(CONCURRENCY) : undefined;
  if (p11) groups.push(...p11.groups);
  // No token outside CI (pkcs11Groups says why): its gated rows are not "missing".
  if (p11 && p11.groups.length === 0) SKIPPED_GROUPS.push(PKCS11_GROUP_PREFIX);

  // The TPM root on a swtpm started by harness/swtpm.sh (ungated rows; wall clock: tpm.ts).
  const wantTpm = !ONLY || ONLY.test('TPM unseal') || ONLY.test('TPM root, KEK cached');
  const tpmRows = wantTpm ? await tpmGroups(() => rawUnwrap(rawWrap(randomFillSync(new Uint8Array(32))))) : undefined;
  if (tpmRows) groups.push(...tpmRows.groups);

  const close = async () => {
    await p11?.close();
    await tpmRows?.close();
    await agentClient.close();
    await agent.close();
    rmSync(agentDir, { recursive: true, force: true });
    await cache.close(); // closes kw too
  };
  return { groups: ONLY ? groups.filter((g) => ONLY.test(g.name)) : groups, close };
}

// ── Audit on against off: in a process of its own (audit-child.ts) ─────────────────────────────

/** Whether this run measures any audit group. */
function auditWanted(names: readonly string[] = AUDIT_GROUP_NAMES): boolean {
  return names.some((n) => !ONLY || ONLY.test(n));
}

/**
 * The audit groups (those of `names` that --only selects), measured by audit-child.ts with this
 * run's rounds, window, warm-up and settle period. A process of its own, because the audited calls
 * differ from the unaudited ones by ~2 µs of a ~9–12 µs call, and in this process, which holds every
 * other group, that difference read half as large again as it does in a process holding only these
 * cases (README §Method).
 */
/**
 * Rounds of the audit groups per round of the others: the difference they measure is a few µs per
 * call, and one 80 ms window's ratio spread ×0.6–2 around it (2026-11-30), so their median needs
 * more rounds than a group whose Keywarden case is a multiple of its ceiling.
 */
const AUDIT_ROUNDS_FACTOR = 3;

function measureAuditGroups(names: readonly string[] = AUDIT_GROUP_NAMES): Row[] {
  const wanted = names.filter((n) => !ONLY || ONLY.test(n));
  if (wanted.length === 0) return [];
  const child = join(PKG_DIR, 'dist', 'audit-child.js');
  const res = spawnSync(
    process.execPath,
    [
      '--expose-gc',
      child,
      String(ROUNDS * AUDIT_ROUNDS_FACTOR),
      String(MS),
      String(P.warmupMs),
      String(SETTLE_MS),
      ...wanted,
    ],
    { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
  );
  if (res.status !== 0) {
    throw new Error(`bench: audit-child failed (${res.signal ?? `exit ${res.status}`}): ${res.stderr.trim()}`);
  }
  return JSON.parse(res.stdout) as Row[];
}

// ── Streaming: each run in a child process of its own (its peak RSS is its own) ─────────────────

/** The ESDK's stream (about 20 MiB/s here) runs in the full profile only: it is not gated, and in
 * the check profile it would take most of the time budget. */
const STREAM_MODES: Array<{ mode: string; label: string; kind: Kind }> = [
  { mode: 'raw', label: 'raw pipeline(createReadStream, createCipheriv, createWriteStream)', kind: 'raw' },
  { mode: 'keywarden', label: 'keywarden', kind: 'keywarden' },
  ...(profileName === 'full'
    ? [
        {
          mode: 'esdk-commit',
          label: 'aws-encryption-sdk, committing, no signature (fair peer)',
          kind: 'peer-fair' as Kind,
        },
      ]
    : []),
];

function measureStreams(mib: number, rounds: number): Row[] {
  const dir = mkdtempSync(join(tmpdir(), 'kw-bench-'));
  try {
    const input = join(dir, 'input');
    const fd = openSync(input, 'w');
    const chunk = new Uint8Array(1024 * 1024);
    for (let i = 0; i < mib; i++) writeSync(fd, randomFillSync(chunk));
    closeSync(fd);
    const child = join(PKG_DIR, 'dist', 'stream-child.js');
    type T = { wallMs: number; cpuMs: number };
    type R = { encrypt: T; decrypt: T; maxRssMiB: number };
    const runs = new Map<string, R[]>(STREAM_MODES.map((m) => [m.mode, []]));
    for (let r = 0; r < rounds; r++) {
      // Rotate the order so that no mode always runs first (page cache, CPU boost).
      const order = STREAM_MODES.map((_, i) => STREAM_MODES[(i + r) % STREAM_MODES.length]!);
      for (const m of order) {
        // The ESDK's stream is slow (about 20 MiB/s here): one round of it, against the same round's raw.
        if (m.kind === 'peer-fair' && r > 0) continue;
        const res = spawnSync(process.execPath, [child, m.mode, input, dir], { encoding: 'utf8' });
        if (res.status !== 0) throw new Error(`bench: stream-child ${m.mode} failed: ${res.stderr}`);
        runs.get(m.mode)?.push(JSON.parse(res.stdout.trim()) as R);
      }
    }
    const raw = runs.get('raw') as R[];
    const rows: Row[] = [];
    for (const op of ['encrypt', 'decrypt'] as const) {
      for (const m of STREAM_MODES) {
        // Ratio of CPU time (as for every other row); throughput from wall time, beside it.
        const rs = (runs.get(m.mode) as R[]).map((x, i) => x[op].cpuMs / (raw[i] as R)[op].cpuMs);
        const ms = median((runs.get(m.mode) as R[]).map((x) => x[op].wallMs));
        rows.push({
          id: `stream ${op} ${mib} MiB | ${m.mode === 'raw' ? 'raw pipeline' : m.label}`,
          group: `stream ${op} ${mib} MiB`,
          label: m.label,
          kind: m.kind,
          gated: m.kind === 'keywarden',
          ratio: round2(median(rs)),
          ratioMin: round2(Math.min(...rs)),
          ratioMax: round2(Math.max(...rs)),
          absolute: mib / (ms / 1000),
          unit: 'MiB/s',
          // One process encrypts then decrypts: the peak covers both.
          peakRssMiB: Math.max(...(runs.get(m.mode) as R[]).map((x) => x.maxRssMiB)),
        });
      }
    }
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Per row, the run whose ratio is the median of the runs (its range and absolute figure with it). */
function medianOfRuns(runs: readonly Row[][]): Row[] {
  return (runs[0] as Row[]).map((first) => {
    const all = runs.map((run) => run.find((r) => r.id === first.id)).filter((r): r is Row => r !== undefined);
    const sorted = [...all].sort((a, b) => a.ratio - b.ratio);
    return sorted[Math.floor((sorted.length - 1) / 2)] as Row;
  });
}

// ── Regression gate ───────────────────────────────────────────────────────────────────────────

interface Baseline {
  about: string;
  profile: string;
  /** Allowed relative increase of a ratio before the gate fails: default, and per row. */
  tolerance: { default: number; rows: Record<string, number>; method: string };
  measuredOn: Partial<Meta>;
  rows: Record<string, number>;
}

function readBaseline(): Baseline | undefined {
  return existsSync(BASELINE_FILE) ? (JSON.parse(readFileSync(BASELINE_FILE, 'utf8')) as Baseline) : undefined;
}

function toleranceOf(b: Baseline, id: string): number {
  return b.tolerance.rows[id] ?? b.tolerance.default;
}

interface Moved {
  id: string;
  base: number;
  now: number;
  limit: number;
}

function compare(
  b: Baseline,
  rows: readonly Row[],
): { regressions: Moved[]; improvements: Moved[]; missing: string[] } {
  const regressions: Moved[] = [];
  const improvements: Moved[] = [];
  const missing: string[] = [];
  for (const [id, base] of Object.entries(b.rows)) {
    const row = rows.find((r) => r.id === id);
    if (!row) {
      if (!ONLY && !SKIPPED_GROUPS.some((g) => id.startsWith(g))) missing.push(id);
      continue;
    }
    const tol = toleranceOf(b, id);
    const limit = base * (1 + tol);
    if (row.ratio > limit) regressions.push({ id, base, now: row.ratio, limit });
    else if (row.ratio < base / (1 + tol)) improvements.push({ id, base, now: row.ratio, limit });
  }
  return { regressions, improvements, missing };
}

function printMoved(title: string, moved: readonly Moved[], showLimit = true): void {
  if (moved.length === 0) return;
  console.log(`\n${title}`);
  const w = Math.max(...moved.map((m) => m.id.length));
  for (const m of moved) {
    const pct = ((m.now / m.base - 1) * 100).toFixed(0);
    const limit = showLimit ? `, allowed up to ×${m.limit.toFixed(2)}` : '';
    console.log(
      `  ${m.id.padEnd(w)}  baseline ×${m.base.toFixed(2)} → now ×${m.now.toFixed(2)} (${Number(pct) > 0 ? '+' : ''}${pct}%${limit})`,
    );
  }
}

/** Replace the block between the results markers of README.md with the latest table. */
function publishToReadme(table: string): void {
  const file = join(PKG_DIR, 'README.md');
  const text = readFileSync(file, 'utf8');
  const start = '<!-- results:start (written by pnpm bench) -->';
  const end = '<!-- results:end -->';
  const a = text.indexOf(start);
  const b = text.indexOf(end);
  if (a < 0 || b < a) return;
  const body = table.replace(/^# .*\n\n/, '');
  writeFileSync(file, `${text.slice(0, a + start.length)}\n\n${body}\n${text.slice(b)}`);
}

// ── Main ──────────────────────────────────────────────────────────────────────────────────────

async function main(): Promise<void> {
  const started = Date.now();
  const meta: Meta = {
    profile: profileName,
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    node: process.version,
    cpus: cpus().length,
    cpuModel: (cpus()[0]?.model ?? 'unknown').trim(),
    loadAverage: loadavg(),
    rounds: ROUNDS,
    msPerCase: MS,
    streamMiB: STREAM_MIB,
    streamRounds: STREAM_ROUNDS,
    concurrency: CONCURRENCY,
  };
  console.log(
    `Keywarden benchmarks (${profileName}): ${ROUNDS} rounds × ${MS} ms per case, interleaved; streaming ${STREAM_MIB} MiB × ${STREAM_ROUNDS}; node ${process.version}, load ${meta.loadAverage.map((l) => l.toFixed(1)).join(' ')}`,
  );
  const { groups, close } = await buildGroups();
  const streamWanted = !ONLY || ONLY.test(`stream encrypt ${STREAM_MIB} MiB`);
  // A baseline is the median of several whole runs, and their spread sets each row's tolerance.
  const runs: Row[][] = [];
  for (let i = 0; i < RUNS; i++) {
    if (RUNS > 1) console.log(`run ${i + 1} of ${RUNS}`);
    let one = await measureGroups(groups, ROUNDS, MS, P.warmupMs, SETTLE_MS);
    if (auditWanted()) one = one.concat(measureAuditGroups());
    if (streamWanted && STREAM_MIB > 0) one = one.concat(measureStreams(STREAM_MIB, STREAM_ROUNDS));
    runs.push(one);
  }
  let rows = RUNS === 1 ? (runs[0] as Row[]) : medianOfRuns(runs);

  let status = 0;
  const baseline = readBaseline();
  if (values.check) {
    if (!baseline) throw new Error(`bench: no baseline at ${BASELINE_FILE}; run pnpm bench:baseline`);
    let result = compare(baseline, rows);
    if (result.regressions.length > 0) {
      // Confirm before failing: measure the groups of the regressed rows again and keep, per row,
      // the better of the two medians. A real regression survives this; a burst of load rarely does.
      const suspects = new Set(result.regressions.map((m) => m.id.split(' | ')[0]));
      console.log(
        `\nbench: ${result.regressions.length} row(s) above tolerance (${result.regressions.map((m) => `${m.id} ×${m.now.toFixed(2)}`).join('; ')}); measuring their groups again to confirm`,
      );
      const again = await measureGroups(
        groups.filter((g) => suspects.has(g.name)),
        ROUNDS,
        MS,
        P.warmupMs,
        SETTLE_MS,
      );
      const streamAgain = [...suspects].some((s) => s?.startsWith('stream '))
        ? measureStreams(STREAM_MIB, STREAM_ROUNDS)
        : [];
      const auditAgain = measureAuditGroups(AUDIT_GROUP_NAMES.filter((n) => suspects.has(n)));
      rows = rows.map((r) => {
        const second = [...again, ...streamAgain, ...auditAgain].find((x) => x.id === r.id);
        return second && second.ratio < r.ratio ? second : r;
      });
      result = compare(baseline, rows);
    }
    printMoved('Rows that regressed beyond tolerance (confirmed by a second measurement):', result.regressions);
    printMoved(
      'Rows that got faster beyond tolerance (update the baseline: pnpm bench:baseline):',
      result.improvements,
      false,
    );
    for (const id of result.missing) console.log(`bench: baseline row missing from this run: ${id}`);
    if (result.regressions.length > 0 || result.missing.length > 0) status = 1;
    else console.log(`\nbench: every gated ratio within tolerance of ${BASELINE_FILE}`);
  }
  await close();
  meta.durationS = (Date.now() - started) / 1000;

  // Console table.
  const w = Math.max(...rows.map((r) => r.id.length));
  console.log('');
  for (const r of rows) {
    const abs = `${Math.round(r.absolute).toLocaleString('en-US')} ${r.unit}`;
    const rss = r.peakRssMiB === undefined ? '' : `  peak RSS ${r.peakRssMiB.toFixed(0)} MiB`;
    console.log(
      `${r.id.padEnd(w)}  ×${r.ratio.toFixed(r.ratio < 0.1 ? 4 : 2).padStart(7)}  (${r.ratioMin.toFixed(r.ratio < 0.1 ? 4 : 2)}–${r.ratioMax.toFixed(r.ratio < 0.1 ? 4 : 2)})  ${abs.padStart(16)}${rss}`,
    );
  }

  const outDir = values.out ?? join(PKG_DIR, 'results');
  const doc = { meta, targets: TARGETS, rows };
  const write = (dir: string) => {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `${profileName}.json`), `${JSON.stringify(doc, null, 2)}\n`);
    writeFileSync(join(dir, `${profileName}.md`), markdown(meta, rows, TARGETS));
    writeFileSync(join(dir, `${profileName}.svg`), svg(meta, rows));
  };
  write(outDir);
  if (values.publish) {
    write(join(PKG_DIR, 'latest'));
    publishToReadme(markdown(meta, rows, TARGETS));
  }
  console.log(
    `\nbench: results in ${outDir}/${profileName}.{json,md,svg}${values.publish ? ' and latest/' : ''} (${Math.round(meta.durationS)} s)`,
  );

  if (values['write-baseline']) {
    const gated = rows.filter((r) => r.gated);
    const tolerances: Record<string, number> = {};
    for (const r of gated) {
      const seen = runs.map((run) => run.find((x) => x.id === r.id)?.ratio).filter((x): x is number => x !== undefined);
      const excess = Math.max(...seen) / r.ratio - 1;
      const tol = Math.min(
        MAX_TOLERANCE,
        Math.max(toleranceFloor(r.id), Math.ceil(TOLERANCE_FACTOR * excess * 20) / 20),
      );
      if (tol > DEFAULT_TOLERANCE) tolerances[r.id] = tol;
    }
    const next: Baseline = {
      about:
        'Median ratios (×raw, same run) of the gated rows over the runs of `pnpm bench:baseline` (check profile). `pnpm bench:check` fails when a row exceeds ratio × (1 + tolerance) in a run and again when its group is measured a second time. Review changes to this file like code.',
      profile: profileName,
      tolerance: {
        default: DEFAULT_TOLERANCE,
        rows: tolerances,
        method: `per row: ${TOLERANCE_FACTOR} × the worst excess of one of the ${RUNS} baseline runs over their median, rounded up to 0.05, at least the default ${DEFAULT_TOLERANCE} (1.2 for the 64 KiB and 1 MiB rows, 0.6 for streaming and for the audit group's 1 KiB rows, 1.5 for the 1 KiB encrypt rows: measured spread, see the README) and at most ${MAX_TOLERANCE} (benchmarks/README.md §Regression gate)`,
      },
      measuredOn: {
        date: meta.date,
        node: meta.node,
        cpus: meta.cpus,
        cpuModel: meta.cpuModel,
        loadAverage: meta.loadAverage,
      },
      rows: Object.fromEntries(gated.map((r) => [r.id, r.ratio])),
    };
    writeFileSync(BASELINE_FILE, `${JSON.stringify(next, null, 2)}\n`);
    console.log(`bench: wrote ${BASELINE_FILE} (${Object.keys(next.rows).length} gated rows)`);
  }
  process.exitCode = status;
}

await main();
