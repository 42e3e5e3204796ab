import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Keywarden, MemoryKeyStore, SoftwareRoot } from '@keywarden/core';
import { KeyPairs } from '../src/index.js';

/** A software-root Keywarden on an in-memory store, with the "pki" KEK. */
export async function setup(): Promise<{
  kw: Keywarden;
  pairs: KeyPairs;
  store: MemoryKeyStore;
  root: SoftwareRoot;
  unsealKey: Uint8Array;
  close(): Promise<void>;
}> {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey: Uint8Array.from(unsealKey) });
  const kw = new Keywarden({ store, root });
  await kw.createKey('pki');
  return {
    kw,
    pairs: new KeyPairs({ keywarden: kw }),
    store,
    root,
    unsealKey,
    async close() {
      await kw.close();
      await root.close();
      await store.close();
    },
  };
}

/** A temporary folder for openssl's input files, removed by the returned function. */
export function tempDir(): { dir: string; file(name: string, data: string | Uint8Array): string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'keywarden-pki-'));
  return {
    dir,
    file(name, data) {
      const path = join(dir, name);
      writeFileSync(path, data);
      return path;
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Run openssl; status and combined output (openssl verify prints its verdict on stdout, errors on stderr). */
export function openssl(...args: string[]): { status: number; output: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

/** `openssl x509 -text` of a PEM file. */
export function x509Text(path: string): string {
  return execFileSync('openssl', ['x509', '-in', path, '-noout', '-text'], { encoding: 'utf8', timeout: 20_000 });
}
