/**
 * A folder's keys from an application: the unseal source (environment, file, or the agent), a
 * local Keywarden in development mode, and the folder's agent under split knowledge — started with
 * startFolderAgent, unsealed by a quorum over its socket, and used through openKeyService.
 */
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { AgentClient } from '@keywarden/agent';
import {
  decryptEnvelope,
  encodeUnsealKey,
  encryptEnvelope,
  InvalidInputError,
  KeystoreSealedError,
  Keywarden,
  UnsealError,
} from '@keywarden/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  type DeliveredShare,
  initSplitStoreDir,
  initStoreDir,
  openKeyService,
  readUnsealKey,
  resolveAgentSocket,
  resolveStoreLocation,
  resolveUnsealSource,
  type StoreLocation,
  startFolderAgent,
  UNSEAL_KEY_FILE_NOT_APPLICABLE,
  withKeyService,
} from '../src/index.js';

let work: string;
let loc: StoreLocation;
beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'kw-ceremony-service-'));
  loc = resolveStoreLocation({ cwd: work, env: {} });
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

const context = { tenant: 'acme' };
const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array) => new TextDecoder().decode(b);

describe('unseal sources', () => {
  it('development mode: the environment first, then an explicit file, then D/unseal.key', () => {
    const at = { cwd: work, env: {} };
    expect(resolveUnsealSource(at, loc)).toMatchObject({
      kind: 'file',
      path: loc.defaultUnsealKeyPath,
      explicit: false,
    });
    expect(resolveUnsealSource(at, loc, { unsealKeyFile: 'k' })).toMatchObject({
      kind: 'file',
      path: path.join(work, 'k'),
      display: 'k',
      explicit: true,
    });
    const env = { cwd: work, env: { KEYWARDEN_UNSEAL_KEY: 'x' } };
    expect(resolveUnsealSource(env, loc, { unsealKeyFile: 'k' })).toMatchObject({ kind: 'env', value: 'x' });
  });

  it('split knowledge: the agent socket; an explicit key file is refused, a key in the environment ignored', () => {
    const env = { cwd: work, env: { KEYWARDEN_UNSEAL_KEY: 'x' } };
    expect(resolveUnsealSource(env, loc, { method: 'shamir' })).toEqual({
      kind: 'agent',
      socket: resolveAgentSocket(env, loc),
    });
    expect(resolveAgentSocket(env, loc).path).toBe(path.join(loc.dir, 'agent.sock'));
    expect(resolveAgentSocket({ cwd: work, env: { KEYWARDEN_AGENT_SOCKET: 's' } }, loc).path).toBe(
      path.join(work, 's'),
    );
    expect(() => resolveUnsealSource(env, loc, { method: 'shamir', unsealKeyFile: 'k' })).toThrow(
      new InvalidInputError(UNSEAL_KEY_FILE_NOT_APPLICABLE),
    );
  });

  it('readUnsealKey: a missing key is UnsealError, a bad one InvalidInputError; a readable file is warned about', async () => {
    const missing = resolveUnsealSource({ cwd: work, env: {} }, loc);
    await expect(readUnsealKey(missing)).rejects.toBeInstanceOf(UnsealError);
    const bad = resolveUnsealSource({ cwd: work, env: { KEYWARDEN_UNSEAL_KEY: 'not a key' } }, loc);
    const err = await readUnsealKey(bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as Error).message).not.toContain('not a key');
    const file = path.join(work, 'k');
    await writeFile(file, `${encodeUnsealKey(new Uint8Array(32).map((_, i) => i * 7 + 1))}\n`);
    await chmod(file, 0o644);
    const warnings: string[] = [];
    const key = await readUnsealKey(resolveUnsealSource({ cwd: work, env: {} }, loc, { unsealKeyFile: 'k' }), {
      onWarning: (m) => warnings.push(m),
    });
    expect(key.length).toBe(32);
    expect(warnings).toEqual(['unseal key file k is accessible to group or others (mode 644); run chmod 600 on it']);
  });
});

describe('openKeyService', () => {
  it('development mode: a Keywarden unsealed with the key file; the same key store through either path', async () => {
    await initStoreDir(loc, { cwd: work });
    const envelope = await withKeyService(
      loc,
      {},
      async (keys) => {
        expect(keys).toBeInstanceOf(Keywarden);
        await keys.createKey('orders');
        return encryptEnvelope(keys, bytes('order #1'), { key: 'orders', context });
      },
      { cwd: work, env: {} },
    );
    const keyText = (await readFile(loc.defaultUnsealKeyPath, 'utf8')).trim();
    const plain = await withKeyService(loc, {}, (keys) => decryptEnvelope(keys, envelope, { key: 'orders', context }), {
      cwd: work,
      env: { KEYWARDEN_UNSEAL_KEY: keyText },
    });
    expect(text(plain)).toBe('order #1');
  });

  it('split knowledge: KeystoreSealedError without an agent; through the folder agent once a quorum unsealed it', async () => {
    const shares: DeliveredShare[] = [];
    await initSplitStoreDir(loc, {
      shares: 3,
      threshold: 2,
      destination: { kind: 'callback', deliver: async (s) => void shares.push(s) },
    });
    const at = { cwd: work, env: {} };
    const none = await openKeyService(loc, {}, at).catch((e: unknown) => e);
    expect(none).toBeInstanceOf(KeystoreSealedError);
    expect((none as Error).message).toBe(
      'this key store is sealed by split knowledge (no agent answers on .keywarden/agent.sock); start `keywarden agent` and unseal it with a quorum (`keywarden unseal`)',
    );
    await expect(openKeyService(loc, { unsealKeyFile: 'k' }, at)).rejects.toBeInstanceOf(InvalidInputError);

    const agent = await startFolderAgent(loc, {}, at);
    try {
      expect(agent.isSealed()).toBe(true);
      const custodian = await AgentClient.connect(resolveAgentSocket(at, loc));
      await custodian.unseal(shares[0]?.text as string);
      await custodian.unseal(shares[2]?.text as string);
      await custodian.close();
      const envelope = await withKeyService(
        loc,
        {},
        async (keys) => {
          expect(keys).toBeInstanceOf(AgentClient);
          await keys.createKey('orders');
          return encryptEnvelope(keys, bytes('order #2'), { key: 'orders', context });
        },
        at,
      );
      const plain = await withKeyService(
        loc,
        {},
        (keys) => decryptEnvelope(keys, envelope, { key: 'orders', context }),
        at,
      );
      expect(text(plain)).toBe('order #2');
    } finally {
      await agent.close();
    }
  });

  it('startFolderAgent refuses a development-mode store and leaves no socket', async () => {
    await initStoreDir(loc, { cwd: work });
    const at = { cwd: work, env: {} };
    await expect(startFolderAgent(loc, {}, at)).rejects.toThrow(
      'this key store is in development mode (unseal key file or environment variable): commands use it directly, no agent is needed',
    );
    await expect(readFile(resolveAgentSocket(at, loc).path)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
