/**
 * SqliteKeyStore leases across real processes (the conformance suite races connections of one
 * process; here each racer is a process of its own, as CLI runs on one folder are): six processes
 * ask for one free lease at the same instant, three times; each time exactly one is granted and
 * the others are refused naming it.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteKeyStore } from '../src/index.js';

const RACER = fileURLToPath(new URL('./fixtures/lease-racer.mjs', import.meta.url));
const dir = mkdtempSync(path.join(tmpdir(), 'kw-leases-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Answer {
  round: number;
  token?: number;
  heldBy?: string;
}

function race(db: string, holder: string, startAt: number, rounds: number): Promise<Answer[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RACER, db, holder, String(startAt), String(rounds)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => {
      out += String(d);
    });
    child.stderr.on('data', (d) => {
      err += String(d);
    });
    const guard = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(guard);
      if (code !== 0) reject(new Error(`racer ${holder} exited ${code}: ${err}`));
      else
        resolve(
          out
            .trim()
            .split('\n')
            .map((l) => JSON.parse(l) as Answer),
        );
    });
  });
}

describe('SqliteKeyStore leases, real processes', () => {
  it('6 processes asking for one free lease at the same instant, 3 times: exactly one is granted each time, the others are refused naming it', async () => {
    const db = path.join(dir, 'race.db');
    await SqliteKeyStore.open(db).close();
    const ROUNDS = 3;
    const holders = Array.from({ length: 6 }, (_, i) => `racer-${i}`);
    // Far enough ahead for every process to have started and opened the store on a busy machine.
    const startAt = Date.now() + 3000;
    const answers = (await Promise.all(holders.map((h) => race(db, h, startAt, ROUNDS)))).map((list, i) =>
      list.map((a) => ({ ...a, holder: holders[i] })),
    );
    for (let round = 0; round < ROUNDS; round++) {
      const all = answers.map((list) => list.find((a) => a.round === round) as Answer & { holder: string });
      const winners = all.filter((a) => a.token !== undefined);
      expect(winners, `round ${round}`).toHaveLength(1);
      expect(winners[0]?.token).toBe(1);
      for (const a of all) if (a.token === undefined) expect(a.heldBy, `round ${round}`).toBe(winners[0]?.holder);
    }
  }, 60_000);
});
