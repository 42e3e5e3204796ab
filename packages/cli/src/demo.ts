/**
 * `keywarden demo`: the key lifecycle in a throw-away key store, narrated step by step with what
 * each step protects against. It runs the same code paths as the real commands (store-dir.ts,
 * SqliteKeyStore, SoftwareRoot, Keywarden), and it never prints key material or the unseal key:
 * only ids, versions, lengths and non-secret header fields.
 */
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  constantTimeEqual,
  envelopeHeaderLength,
  envelopeToText,
  inspectEnvelope,
  KeywardenError,
  type Keywarden,
  type EncryptionContext,
  KeyMaterialError,
  KeyStateError,
  recordedRootBackend,
  RootUnavailableError,
  type SoftwareRoot,
  wipe,
} from '@keywarden/core';
import { initDeviceStoreDir, openFolderKeywarden } from '@keywarden/ceremony';
import type { CliIO } from './io.js';
import { formatPairs, keyDetails, keyListTable } from './output.js';
import { DEVELOPMENT_MODE_WARNING } from './commands/_init-report.js';
import {
  initStoreDir,
  loadRootBackend,
  openKeywarden,
  openStoreFile,
  resolveStoreLocation,
  resolveUnsealSource,
  type StoreLocation,
  unsealRoot,
} from './store-dir.js';

/** A device the demo can run on: what the harness (harness/softhsm.sh, harness/swtpm.sh) exports. */
export type DemoRoot = 'pkcs11' | 'tpm';

interface DemoDevice {
  kind: DemoRoot;
  uri: string;
  /** The PIN / auth value; the demo passes it itself, so the reopened root starts sealed. */
  secret: Uint8Array;
  env: Readonly<Record<string, string | undefined>>;
}

/** The harness's device from the environment, or a RootUnavailableError naming the harness command. */
export function demoDevice(kind: DemoRoot, env: Readonly<Record<string, string | undefined>>): DemoDevice {
  if (kind === 'pkcs11') {
    const module = env.KEYWARDEN_PKCS11_MODULE;
    const pinFile = env.KEYWARDEN_PKCS11_PIN_FILE;
    if (!module || !pinFile) {
      throw new RootUnavailableError(
        'demo: no PKCS#11 token in this environment (KEYWARDEN_PKCS11_MODULE and KEYWARDEN_PKCS11_PIN_FILE): start one with eval "$(bash harness/softhsm.sh start)"',
      );
    }
    let secret: Uint8Array;
    try {
      const bytes = readFileSync(pinFile);
      const end = bytes.length > 0 && bytes[bytes.length - 1] === 0x0a ? bytes.length - 1 : bytes.length;
      secret = new Uint8Array(bytes.subarray(0, end));
      wipe(bytes);
    } catch (err) {
      throw new RootUnavailableError('demo: the PIN file named by KEYWARDEN_PKCS11_PIN_FILE cannot be read', {
        cause: err,
      });
    }
    const token = env.KEYWARDEN_PKCS11_TOKEN || 'keywarden';
    const object = `kw-demo-${randomBytes(6).toString('hex')}`;
    return {
      kind,
      uri: `pkcs11:token=${encodeURIComponent(token)};object=${object}?module-path=${encodeURI(module)}`,
      secret,
      env,
    };
  }
  if (!env.KEYWARDEN_TPM_TCTI) {
    throw new RootUnavailableError(
      'demo: no TPM in this environment (KEYWARDEN_TPM_TCTI): start swtpm with eval "$(bash harness/swtpm.sh start)"',
    );
  }
  return { kind, uri: 'tpm:', secret: new Uint8Array(randomBytes(20)), env };
}

const STREAM_BYTES = 4 * 1024 * 1024;
const STREAM_CHUNK = 64 * 1024;

export async function runDemo(io: CliIO, options: { root?: DemoRoot } = {}): Promise<void> {
  // Checked before anything is made: a missing device is one line naming the harness command.
  const device = options.root ? demoDevice(options.root, io.env) : undefined;
  if (device) await loadRootBackend(device.uri);
  const out = new Narrator(io);
  const tmp = await mkdtemp(path.join(tmpdir(), 'keywarden-demo-'));
  let kw: Keywarden | undefined;
  try {
    out.intro(tmp);
    // The demo's own store: --dir, KEYWARDEN_DIR and KEYWARDEN_UNSEAL_KEY are deliberately ignored.
    const demoIO = { cwd: tmp, env: {} };
    const loc = resolveStoreLocation(demoIO, path.join(tmp, 'store'));
    const unseal = resolveUnsealSource(demoIO, loc);

    // 1 ───────────────────────────────────────────────────────────────────────────────────────
    if (device) {
      kw = await initOnDevice(out, io, loc, device);
    } else {
      out.step('Initialize a key store with a software root of trust');
      const init = await initStoreDir(demoIO, loc, {});
      kw = await openKeywarden(loc, io, { unseal });
      out.facts([
        ['key store', path.join(loc.display, 'keystore.db')],
        ['root', `${init.rootId} (${kw.root.describe().label})`],
        ['unseal key', `32 random bytes in ${path.join(loc.display, 'unseal.key')}, mode 0600 (never shown)`],
      ]);
      out.protects(
        'a copy of the key store alone: it holds KEKs only wrapped by the root key, and the root key only ' +
          'sealed under the unseal key.',
      );
      out.note(DEVELOPMENT_MODE_WARNING);
    }
    out.check(io);

    // 2 ───────────────────────────────────────────────────────────────────────────────────────
    out.step('Create one key-encryption key (KEK) per tenant, with scope: one key, one job');
    const scope = { environment: 'demo', service: 'records', purpose: 'customer-records' };
    await kw.createKey('tenant-a', { scope: { ...scope, tenant: 'a' } });
    await kw.createKey('tenant-b', { scope: { ...scope, tenant: 'b' } });
    out.block(keyListTable(await kw.listKeys()));
    out.say("KEK material was generated by the root's CSPRNG and is stored only wrapped by the root.");
    out.protects(
      "one tenant's compromise or offboarding touching another tenant: each KEK can be rotated, disabled " +
        'or destroyed on its own, and its scope records what it may be used for.',
    );
    out.check(io);

    // 3 ───────────────────────────────────────────────────────────────────────────────────────
    out.step('Envelope-encrypt a record for tenant A, bound to its context');
    const record = Buffer.from('{"customer":"Ada Lovelace","plan":"analytical-engine","balance":1843}', 'utf8');
    const contextA: EncryptionContext = { tenant: 'a', table: 'customers', row: '42' };
    const envelope = await kw.encrypt(record, { key: 'tenant-a', context: contextA });
    const text = envelopeToText(envelope);
    out.facts([
      ['plaintext', `${record.length} bytes`],
      ['context', formatContext(contextA)],
      ['envelope', `${envelope.length} bytes; text form ${text.slice(0, 16)}… (${text.length} characters)`],
    ]);
    out.say("A fresh data key (DEK) encrypted the record; the DEK, wrapped by tenant-a's KEK, travels inside");
    out.say('the envelope. The context is authenticated but not stored: whoever decrypts must present it.');
    out.protects(
      'reading the database or a backup: the row holds ciphertext and a wrapped DEK, useless without ' +
        'the KEK, which is useless without the unsealed root.',
    );
    out.check(io);

    // 4 ───────────────────────────────────────────────────────────────────────────────────────
    out.step('Inspect the envelope header (no key needed, no secret shown)');
    const info = inspectEnvelope(envelope);
    out.facts([
      ['format', `v${info.formatVersion}, suite ${info.suite}, ${info.mode}`],
      ['KEK id', info.keyId],
      ['KEK version', `v${info.keyVersion}`],
    ]);
    out.say('These fields say which KEK version to ask for (and which envelopes to re-wrap after a');
    out.say('rotation). They are claims until the envelope decrypts: every one of them is authenticated.');
    out.check(io);

    // 5 ───────────────────────────────────────────────────────────────────────────────────────
    out.step("Decrypt as tenant A's code does: name the expected key, give the context");
    const opened = await kw.decrypt(envelope, { key: 'tenant-a', context: contextA });
    out.facts([['plaintext', Buffer.from(opened).toString('utf8')]]);
    wipe(opened);
    out.protects(
      'undetected corruption: AES-256-GCM authenticates every byte, and the key commitment in the header ' +
        'proves the envelope was made with exactly this data key.',
    );
    out.check(io);

    // 6 ───────────────────────────────────────────────────────────────────────────────────────
    out.step('Decrypt with a wrong context (the same ciphertext pasted into row 43)');
    out.refused(await refusal(() => kw!.decrypt(envelope, { key: 'tenant-a', context: { ...contextA, row: '43' } })));
    out.protects('cut-and-paste attacks: a ciphertext moved to another row, table or tenant does not decrypt there.');
    out.check(io);

    // 7 ───────────────────────────────────────────────────────────────────────────────────────
    out.step("Give tenant A's code an envelope made with tenant B's key and tenant A's context");
    const planted = await kw.encrypt(Buffer.from('{"customer":"Mallory","balance":1000000}', 'utf8'), {
      key: 'tenant-b',
      context: contextA,
    });
    out.say("Whoever may use tenant B's key can write tenant A's context into an envelope. Tenant A's code");
    out.say('names the key it expects, so the envelope is refused before any key is used:');
    out.refused(await refusal(() => kw!.decrypt(planted, { key: 'tenant-a', context: contextA })));
    out.protects(
      "a confused deputy across tenants: data planted under another tenant's key never passes as tenant " +
        "A's, even with A's context. (Tools that must open every key's data say so: anyKeyInStore: true.)",
    );
    out.check(io);

    // 8 ───────────────────────────────────────────────────────────────────────────────────────
    out.step('Decrypt after flipping one bit of the ciphertext');
    const tampered = Uint8Array.from(envelope);
    const last = tampered.length - 1;
    tampered[last] = (tampered[last] as number) ^ 0x01;
    out.refused(await refusal(() => kw!.decrypt(tampered, { key: 'tenant-a', context: contextA })));
    out.protects('tampering: a modified envelope is refused as a whole, never decrypted into something else.');
    out.check(io);

    // 9 ───────────────────────────────────────────────────────────────────────────────────────
    out.step("Try to unwrap tenant A's data key with tenant B's KEK");
    const keyB = await kw.getKey('tenant-b');
    const dkA = await kw.generateDataKey('tenant-a', contextA);
    wipe(dkA.plaintext);
    const relabelled = relabelWrappedKey(dkA.wrapped, keyB.id);
    if (relabelled) {
      out.say(`The wrapped DEK names its KEK; we rewrite that name to tenant-b (${keyB.id}), as an attacker`);
      out.say("who may use tenant B's key would, and ask Keywarden to unwrap it as tenant B's.");
      out.refused(await refusal(() => kw!.decryptDataKey(relabelled, contextA, { key: 'tenant-b' })));
    } else {
      out.say('(skipped: the two KEK ids differ in length, so the relabelling is not a like-for-like swap)');
    }
    out.protects(
      "cross-tenant access: a DEK wrapped under tenant A's KEK unwraps only with that KEK, version and " +
        'context; the KEK id and version are bound into the wrap itself.',
    );
    out.check(io);

    // 10 ───────────────────────────────────────────────────────────────────────────────────────
    out.step('Generate a data key for your own encryption: store the wrapped form, never the plaintext');
    const dk = await kw.generateDataKey('tenant-a', contextA);
    out.facts([
      ['KEK', `${dk.keyId} v${dk.version}`],
      ['plaintext DEK', `${dk.plaintext.length} bytes: use in memory, then wipe (not shown)`],
      [
        'wrapped DEK',
        `${dk.wrapped.length} bytes, starts "${Buffer.from(dk.wrapped.subarray(0, 3)).toString('latin1')}" (store this beside the data)`,
      ],
    ]);
    const again = await kw.decryptDataKey(dk.wrapped, contextA, { key: 'tenant-a' });
    const same = constantTimeEqual(again, dk.plaintext);
    wipe(again, dk.plaintext);
    if (!same) throw new KeyMaterialError('demo: the unwrapped data key differs from the generated one');
    out.say("decryptDataKey(wrapped, context, { key: 'tenant-a' }) later returns the same 32 bytes (checked");
    out.say('in constant time).');
    out.protects('keeping plaintext keys at rest: only the wrapped DEK is ever written down.');
    out.check(io);

    // 11 ──────────────────────────────────────────────────────────────────────────────────────
    out.step(`Stream-encrypt ${STREAM_BYTES / (1024 * 1024)} MiB in bounded memory`);
    const streamed = await streamRoundTrip(kw, tmp, io);
    out.facts([
      ['plaintext', `${streamed.plaintextBytes} bytes, SHA-256 ${streamed.inHash.slice(0, 16)}…`],
      [
        'ciphertext',
        `${streamed.ciphertextBytes} bytes in ${streamed.frames} frames of ${streamed.frameSize / 1024} KiB`,
      ],
      [
        'decrypted',
        `${streamed.outBytes} bytes, SHA-256 ${streamed.outHash.slice(0, 16)}… (${streamed.inHash === streamed.outHash ? 'identical' : 'DIFFERENT'})`,
      ],
    ]);
    if (streamed.inHash !== streamed.outHash)
      throw new KeyMaterialError('demo: the streamed round trip changed the data');
    out.say('At most about one frame is buffered on each side, so a 4 MiB file and a 400 GiB one need the');
    out.say('same memory. Each frame is authenticated before its plaintext is released, and the last frame');
    out.say('is marked, so a truncated stream is detected.');
    out.protects('reordered, dropped, duplicated or truncated frames; unbounded memory use on large files.');
    out.check(io);

    // 12 ──────────────────────────────────────────────────────────────────────────────────────
    out.step("Rotate tenant A's KEK");
    const rotated = await kw.rotateKey('tenant-a');
    out.block(keyDetails(rotated));
    const old = await kw.decrypt(envelope, { key: 'tenant-a', context: contextA });
    wipe(old);
    const fresh = await kw.encrypt(record, { key: 'tenant-a', context: contextA });
    out.facts([
      ['old envelope', `KEK v${inspectEnvelope(envelope).keyVersion}: still decrypts`],
      ['new envelope', `KEK v${inspectEnvelope(fresh).keyVersion}: new data keys are wrapped under the new version`],
    ]);
    out.protects(
      'a KEK version protecting unbounded amounts of data for ever: new data moves to v2 at once, with no ' +
        'outage and no bulk re-encryption; old versions can be retired once their data is re-wrapped.',
    );
    out.check(io);

    // 13 ──────────────────────────────────────────────────────────────────────────────────────
    out.step('Close (cache wiped), reopen: sealed until unsealed');
    await kw.close();
    kw = undefined;
    out.say('close() wiped the cached KEKs and the root key from memory.');
    kw = device ? await openFolderKeywarden(loc, { env: device.env }) : await openKeywarden(loc, io);
    out.facts([['reopened', kw.root.sealable?.isSealed() ? 'sealed' : 'unsealed']]);
    out.refused(await refusal(() => kw!.decrypt(envelope, { key: 'tenant-a', context: contextA })));
    if (device) {
      out.say(
        `Unsealing: the ${device.kind === 'tpm' ? 'auth value' : 'user PIN'} goes to the device (never printed).`,
      );
      await kw.root.sealable?.unseal(device.secret);
    } else {
      await unsealRoot(kw.root as SoftwareRoot, unseal, io);
    }
    const afterUnseal = await kw.decrypt(envelope, { key: 'tenant-a', context: contextA });
    const ok = Buffer.from(afterUnseal).equals(record);
    wipe(afterUnseal);
    out.facts([['after unseal', ok ? 'the record decrypts again' : 'UNEXPECTED: the record did not match']]);
    if (!ok) throw new KeyMaterialError('demo: the record did not decrypt after unsealing');
    out.protects(
      'a restarted process, a stolen disk or a backup: everything on disk stays sealed until the unseal key ' +
        '(in production: a quorum of share holders, or an HSM/TPM) opens the root.',
    );
    out.check(io);

    // 14 ──────────────────────────────────────────────────────────────────────────────────────
    const live = kw;
    out.step("Rewrap tenant A's old envelope onto v2, then retire v1 (docs/lifecycle.md)");
    const moved = await live.rewrapEnvelope(envelope, { key: 'tenant-a', context: contextA });
    await live.setMinDecryptionVersion('tenant-a', 2);
    // Envelope format v2 (docs/format.md §4.10): only the header is replaced; the body is kept.
    const bodyKept = constantTimeEqual(
      moved.envelope.subarray(envelopeHeaderLength(moved.envelope)),
      envelope.subarray(envelopeHeaderLength(envelope)),
    );
    out.facts([
      [
        'rewrapped',
        `KEK v${moved.fromVersion} → v${moved.toVersion}: ${bodyKept ? 'new header, the body byte for byte the same' : 're-encrypted'}; decrypts as before`,
      ],
      ['minimum decryption version', 'v2: the original v1 envelope is now refused'],
    ]);
    out.refused(await refusal(() => live.decrypt(envelope, { key: 'tenant-a', context: contextA })));
    out.protects(
      'old versions that must stop being accepted: data moves to the primary first, then the old version is ' +
        'retired (reversible), so nothing is lost by mistake.',
    );
    out.check(io);

    // 15 ──────────────────────────────────────────────────────────────────────────────────────
    out.step('Disable v1 (reversible), then destroy it: crypto-shredding');
    await live.disableVersion('tenant-a', 1);
    out.say('A disabled version neither wraps nor unwraps until enabled again; the primary cannot be disabled.');
    await live.destroyVersion('tenant-a', 1, { force: true });
    out.say('Destroyed (--force skips the 7-day grace period): its wrapped material is erased from the store,');
    out.say('the SQLite pages zeroed and the WAL truncated. Every envelope under v1 is unrecoverable:');
    await live.setMinDecryptionVersion('tenant-a', 1);
    out.refused(await refusal(() => live.decrypt(envelope, { key: 'tenant-a', context: contextA })));
    out.protects(
      'data that must become unrecoverable (a tenant that left, a retention limit): erasing one KEK version shreds every record under it.',
    );
    out.check(io);

    // 16 ──────────────────────────────────────────────────────────────────────────────────────
    out.step("Tenant B's KEK leaked: mark it compromised");
    const beforeLeak = await live.encrypt(record, { key: 'tenant-b', context: contextA });
    const report = await live.compromiseVersion('tenant-b', 1);
    out.facts([
      ['compromised', `v${report.compromisedVersion}: never unwraps again`],
      ['rotated', `primary is now v${report.rotatedTo} (in the same write)`],
      ['re-encrypt from source', `data under v${report.unreadableVersions.join(', v')}`],
    ]);
    out.refused(await refusal(() => live.decrypt(beforeLeak, { key: 'tenant-b', context: contextA })));
    out.protects(
      'forgeries with a leaked KEK: whoever holds it could wrap data keys the application would accept; a ' +
        'compromised version is refused for ever (runbook: docs/lifecycle.md).',
    );
    await kw.close();
    kw = undefined;
    if (device) await destroyOnDevice(out, io, loc, device);
  } finally {
    await kw?.close().catch(() => {});
    if (device) wipe(device.secret);
    await rm(tmp, { recursive: true, force: true });
  }
  out.done(tmp, device?.kind);
}

/** Step 1 on a device: the root key made in the token / TPM, the folder recording its URI. */
async function initOnDevice(out: Narrator, io: CliIO, loc: StoreLocation, device: DemoDevice): Promise<Keywarden> {
  const name = device.kind === 'tpm' ? 'a TPM' : 'a PKCS#11 token';
  out.step(`Initialize a key store whose root of trust is in ${name}`);
  const init = await initDeviceStoreDir(loc, { uri: device.uri, secret: device.secret, env: device.env });
  const kw = await openFolderKeywarden(loc, { env: device.env });
  try {
    if (kw.root.sealable?.isSealed()) await kw.root.sealable.unseal(device.secret);
  } catch (err) {
    await kw.close().catch(() => {});
    throw err;
  }
  out.facts([
    ['key store', path.join(loc.display, 'keystore.db')],
    ['root', `${init.rootId} (${init.description.label})`],
    ['wraps with', init.description.wrapAlgorithm],
    ['root URI', `${path.join(loc.display, 'root.uri')} (no PIN or auth value in it)`],
    [
      'KEKs',
      kw.root.kekInRoot ? 'made and kept in the device (kekMode "root", --kek-mode hsm)' : 'wrapped by the root',
    ],
  ]);
  out.protects(
    'a copy of the key store, or of this whole machine: the root key was generated in the device and cannot ' +
      'be exported; without the device and its PIN / auth value, nothing in the store unwraps.',
  );
  io.signal?.throwIfAborted();
  return kw;
}

/** The last step on a device: destroy the root (and its KEK objects), leaving nothing on the device. */
async function destroyOnDevice(out: Narrator, io: CliIO, loc: StoreLocation, device: DemoDevice): Promise<void> {
  out.step('Destroy the root in the device: crypto-shred the whole store');
  const store = openStoreFile(loc, 'write');
  try {
    const backend = await recordedRootBackend(store);
    if (!backend) throw new KeyStateError('demo: the store records no root to destroy');
    await backend.destroyRecorded(store, Uint8Array.from(device.secret), new Date());
  } finally {
    await store.close();
  }
  out.say('The root object (and every KEK object it made) was destroyed in the device; the store keeps a');
  out.say('tombstone, so it reads as destroyed, never as damaged.');
  out.protects('data that must become unreadable everywhere at once, backups included (decommissioning).');
  io.signal?.throwIfAborted();
}

/** Replace the KEK id inside a wrapped data key (docs/format.md §2) by another of the same length. */
function relabelWrappedKey(wrapped: Uint8Array, newId: string): Uint8Array | undefined {
  const idLength = wrapped[5] as number;
  const id = Buffer.from(newId, 'latin1');
  if (id.length !== idLength) return undefined;
  const out = Uint8Array.from(wrapped);
  out.set(id, 6);
  return out;
}

/** Run something that must be refused; return the refusal message. */
async function refusal(fn: () => Promise<unknown>): Promise<string> {
  let result: unknown;
  try {
    result = await fn();
  } catch (err) {
    if (KeywardenError.isInstance(err)) return `${err.name}: ${err.message}`;
    throw err;
  }
  if (result instanceof Uint8Array) wipe(result);
  throw new KeyStateError('demo: an operation that must be refused succeeded');
}

interface StreamResult {
  plaintextBytes: number;
  ciphertextBytes: number;
  outBytes: number;
  frames: number;
  frameSize: number;
  inHash: string;
  outHash: string;
}

/** Encrypt generated data to a file and decrypt it back, hashing both ends. */
async function streamRoundTrip(kw: Keywarden, dir: string, io: CliIO): Promise<StreamResult> {
  const file = path.join(dir, 'stream.kw');
  const context = { tenant: 'a', object: 'exports/2024-05.csv' };
  const inHash = createHash('sha256');
  async function* generate(): AsyncGenerator<Uint8Array> {
    for (let sent = 0; sent < STREAM_BYTES; sent += STREAM_CHUNK) {
      const chunk = randomFillSync(Buffer.alloc(Math.min(STREAM_CHUNK, STREAM_BYTES - sent)));
      inHash.update(chunk);
      yield chunk;
    }
  }
  await pipeline(
    Readable.from(generate()),
    kw.createEncryptStream({ key: 'tenant-a', context }),
    createWriteStream(file, { mode: 0o600 }),
    { signal: io.signal },
  );
  const header = await readHead(file);
  const info = inspectEnvelope(header);
  const outHash = createHash('sha256');
  let outBytes = 0;
  await pipeline(
    createReadStream(file),
    kw.createDecryptStream({ key: 'tenant-a', context }),
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        outHash.update(chunk);
        outBytes += chunk.length;
        chunk.fill(0);
        cb();
      },
    }),
    { signal: io.signal },
  );
  const frameSize = info.frameSize ?? STREAM_CHUNK;
  return {
    plaintextBytes: STREAM_BYTES,
    ciphertextBytes: (await stat(file)).size,
    outBytes,
    frames: Math.max(1, Math.ceil(STREAM_BYTES / frameSize)),
    frameSize,
    inHash: inHash.digest('hex'),
    outHash: outHash.digest('hex'),
  };
}

async function readHead(file: string): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const c of createReadStream(file, { start: 0, end: 1023 })) {
    chunks.push(c as Buffer);
    total += (c as Buffer).length;
  }
  return new Uint8Array(Buffer.concat(chunks, total));
}

function formatContext(ctx: EncryptionContext): string {
  return Object.entries(ctx)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
}

/** Step-numbered narration, indented detail, wrapped "Protects against" lines. */
class Narrator {
  #n = 0;
  constructor(private readonly io: CliIO) {}

  #write(s: string): void {
    this.io.stdout.write(s);
  }

  intro(tmp: string): void {
    this.#write(
      'Keywarden demo: the key lifecycle, step by step, in a temporary key store\n' +
        `(${tmp}, removed at the end). No key material and no unseal key is ever printed.\n`,
    );
  }

  step(title: string): void {
    this.#n += 1;
    this.#write(`\n[${this.#n}] ${title}\n`);
  }

  say(text: string): void {
    this.#write(`    ${text}\n`);
  }

  facts(pairs: readonly (readonly [string, string])[]): void {
    this.block(formatPairs(pairs));
  }

  block(text: string): void {
    for (const line of text.replace(/\n$/, '').split('\n')) this.#write(line ? `    ${line}\n` : '\n');
  }

  refused(message: string): void {
    this.#write(`    refused: ${message}\n`);
  }

  protects(text: string): void {
    this.#write(wrap(`Protects against: ${text}`, 96, '    ', '      '));
  }

  note(text: string): void {
    this.block(text);
  }

  /** Between steps: stop when interrupted (the finally block still removes the directory). */
  check(io: CliIO): void {
    io.signal?.throwIfAborted();
  }

  done(tmp: string, device?: DemoRoot): void {
    this.#write(`\nDone: ${this.#n} steps. Removed ${tmp}.\n`);
    if (device) {
      this.#write(
        `For your own store: keywarden init --root '${device === 'tpm' ? 'tpm:?auth-file=PATH' : 'pkcs11:token=…;object=…?module-path=…&pin-source=file:/PATH'}' (docs/${device}.md).\n`,
      );
      return;
    }
    this.#write(
      'In production, split the unseal key among custodians instead: keywarden init --shares 5 --threshold 3 (docs/split-knowledge.md).\n',
    );
  }
}

function wrap(text: string, width: number, first: string, rest: string): string {
  const words = text.split(/\s+/);
  const lines: string[] = [];
  let line = first;
  for (const w of words) {
    const prefix = lines.length === 0 ? first : rest;
    if (line.length > prefix.length && line.length + 1 + w.length > width) {
      lines.push(line);
      line = rest + w;
    } else {
      line += (line.length > prefix.length ? ' ' : '') + w;
    }
  }
  lines.push(line);
  return `${lines.join('\n')}\n`;
}
