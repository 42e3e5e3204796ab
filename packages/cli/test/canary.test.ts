/**
 * Canary (issue 12, Proof): a known KEK and a known plaintext go through a whole life — import,
 * encrypt, decrypt, data keys, rotate, rewrap, disable, compromise, destroy, denials, failures and
 * the agent — on a real SQLite key store with an audit log in the store and in a JSONL file. The
 * canary bytes, raw and as hex, base64 and base64url, must appear in no log line, no error message,
 * no audit record and no file of the key store.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { AgentClient, AgentServer, issueAgentCredential } from '@keywarden/agent';
import {
  auditLogOf,
  decryptEnvelope,
  encryptEnvelope,
  Keywarden,
  loadAuditKey,
  readStoreAuditLines,
  redactSecrets,
  SoftwareRoot,
  verifyAuditLog,
  writeStoredPolicy,
} from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { expect, it } from 'vitest';

// Fixed, high-entropy canary values (not secrets of anything: they exist to be searched for).
const CANARY_KEY = Buffer.from('9f3c1a7be2d44c0a8b51f6e37d92c4a1e0b7d85f3a6c29e14d70b8c5f2a3961e', 'hex');
const CANARY_PLAINTEXT = Buffer.concat([
  Buffer.from('canary-plaintext:'),
  Buffer.from('5b8e2f91c74a3d06e1f8a29c4b7d503e6a1c8f27d9b4e0a3', 'hex'),
]);

const POLICY = `keywarden-policy 1
principal admin  environment=prod
principal app    environment=prod
principal mover  environment=prod
principal dev    environment=dev
allow admin  *                                 on *
allow app    encrypt,decrypt,generate-data-key on canary
allow mover  rewrap                            on canary
allow dev    *                                 on *
`;

function forms(bytes: Buffer): string[] {
  return [
    bytes.toString('hex'),
    bytes.toString('hex').toUpperCase(),
    bytes.toString('base64'),
    bytes.toString('base64url'),
    // A base64 form starting at another byte offset (the alignment in a longer encoded buffer).
    bytes.subarray(1).toString('base64').slice(0, 32),
    bytes.subarray(2).toString('base64').slice(0, 32),
  ];
}

function leaks(haystack: Buffer, what: string): string[] {
  const found: string[] = [];
  for (const [name, canary] of [
    ['canary key', CANARY_KEY],
    ['canary plaintext', CANARY_PLAINTEXT],
  ] as const) {
    if (haystack.includes(canary)) found.push(`${what}: raw ${name}`);
    if (haystack.includes(canary.subarray(0, 16))) found.push(`${what}: raw ${name} (first half)`);
    for (const f of forms(canary))
      if (haystack.includes(Buffer.from(f))) found.push(`${what}: ${name} as ${f.slice(0, 12)}…`);
  }
  return found;
}

it('the canary key and plaintext appear in no log, error, audit record or key-store file', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'kw-canary-'));
  const errors: string[] = [];
  const logLines: string[] = [];
  const catchErr = async (p: Promise<unknown>) => {
    try {
      await p;
      throw new Error('canary: expected a failure');
    } catch (err) {
      errors.push(`${(err as Error).name}: ${(err as Error).message}`);
    }
  };
  try {
    const store = SqliteKeyStore.open(path.join(dir, 'keystore.db'), { create: true });
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    await writeStoredPolicy(store, POLICY);
    const kw = new Keywarden({
      store,
      root,
      principal: 'agent',
      policy: 'store',
      audit: { file: path.join(dir, 'audit.jsonl') },
    });
    const admin = kw.as('admin');
    const app = kw.as('app');

    // Import, use, rotate, rewrap.
    await admin.importKey('canary', new Uint8Array(CANARY_KEY), { scope: { environment: 'prod' } });
    const env = await app.encrypt(new Uint8Array(CANARY_PLAINTEXT), { key: 'canary', context: { case: 'canary' } });
    expect(
      Buffer.from(await app.decrypt(env, { key: 'canary', context: { case: 'canary' } })).equals(CANARY_PLAINTEXT),
    ).toBe(true);
    const dk = await app.generateDataKey('canary');
    await admin.rotateKey('canary');
    const moved = await kw.as('mover').rewrapEnvelope(env, { key: 'canary', context: { case: 'canary' } });
    await kw.as('mover').rewrapDataKey(dk.wrapped, undefined, { key: 'canary' });

    // Denials and failures, their messages kept.
    await catchErr(kw.as('dev').decrypt(moved.envelope, { key: 'canary', context: { case: 'canary' } }));
    await catchErr(app.rotateKey('canary'));
    await catchErr(kw.as('nobody').encrypt(new Uint8Array(CANARY_PLAINTEXT), { key: 'canary' }));
    const tampered = moved.envelope.slice();
    tampered[tampered.length - 3] = (tampered[tampered.length - 3] as number) ^ 0x40;
    await catchErr(app.decrypt(tampered, { key: 'canary', context: { case: 'canary' } }));
    await catchErr(app.decrypt(moved.envelope, { key: 'canary', context: { case: 'other' } }));
    await catchErr(admin.importKey('canary-2', new Uint8Array(32).fill(7)));

    // The agent, authenticated, sharing the same audit log.
    const { token } = await issueAgentCredential(store, 'app');
    const socket = path.join(dir, 'agent.sock');
    const audit = auditLogOf(kw);
    const agent = await AgentServer.start({
      socket,
      store,
      root,
      authenticate: true,
      ...(audit ? { audit } : {}),
      log: (l) => logLines.push(l),
    });
    const client = await AgentClient.connect(socket, { credential: token });
    const viaAgent = await encryptEnvelope(client, new Uint8Array(CANARY_PLAINTEXT), { key: 'canary' });
    expect(Buffer.from(await decryptEnvelope(client, viaAgent, { key: 'canary' })).equals(CANARY_PLAINTEXT)).toBe(true);
    await catchErr(client.rotateKey('canary'));
    const bad = viaAgent.slice();
    bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1;
    await catchErr(decryptEnvelope(client, bad, { key: 'canary' }));
    await client.close();
    await agent.close();

    // Retire the canary key: disable, compromise, destroy every version.
    await admin.disableVersion('canary', 1);
    await admin.compromiseVersion('canary', 1, { rotate: false });
    await admin.destroyVersion('canary', 1, { force: true });
    await catchErr(app.decrypt(env, { key: 'canary', context: { case: 'canary' } }));
    const auditKey = await loadAuditKey(store, root);
    const storeLines = await readStoreAuditLines(store, auditKey);
    expect(verifyAuditLog(auditKey, storeLines).ok).toBe(true);
    await kw.close();
    await root.close();
    await store.close();

    // A log line an application writes about all this, through the redactor.
    logLines.push(
      redactSecrets(
        `decrypted ${errors.length} failures; dk=${JSON.stringify({ plaintext: Buffer.from(dk.plaintext).toString('base64') })}`,
      ),
    );

    // Where the canary must not be.
    expect(errors.length).toBe(9);
    expect(storeLines.length).toBeGreaterThan(15);
    const found: string[] = [];
    found.push(...leaks(Buffer.from(errors.join('\n')), 'error messages'));
    found.push(...leaks(Buffer.from(logLines.join('\n')), 'log lines'));
    found.push(...leaks(Buffer.from(storeLines.join('\n')), 'audit records in the store'));
    for (const f of readdirSync(dir)) {
      if (f === 'agent.sock') continue;
      found.push(...leaks(readFileSync(path.join(dir, f)), `file ${f}`));
    }
    expect(found).toEqual([]);
    // The search itself can find the canary (the test is not vacuous).
    expect(leaks(Buffer.from(`x${CANARY_KEY.toString('base64url')}y`), 'probe')).toHaveLength(1);
    expect(leaks(Buffer.concat([Buffer.from('x'), CANARY_PLAINTEXT]), 'probe').length).toBeGreaterThan(0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
