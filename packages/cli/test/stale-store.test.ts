/**
 * The database deleted or replaced under a running agent (issue 6, item 4), with a real
 * `keywarden agent` process and the built CLI: before the fix, `root rotate` reported success on a
 * store whose WAL had been deleted under the agent, and the agent's stale pages overwrote the
 * rotation when it stopped — every key lost. Now: the agent refuses to write into files nobody else
 * can see (typed error), every other process refuses to open the store while the agent holds it
 * stale, and once the agent stops, nothing acknowledged is lost.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { rm, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { KeywardenError, ROOT_MISSING_MESSAGE, RootMissingError, StoreReplacedError } from '@keywarden/core';
import { AgentClient } from '@keywarden/agent';
import { describe, expect, it } from 'vitest';
import { resolveAgentSocket, resolveStoreLocation } from '../src/store-dir.js';
import { tempDir } from './helpers.js';
import { built, kw, requireBuild, startAgent } from './split-helpers.js';

requireBuild('stale-store.test.ts');

// better-sqlite3 is store-sqlite's dependency: reached from there, to damage a file by hand.
const storeRequire = createRequire(createRequire(import.meta.url).resolve('@keywarden/store-sqlite/package.json'));
const Database = storeRequire('better-sqlite3') as new (
  file: string,
) => { prepare(sql: string): { run(...params: unknown[]): unknown }; close(): void };

const WAL_DELETED =
  'keywarden: keystore: the WAL file (-wal) of this key store was deleted while another process still has it open; nothing was changed. Stop every process using the key store (the agent, applications), then open it again';

function lines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.length > 0);
}

describe.skipIf(!built)('a store deleted or replaced under a running agent (issue 6, item 4)', () => {
  it('WAL deleted under an unsealed agent: root rotate and every other command refuse; the agent refuses to write; after it stops nothing acknowledged is lost and rotate works', async () => {
    const cwd = await tempDir();
    const init = await kw(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'shares'], cwd);
    expect(init.code, init.stderr).toBe(0);
    const quorum = [
      '--share-file',
      path.join('shares', 'share-1-of-3.txt'),
      '--share-file',
      path.join('shares', 'share-2-of-3.txt'),
    ];
    const wal = path.join(cwd, '.keywarden', 'keystore.db-wal');

    let agent = await startAgent(cwd);
    expect((await kw(['unseal', ...quorum], cwd)).code).toBe(0);
    // Acknowledged writes and data, all through the agent.
    expect((await kw(['key', 'create', 'app'], cwd)).code).toBe(0);
    expect((await kw(['key', 'rotate', 'app'], cwd)).code).toBe(0);
    await writeFile(path.join(cwd, 'data.txt'), 'ledger 2026\n');
    const enc = await kw(['encrypt', '--key', 'app', '-i', 'data.txt', '-o', 'data.kw'], cwd);
    expect(enc.code, enc.stderr).toBe(0);
    const rootBefore = JSON.parse((await kw(['status', '--json'], cwd)).stdout).rootId as string;

    expect(existsSync(wal)).toBe(true);
    await rm(wal);

    // Root rotation must not report success on a store the agent holds stale.
    const rotate = await kw(['root', 'rotate', ...quorum], cwd);
    expect(rotate.code).toBe(1);
    expect(rotate.stdout).toBe('');
    expect(lines(rotate.stderr)).toEqual([WAL_DELETED]);
    for (const argv of [['key', 'list'], ['status']]) {
      const r = await kw(argv, cwd);
      expect(r.code, argv.join(' ')).toBe(1);
      expect(lines(r.stderr), argv.join(' ')).toEqual([WAL_DELETED]);
    }
    // Commands refuse before they reach the agent (they open the store too); a client that talks
    // to the agent directly finds the agent itself refusing to write, with the typed error.
    const create = await kw(['key', 'create', 'lost'], cwd);
    expect(create.code).toBe(1);
    expect(lines(create.stderr)).toEqual([WAL_DELETED]);
    const client = await AgentClient.connect(
      resolveAgentSocket({ cwd, env: {} }, resolveStoreLocation({ cwd, env: {} })),
    );
    try {
      const err = await client.createKey('lost').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(StoreReplacedError.isInstance(err)).toBe(true);
      expect((err as Error).message).toMatch(
        /^keystore: createKey: the database file or its WAL is no longer the one this process opened \(deleted, moved or replaced\); nothing was written\. Stop this process and start it again$/,
      );
      // Reads that need no write keep working: the data encrypted before still decrypts.
      expect((await client.listKeys()).map((k) => k.name)).toEqual(['app']);
    } finally {
      await client.close();
    }

    // Stopping the agent folds everything it acknowledged into the database file.
    expect(await agent.stop()).toBe(0);
    const list = await kw(['key', 'list', '--json'], cwd);
    expect(list.code, list.stderr).toBe(0);
    const keys = JSON.parse(list.stdout) as Array<{ name: string; versions: Array<{ version: number }> }>;
    expect(keys.map((k) => k.name)).toEqual(['app']);
    expect(keys[0]?.versions.map((v) => v.version)).toEqual([1, 2]);

    // Now the rotation goes through, and everything made before decrypts under the new root.
    const rotated = await kw(['root', 'rotate', ...quorum], cwd);
    expect(rotated.code, rotated.stderr).toBe(0);
    const rootAfter = JSON.parse((await kw(['status', '--json'], cwd)).stdout).rootId as string;
    expect(rootAfter).not.toBe(rootBefore);
    agent = await startAgent(cwd);
    expect((await kw(['unseal', ...quorum], cwd)).code).toBe(0);
    const dec = await kw(['decrypt', '--key', 'app', '-i', 'data.kw'], cwd);
    expect(dec.stderr).toBe('');
    expect(dec.stdout).toBe('ledger 2026\n');
    expect(await agent.stop()).toBe(0);
  }, 60_000);

  it('the agent SIGKILLed after its WAL was deleted: what it acknowledged before is still in the database file', async () => {
    const cwd = await tempDir();
    expect((await kw(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'shares'], cwd)).code).toBe(0);
    const quorum = [
      '--share-file',
      path.join('shares', 'share-1-of-3.txt'),
      '--share-file',
      path.join('shares', 'share-3-of-3.txt'),
    ];
    const agent = await startAgent(cwd);
    expect((await kw(['unseal', ...quorum], cwd)).code).toBe(0);
    for (const name of ['a', 'b', 'c']) expect((await kw(['key', 'create', name], cwd)).code).toBe(0);
    await rm(path.join(cwd, '.keywarden', 'keystore.db-wal'));
    await agent.stop('SIGKILL');
    // A crash leaves the -shm behind; with no process holding the store, it opens normally.
    const list = await kw(['key', 'list', '--json'], cwd);
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as Array<{ name: string }>).map((k) => k.name)).toEqual(['a', 'b', 'c']);
  }, 60_000);

  it('the root record lost under an unsealed agent (no tombstone): the agent seals itself and says "damaged", not "destroyed"', async () => {
    const cwd = await tempDir();
    expect((await kw(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'shares'], cwd)).code).toBe(0);
    const quorum = [
      '--share-file',
      path.join('shares', 'share-1-of-3.txt'),
      '--share-file',
      path.join('shares', 'share-2-of-3.txt'),
    ];
    const agent = await startAgent(cwd);
    expect((await kw(['unseal', ...quorum], cwd)).code).toBe(0);
    const raw = new Database(path.join(cwd, '.keywarden', 'keystore.db'));
    raw.prepare("DELETE FROM meta WHERE name = 'root'").run();
    raw.close();
    const client = await AgentClient.connect(
      resolveAgentSocket({ cwd, env: {} }, resolveStoreLocation({ cwd, env: {} })),
    );
    try {
      const err = await client.status().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(RootMissingError.isInstance(err)).toBe(true);
      expect((err as Error).message).toBe(`${ROOT_MISSING_MESSAGE}; stop the agent`);
      // It wiped what it held: key operations are refused as sealed.
      const sealed = await client.generateDataKey('any').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(KeywardenError.isInstance(sealed, 'KW_KEYSTORE_SEALED')).toBe(true);
    } finally {
      await client.close();
    }
    expect(await agent.stop()).toBe(0);
  }, 60_000);
});
