/**
 * Share commitments and the test quorum (docs/split-knowledge.md §3, §7; issue 16 item 8): an
 * encrypted share proves nothing about its origin — anyone with a custodian's public key can make
 * one with byte-identical headers — so the key store records a commitment to every share, and
 * `share decrypt` and the agent's unseal refuse a share that does not match it, before it is used.
 * `--verify-quorum` keeps init and rekey pending until a test quorum of the new shares.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { SoftwareRoot } from '@keywarden/core';
import {
  encodeShare,
  encryptShareForCustodian,
  parseShare,
  readEncryptedShareHeaders,
  unsealWithShares,
} from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { built, custodian, kw, requireBuild, startAgent } from './split-helpers.js';

requireBuild('share-commitment.test.ts');

const SUBSTITUTED =
  /is not the share this key store handed out \(its commitment does not match: substituted or forged\)/;

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'kw-commit-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A share with the labels of `genuine` (set, index, N, M) and a payload of the forger's choosing. */
function substituteFor(genuine: string): string {
  const p = parseShare(genuine);
  const payload = new Uint8Array(33);
  payload.set(randomBytes(32));
  payload[32] = p.index;
  const text = encodeShare({
    purpose: p.purpose,
    shareSetId: p.shareSetId,
    index: p.index,
    shares: p.shares,
    threshold: p.threshold,
    payload,
  });
  p.wipe();
  return text;
}

async function opens(cwd: string, shares: string[]): Promise<boolean> {
  const store = SqliteKeyStore.open(path.join(cwd, '.keywarden', 'keystore.db'), { readonly: true });
  const root = await SoftwareRoot.load(store);
  try {
    await unsealWithShares(root, shares);
    return true;
  } catch {
    return false;
  } finally {
    await root.close();
    await store.close();
  }
}

describe.skipIf(!built)('share commitments (dist/bin.js)', () => {
  it('share decrypt refuses a substituted share made with the custodian public key and identical headers; the genuine one matches', async () => {
    const cwd = path.join(work, 'decrypt');
    await mkdir(cwd);
    const keys = [
      await custodian(cwd, 'alice', 'x25519'),
      await custodian(cwd, 'bob', 'x25519'),
      await custodian(cwd, 'carol', 'rsa'),
    ];
    const init = await kw(
      ['init', '--shares', '3', '--threshold', '2', ...keys.flatMap((k) => ['--custodian', k.publicKey])],
      cwd,
    );
    expect(init.code, init.stderr).toBe(0);
    const file = path.join(cwd, '.keywarden', 'shares-out', 'share-2-of-3.kwshare');
    const genuine = await readFile(file, 'utf8');

    // The genuine share decrypts, and says it matches the store's commitment.
    const ok = await kw(['share', 'decrypt', '-i', file, '--private-key', keys[1]!.privateKey], cwd);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stderr).toMatch(/matches the commitment recorded in the key store in \.keywarden/);
    const text = ok.stdout.trim();

    // A forger with bob's PUBLIC key makes a share with the same labels, encrypted to bob: the
    // headers are byte-identical, so nothing but the commitment can tell.
    const forged = encryptShareForCustodian(substituteFor(text), await readFile(keys[1]!.publicKey, 'utf8'));
    expect(readEncryptedShareHeaders(forged)).toEqual(readEncryptedShareHeaders(genuine));
    expect(forged.split('\n\n')[0]).toBe(genuine.split('\n\n')[0]);
    const forgedFile = path.join(cwd, 'substituted.kwshare');
    await writeFile(forgedFile, forged);
    const refused = await kw(
      ['share', 'decrypt', '-i', forgedFile, '--private-key', keys[1]!.privateKey, '-o', 'out.txt'],
      cwd,
    );
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^keywarden: share: share 2 of share set ss_\S+ /);
    expect(refused.stderr).toMatch(SUBSTITUTED);
    expect(refused.stdout).toBe('');
    expect(existsSync(path.join(cwd, 'out.txt')), 'nothing written').toBe(false);

    // On a custodian's machine without the store: --commitment, as the witness recorded it.
    const status = JSON.parse((await kw(['status', '--json'], cwd)).stdout) as { commitments: string[] };
    expect(status.commitments).toHaveLength(3);
    const away = path.join(work, 'away');
    await mkdir(away);
    const args = (f: string) => ['share', 'decrypt', '-i', f, '--private-key', keys[1]!.privateKey];
    const unchecked = await kw(args(forgedFile), away);
    expect(unchecked.code, 'without a store or a commitment there is nothing to check against').toBe(0);
    const byValue = await kw([...args(forgedFile), '--commitment', status.commitments[1]!], away);
    expect(byValue.code).toBe(1);
    expect(byValue.stderr).toMatch(/does not match the commitment given \(--commitment\)/);
    const genuineByValue = await kw([...args(file), '--commitment', status.commitments[1]!], away);
    expect(genuineByValue.code, genuineByValue.stderr).toBe(0);
    expect(genuineByValue.stderr).toMatch(/matches the commitment given/);
  });

  it('the agent refuses a substituted share as it is given, naming it, and keeps the progress', async () => {
    const cwd = path.join(work, 'agent');
    await mkdir(cwd);
    const init = await kw(['init', '--shares', '3', '--threshold', '2', '--share-dir', 's'], cwd);
    expect(init.code, init.stderr).toBe(0);
    const shares = await Promise.all(
      [1, 2, 3].map((i) => readFile(path.join(cwd, 's', `share-${i}-of-3.txt`), 'utf8')),
    );
    await writeFile(path.join(cwd, 'sub.txt'), `${substituteFor(shares[2]!)}\n`, { mode: 0o600 });
    await startAgent(cwd);
    const first = await kw(['unseal', '--share-file', 's/share-1-of-3.txt'], cwd);
    expect(first.code, first.stderr).toBe(0);
    const sub = await kw(['unseal', '--share-file', 'sub.txt'], cwd);
    expect(sub.code).toBe(1);
    expect(sub.stderr).toMatch(/share 3 of share set ss_\S+ is not the share this key store handed out/);
    const st = await kw(['status'], cwd);
    expect(st.stdout).toMatch(/unseal progress 1 of 2 \(share 1\)/);
    const last = await kw(['unseal', '--share-file', 's/share-3-of-3.txt'], cwd);
    expect(last.stdout).toMatch(/unsealed/);
  });

  it('init --verify-quorum: no key store until a test quorum of its shares; a substituted share is refused there too', async () => {
    const cwd = path.join(work, 'init-vq');
    await mkdir(cwd);
    const init = await kw(['init', '--shares', '3', '--threshold', '2', '--share-dir', 's', '--verify-quorum'], cwd);
    expect(init.code, init.stderr).toBe(0);
    expect(init.stderr).toMatch(/it is PENDING and not usable yet/);
    expect(existsSync(path.join(cwd, '.keywarden', 'keystore.db'))).toBe(false);
    expect((await kw(['status'], cwd)).stdout).toMatch(
      /not initialized: the init did not finish[\s\S]*pending: +init to share set/,
    );
    const share1 = await readFile(path.join(cwd, 's', 'share-1-of-3.txt'), 'utf8');
    await writeFile(path.join(cwd, 'sub.txt'), `${substituteFor(share1)}\n`, { mode: 0o600 });
    const bad = await kw(['init', '--resume', '--share-file', 'sub.txt', '--share-file', 's/share-2-of-3.txt'], cwd);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(SUBSTITUTED);
    expect(existsSync(path.join(cwd, '.keywarden', 'keystore.db'))).toBe(false);
    const good = await kw(
      ['init', '--resume', '--share-file', 's/share-1-of-3.txt', '--share-file', 's/share-3-of-3.txt'],
      cwd,
    );
    expect(good.code, good.stderr).toBe(0);
    expect(good.stderr).toMatch(/after a test quorum of its shares/);
    expect(await opens(cwd, [share1, await readFile(path.join(cwd, 's', 'share-2-of-3.txt'), 'utf8')])).toBe(true);
  });

  it('rekey --verify-quorum: the old shares work until a test quorum of the new ones activates it; the old quorum cannot', async () => {
    const cwd = path.join(work, 'rekey-vq');
    await mkdir(cwd);
    expect((await kw(['init', '--shares', '3', '--threshold', '2', '--share-dir', 's0'], cwd)).code).toBe(0);
    const old = await Promise.all([1, 2].map((i) => readFile(path.join(cwd, 's0', `share-${i}-of-3.txt`), 'utf8')));
    const quorum = ['--share-file', 's0/share-1-of-3.txt', '--share-file', 's0/share-2-of-3.txt'];
    const r = await kw(
      ['rekey', ...quorum, '--share-dir', 's1', '--shares', '4', '--threshold', '3', '--verify-quorum'],
      cwd,
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/it is PENDING/);
    expect(await opens(cwd, old)).toBe(true);
    const byOld = await kw(['rekey', '--resume', ...quorum], cwd);
    expect(byOld.code).toBe(1);
    expect(byOld.stderr).toMatch(/waits for a test quorum of the NEW shares/);
    const fresh = (i: number) => ['--share-file', `s1/share-${i}-of-4.txt`];
    const tooFew = await kw(['rekey', '--resume', ...fresh(1), ...fresh(2)], cwd);
    expect(tooFew.code).toBe(1);
    expect(await opens(cwd, old)).toBe(true);
    const done = await kw(['rekey', '--resume', ...fresh(1), ...fresh(3), ...fresh(4)], cwd);
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toMatch(/Activated the new share set ss_\S+ .* after a test quorum of the new shares/);
    expect(await opens(cwd, old)).toBe(false);
    const news = await Promise.all([2, 3, 4].map((i) => readFile(path.join(cwd, 's1', `share-${i}-of-4.txt`), 'utf8')));
    expect(await opens(cwd, news)).toBe(true);
  });
});
