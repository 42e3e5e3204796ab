/**
 * The "tpm:" backend for @keywarden/core's root registry: `openRoot('tpm:…', { store })` opens (or,
 * with `create`, makes) the TPM root the URI names (uri.ts), and the record hooks let generic code
 * destroy a store's TPM root without opening it first.
 */
import { randomFillSync } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import {
  InvalidInputError,
  type KeyStore,
  KeywardenError,
  type OpenRootOptions,
  type RootBackend,
  type RootOfTrust,
  type RootSecretHooks,
  type RootSecretOptions,
  wipe,
} from '@keywarden/core';
import { TPM_ROOT_META_NAME, TPM_TOMBSTONE_META_NAME, TpmRoot } from './root.js';
import { parseTpmUri, type TpmUri } from './uri.js';

async function authFromUri(
  u: TpmUri,
  env: Readonly<Record<string, string | undefined>>,
): Promise<Uint8Array | undefined> {
  if (u.authEnv !== undefined) {
    const text = env[u.authEnv];
    if (!text) throw new InvalidInputError(`tpm: environment variable ${u.authEnv} holds no auth value`);
    return new Uint8Array(Buffer.from(text, 'utf8'));
  }
  if (u.authFile !== undefined) {
    let bytes: Buffer;
    try {
      bytes = await readFile(u.authFile);
    } catch (err) {
      throw new InvalidInputError('tpm: the auth value file named by the root URI cannot be read', { cause: err });
    }
    const end = bytes.length > 0 && bytes[bytes.length - 1] === 0x0a ? bytes.length - 1 : bytes.length;
    const out = new Uint8Array(bytes.subarray(0, end));
    wipe(bytes);
    return out;
  }
  return undefined;
}

/** Open the TPM root `uri` names. */
export async function openTpmRoot(uri: string, options: OpenRootOptions): Promise<RootOfTrust> {
  const u = parseTpmUri(uri);
  const env = options.env ?? process.env;
  const tcti = u.tcti ?? (u.tctiEnv !== undefined ? env[u.tctiEnv] : undefined) ?? env.KEYWARDEN_TPM_TCTI ?? undefined;
  if (u.tctiEnv !== undefined && !env[u.tctiEnv]) {
    throw new InvalidInputError(`tpm: environment variable ${u.tctiEnv} holds no TCTI configuration`);
  }
  if (options.secret && (u.authEnv !== undefined || u.authFile !== undefined)) {
    throw new InvalidInputError('tpm: give the auth value once: options.secret, auth-env or auth-file');
  }
  const fromUri = await authFromUri(u, env);
  const secret = options.secret ?? fromUri;
  try {
    const common = { store: options.store, tcti: tcti || undefined, timeoutMs: u.timeoutMs, lockFile: u.lockFile };
    if (options.create) {
      return await TpmRoot.create({ ...common, alg: u.alg, handle: u.handle, pcrs: u.pcrs, authValue: secret });
    }
    const root = await TpmRoot.load(common);
    const r = root.record;
    if (
      (u.alg && u.alg !== r.alg) ||
      (u.handle !== undefined && u.handle !== r.handle) ||
      (u.pcrs && u.pcrs.join() !== (r.pcrs ?? []).join())
    ) {
      await root.close();
      throw new InvalidInputError("tpm: the root URI's alg/handle/pcrs differ from the root this store records");
    }
    if (secret && root.sealable) {
      try {
        await root.sealable.unseal(secret);
      } catch (err) {
        await root.close();
        throw err;
      }
    }
    return root;
  } finally {
    if (fromUri) wipe(fromUri);
  }
}

/** The TPM root `uri` names, opened sealed from `options.store` (the secret hooks need one). */
async function sealedRoot(uri: string, options: RootSecretOptions): Promise<TpmRoot> {
  if (!options.store) throw new InvalidInputError('tpm: the root auth value hooks need the key store');
  const root = await openTpmRoot(withoutAuthSource(uri), {
    store: options.store,
    ...(options.env ? { env: options.env } : {}),
  });
  return root as TpmRoot;
}

/** The URI without auth-env= / auth-file= (the hooks are given the values). */
function withoutAuthSource(uri: string): string {
  const q = uri.indexOf('?');
  if (q === -1) return uri;
  const kept = uri
    .slice(q + 1)
    .split('&')
    .filter((p) => p !== '' && !/^(auth-env|auth-file)=/i.test(p));
  return kept.length > 0 ? `${uri.slice(0, q)}?${kept.join('&')}` : uri.slice(0, q);
}

/** The root auth value's hooks (core's RootSecretHooks), for split knowledge over it. */
export const tpmAuthValueHooks: RootSecretHooks = {
  async draw() {
    return randomFillSync(new Uint8Array(32));
  },
  async check(uri, secret, options) {
    const root = await sealedRoot(uri, options);
    try {
      await root.sealable?.unseal(secret);
      return true;
    } catch (err) {
      if (KeywardenError.isInstance(err, 'KW_UNSEAL')) return false;
      throw err;
    } finally {
      await root.close();
    }
  },
  async change(uri, current, next, options) {
    const root = await sealedRoot(uri, options);
    try {
      await root.changeAuth(options.store as KeyStore, current, next);
    } finally {
      await root.close();
    }
  },
};

export const tpmRootBackend: RootBackend = {
  open: openTpmRoot,
  secret: tpmAuthValueHooks,
  record: {
    async holdsRecord(store) {
      return (
        (await store.getMeta(TPM_ROOT_META_NAME)) !== undefined ||
        (await store.getMeta(TPM_TOMBSTONE_META_NAME)) !== undefined
      );
    },
    async destroyRecorded(store, consent, now) {
      if (!(await store.getMeta(TPM_ROOT_META_NAME)) && (await store.getMeta(TPM_TOMBSTONE_META_NAME))) return;
      const root = await TpmRoot.load({ store });
      try {
        if (!root.destroyable) {
          throw new InvalidInputError(
            'tpm: this TPM root has no auth value, so Keywarden cannot destroy it (clear the TPM owner hierarchy)',
          );
        }
        await root.destroyable.destroy(store, consent, now);
      } finally {
        await root.close();
      }
    },
  },
};
