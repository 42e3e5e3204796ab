/**
 * One streaming measurement in a process of its own, so that its peak RSS is its own:
 *
 *   node dist/stream-child.js <raw|keywarden|keywarden-cached|esdk-commit> <input> <workdir>
 *
 * Encrypts <input> file → file, then decrypts that file → file, and prints one JSON line
 * { encrypt: { wallMs, cpuMs }, decrypt: { wallMs, cpuMs }, maxRssMiB }. Libraries are imported
 * only by the mode that uses them, so the raw pipeline's RSS is not inflated by them. `raw` is the ceiling the issue names:
 * pipeline(createReadStream, createCipheriv('aes-256-gcm'), createWriteStream), and the same with
 * createDecipheriv (tag checked at the end, as a one-shot GCM stream must). The workdir's files
 * are deleted before exiting.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';

const [mode, input, workdir] = process.argv.slice(2) as [string, string, string];
const encFile = join(workdir, `${mode}.enc`);
const decFile = join(workdir, `${mode}.dec`);
const context = { tenant: 'bench', purpose: 'benchmark' };

interface Timing {
  wallMs: number;
  cpuMs: number;
}
async function timed(f: () => Promise<void>): Promise<Timing> {
  const t = process.hrtime.bigint();
  const c = process.cpuUsage();
  await f();
  const d = process.cpuUsage(c);
  return { wallMs: Number(process.hrtime.bigint() - t) / 1e6, cpuMs: (d.user + d.system) / 1000 };
}

async function main(): Promise<{ encrypt: Timing; decrypt: Timing }> {
  if (mode === 'raw') {
    const key = randomBytes(32);
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', key, iv);
    const encrypt = await timed(() => pipeline(createReadStream(input), cipher, createWriteStream(encFile)));
    const decipher = createDecipheriv('aes-256-gcm', key, iv);
    decipher.setAuthTag(cipher.getAuthTag());
    const decrypt = await timed(() => pipeline(createReadStream(encFile), decipher, createWriteStream(decFile)));
    return { encrypt, decrypt };
  }
  if (mode === 'keywarden' || mode === 'keywarden-cached') {
    const { DataKeyCache, Keywarden, MemoryKeyStore, SoftwareRoot } = await import('@keywarden/core');
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const kw = new Keywarden({ store, root });
    await kw.createKey('bench');
    const provider = mode === 'keywarden' ? kw : new DataKeyCache(kw, { maxAgeMs: 60_000 });
    const encrypt = await timed(() =>
      pipeline(
        createReadStream(input),
        provider.createEncryptStream({ key: 'bench', context }),
        createWriteStream(encFile),
      ),
    );
    const decrypt = await timed(() =>
      pipeline(
        createReadStream(encFile),
        provider.createDecryptStream({ key: 'bench', context }),
        createWriteStream(decFile),
      ),
    );
    await provider.close();
    return { encrypt, decrypt };
  }
  if (mode === 'esdk-commit') {
    // Loaded only for the ESDK case, so the other children never load the SDK.
    const { esdkPeer } = await import('./_esdk.js');
    const { esdk, keyring, fairSuite: suiteId } = esdkPeer();
    const encrypt = await timed(() =>
      pipeline(
        createReadStream(input),
        esdk.encryptStream(keyring, { suiteId, encryptionContext: context }),
        createWriteStream(encFile),
      ),
    );
    const decrypt = await timed(() =>
      pipeline(createReadStream(encFile), esdk.decryptUnsignedMessageStream(keyring), createWriteStream(decFile)),
    );
    return { encrypt, decrypt };
  }
  throw new Error(`stream-child: unknown mode ${mode}`);
}

try {
  const r = await main();
  const maxRssMiB = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(`${JSON.stringify({ ...r, maxRssMiB })}\n`);
} finally {
  rmSync(encFile, { force: true });
  rmSync(decFile, { force: true });
}
