import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryKeyStore } from '../../src/memory-store.js';
import { SoftwareRoot } from '../../src/software-root.js';

export async function storeAndRoot() {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  return { store, root, unsealKey };
}

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'kw-audit-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
