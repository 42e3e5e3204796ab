/** The agent's log passes through core's redactor: a secret inside an error never reaches the log. */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { MemoryKeyStore, SoftwareRoot } from '@keywarden/core';
import { expect, it } from 'vitest';
import { AgentClient } from '../src/client.js';
import { AgentServer } from '../src/server.js';

it("a secret in an internal error's message is scrubbed from the agent's log", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'kw-agent-log-'));
  const store = new MemoryKeyStore();
  const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
  // A store failure whose message carries a connection string with a password (as a driver's might).
  store.getKey = async () => {
    throw new Error('connect failed: postgres://kw:Hunter2-Secret@db.internal/kw');
  };
  const log: string[] = [];
  const server = await AgentServer.start({ socket: path.join(dir, 's'), store, root, log: (l) => log.push(l) });
  const client = await AgentClient.connect(path.join(dir, 's'));
  try {
    await expect(client.getKey('k')).rejects.toThrow(/internal error/);
    const line = log.find((l) => l.startsWith('internal error'));
    expect(line).toContain('postgres://kw:[REDACTED]@db.internal/kw');
    expect(log.join('\n')).not.toContain('Hunter2-Secret');
  } finally {
    await client.close();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
});
