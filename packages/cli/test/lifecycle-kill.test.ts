/**
 * Random-kill suites for the key lifecycle (issue 10): the built CLI is SIGKILLed at random
 * moments during `key compromise`, `key destroy` and `rewrap FILE...`. After every kill the store
 * opens; a compromise is all or nothing (the old primary compromised together with its replacement
 * made primary, in one transaction); a destroy is all or nothing (state and erased material
 * together); nothing acknowledged is lost; every envelope decrypts unless its version was
 * deliberately compromised or destroyed; an interrupted rewrap leaves every file whole (old or new
 * version, never a mix; a format v2 file's body byte for byte the original) and a second run
 * completes it. Same pattern as rotate-kill.test.ts: kill
 * delays drawn around the measured run time, checks in-process with the same library.
 */
import { randomInt } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import {
  envelopeHeaderLength,
  inspectEnvelope,
  KeyCompromisedError,
  KeyDestroyedError,
  type Keywarden,
} from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { tempDir, openUnsealed } from './helpers.js';
import { built, kw, requireBuild, runAndKill } from './split-helpers.js';

requireBuild('lifecycle-kill.test.ts');

const ROUNDS = 16;
/** Each killed rewrap round also reruns the job to completion: fewer rounds keep the suite short. */
const REWRAP_ROUNDS = 8;
const CONTEXT = { suite: 'lifecycle-kill' };

/** Even rounds anywhere in 30 %..100 % of the typical run time, odd rounds in 75 %..110 % (the commit). */
function delayFor(typicalMs: number, round: number): number {
  const [from, span] = round % 2 === 0 ? [0.3, 0.7] : [0.75, 0.35];
  return Math.round(typicalMs * (from + (span * randomInt(0, 1001)) / 1000));
}

async function initialized(): Promise<string> {
  const cwd = await tempDir();
  expect((await kw(['init'], cwd)).code).toBe(0);
  return cwd;
}

interface Made {
  version: number;
  plaintext: string;
  envelope: Uint8Array;
}

async function encryptOne(kwd: Keywarden, key: string, plaintext: string): Promise<Made> {
  const envelope = await kwd.encrypt(new TextEncoder().encode(plaintext), { key, context: CONTEXT });
  return { version: inspectEnvelope(envelope).keyVersion, plaintext, envelope };
}

describe.skipIf(!built)('random SIGKILL during the key lifecycle (issue 10)', () => {
  it(`key compromise, SIGKILLed ${ROUNDS} times: the compromise and its rotation commit together or not at all; nothing else is lost`, async () => {
    const cwd = await initialized();
    const made: Made[] = [];
    let kwd = await openUnsealed(cwd);
    await kwd.createKey('k');
    made.push(await encryptOne(kwd, 'k', 'before any round'));
    await kwd.close();
    // Calibration: one unkilled compromise of the primary (v1 → compromised, v2 primary).
    const cal = await runAndKill(['key', 'compromise', 'k', '1'], cwd);
    expect(cal.code).toBe(0);
    let target = cal.ms;
    let kills = 0;
    for (let round = 0; round < ROUNDS; round++) {
      kwd = await openUnsealed(cwd);
      const before = await kwd.getKey('k');
      made.push(await encryptOne(kwd, 'k', `round ${round}`));
      await kwd.close();
      const delay = delayFor(target, round);
      const r = await runAndKill(['key', 'compromise', 'k', String(before.primaryVersion)], cwd, delay);
      const where = `round ${round} (kill after ${delay} ms)`;
      target = r.killed ? target * 1.02 : Math.min(target, r.ms) * 0.9;
      if (r.killed) kills++;
      else expect(r.code, where).toBe(0);

      kwd = await openUnsealed(cwd);
      try {
        const after = await kwd.getKey('k');
        const old = after.versions.find((v) => v.version === before.primaryVersion);
        const committed = old?.state === 'compromised';
        if (!r.killed) expect(committed, where).toBe(true);
        // All or nothing: compromised ⇔ a new enabled primary exists.
        expect(after.primaryVersion, where).toBe(committed ? before.primaryVersion + 1 : before.primaryVersion);
        expect(after.versions.length, where).toBe(after.primaryVersion);
        expect(after.versions.find((v) => v.version === after.primaryVersion)?.state, where).toBe('enabled');
        for (const m of made) {
          const state = after.versions.find((v) => v.version === m.version)?.state;
          if (state === 'compromised') {
            await expect(kwd.decrypt(m.envelope, { key: 'k', context: CONTEXT }), where).rejects.toSatisfy(
              KeyCompromisedError.isInstance,
            );
          } else {
            expect(new TextDecoder().decode(await kwd.decrypt(m.envelope, { key: 'k', context: CONTEXT })), where).toBe(
              m.plaintext,
            );
          }
        }
      } finally {
        await kwd.close();
      }
    }
    expect(kills, `only ${kills} of ${ROUNDS} rounds were killed`).toBeGreaterThanOrEqual(ROUNDS / 2);
  }, 120_000);

  it(`key destroy, SIGKILLed ${ROUNDS} times: a version is destroyed with its material erased, or untouched; the primary's data still decrypts`, async () => {
    const cwd = await initialized();
    let kwd = await openUnsealed(cwd);
    await kwd.createKey('d');
    const made: Made[] = [];
    // Versions 1..ROUNDS+1 each protecting one envelope; all but the primary disabled.
    for (let v = 1; v <= ROUNDS + 1; v++) {
      if (v > 1) await kwd.rotateKey('d');
      made.push(await encryptOne(kwd, 'd', `under v${v}`));
    }
    await kwd.rotateKey('d');
    for (let v = 1; v <= ROUNDS + 1; v++) await kwd.disableVersion('d', v);
    const primary = await encryptOne(kwd, 'd', 'under the primary');
    await kwd.close();

    const cal = await runAndKill(['key', 'destroy', 'd', '1', '--force'], cwd);
    expect(cal.code).toBe(0);
    let target = cal.ms;
    let kills = 0;
    let next = 2;
    for (let round = 0; round < ROUNDS && next <= ROUNDS + 1; round++) {
      const delay = delayFor(target, round);
      const r = await runAndKill(['key', 'destroy', 'd', String(next), '--force'], cwd, delay);
      const where = `round ${round} (v${next}, kill after ${delay} ms)`;
      target = r.killed ? target * 1.02 : Math.min(target, r.ms) * 0.9;
      if (r.killed) kills++;
      else expect(r.code, where).toBe(0);

      kwd = await openUnsealed(cwd);
      try {
        const version = await kwd.store.getVersion((await kwd.getKey('d')).id, next);
        if (!r.killed) expect(version?.state, where).toBe('destroyed');
        // State and material change together.
        if (version?.state === 'destroyed') {
          expect(version.wrappedMaterial.length, where).toBe(0);
          next++;
        } else {
          expect(version?.state, where).toBe('disabled');
          expect(version?.wrappedMaterial.length, where).toBeGreaterThan(32);
        }
        for (const m of made) {
          if (m.version < next) {
            await expect(kwd.decrypt(m.envelope, { key: 'd', context: CONTEXT }), where).rejects.toSatisfy(
              KeyDestroyedError.isInstance,
            );
          }
        }
        expect(new TextDecoder().decode(await kwd.decrypt(primary.envelope, { key: 'd', context: CONTEXT }))).toBe(
          primary.plaintext,
        );
      } finally {
        await kwd.close();
      }
    }
    expect(kills, `only ${kills} rounds were killed`).toBeGreaterThanOrEqual(ROUNDS / 3);
  }, 120_000);

  it(`rewrap FILE..., SIGKILLed ${REWRAP_ROUNDS} times: every file stays whole (old or new version) and a rerun completes the job`, async () => {
    const cwd = await initialized();
    const files: Array<{ name: string; text: string; body: Buffer }> = [];
    const kwd = await openUnsealed(cwd);
    await kwd.createKey('r');
    for (let i = 0; i < 12; i++) {
      // Format v2 (docs/format.md §4.10): the rewrap writes a new header and copies the body, which
      // must come out byte for byte; sizes up to ~300 KB so that kills land inside the copy too.
      const text = `file ${i} `.repeat(1000 + i * 2500);
      const name = `f${i}.kw`;
      const envelope = await kwd.encrypt(new TextEncoder().encode(text), { key: 'r', context: CONTEXT });
      expect(inspectEnvelope(envelope).formatVersion).toBe(2);
      writeFileSync(path.join(cwd, name), envelope);
      files.push({ name, text, body: Buffer.from(envelope.subarray(envelopeHeaderLength(envelope))) });
    }
    await kwd.close();
    // Calibrate on a copy of the job's shape: rotate, then time an unkilled run over the files.
    expect((await runAndKill(['key', 'rotate', 'r'], cwd)).code).toBe(0);
    const args = ['rewrap', '--key', 'r', '-c', `suite=${CONTEXT.suite}`, ...files.map((f) => f.name)];
    const cal = await runAndKill(args, cwd);
    expect(cal.code).toBe(0);
    let target = cal.ms;
    let kills = 0;
    for (let round = 0; round < REWRAP_ROUNDS; round++) {
      // Each round moves the files on by one version, so every round has work to do.
      expect((await runAndKill(['key', 'rotate', 'r'], cwd)).code).toBe(0);
      const delay = delayFor(target, round);
      const r = await runAndKill(args, cwd, delay);
      const where = `round ${round} (kill after ${delay} ms)`;
      target = r.killed ? target * 1.02 : Math.min(target, r.ms) * 0.9;
      if (r.killed) kills++;
      else expect(r.code, where).toBe(0);

      const check = await openUnsealed(cwd);
      try {
        const primary = (await check.getKey('r')).primaryVersion;
        for (const f of files) {
          const bytes = readFileSync(path.join(cwd, f.name));
          const v = inspectEnvelope(bytes).keyVersion;
          expect(v === primary || v === primary - 1, `${where}: ${f.name} under v${v}`).toBe(true);
          const plain = await check.decrypt(bytes, { key: 'r', context: CONTEXT });
          expect(new TextDecoder().decode(plain), `${where}: ${f.name}`).toBe(f.text);
          expect(bytes.subarray(envelopeHeaderLength(bytes)).equals(f.body), `${where}: ${f.name} body`).toBe(true);
        }
      } finally {
        await check.close();
      }
      // No temporary file is left beside the files (O_TMPFILE, or removed by the next run).
      if (r.killed) {
        const rerun = await runAndKill(args, cwd);
        expect(rerun.code, where).toBe(0);
        const check2 = await openUnsealed(cwd);
        const primary = (await check2.getKey('r')).primaryVersion;
        await check2.close();
        for (const f of files)
          expect(inspectEnvelope(readFileSync(path.join(cwd, f.name))).keyVersion, where).toBe(primary);
        expect(
          readdirSync(cwd).filter((n) => n.includes('keywarden-tmp')),
          where,
        ).toEqual([]);
      }
    }
    expect(kills, `only ${kills} of ${REWRAP_ROUNDS} rounds were killed`).toBeGreaterThanOrEqual(REWRAP_ROUNDS / 2);
  }, 120_000);
});
