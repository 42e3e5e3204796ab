import type { RootBackend } from '@keywarden/core';
import { decodePkcs11Record, PKCS11_ROOT_META_NAME, PKCS11_TOMBSTONE_META_NAME, Pkcs11Root } from './root.js';
import { pkcs11UserPinHooks } from './user-pin.js';

/** The registry entry: opener and root-record hooks (core's root-registry.ts). */
export const pkcs11RootBackend: RootBackend = {
  open: (uri, options) =>
    Pkcs11Root.open(uri, {
      store: options.store,
      ...(options.secret ? { secret: options.secret } : {}),
      ...(options.create ? { create: true } : {}),
      ...(options.env ? { env: options.env } : {}),
    }),
  record: {
    async holdsRecord(store) {
      if ((await store.getMeta(PKCS11_TOMBSTONE_META_NAME)) !== undefined) return true;
      const bytes = await store.getMeta(PKCS11_ROOT_META_NAME);
      if (!bytes) return false;
      try {
        decodePkcs11Record(bytes);
        return true;
      } catch {
        return false;
      }
    },
    async destroyRecorded(store, consent, now) {
      // The record names the token and object, not the module (a deployment detail): open it
      // through KEYWARDEN_PKCS11_MODULE, then destroy as the root would.
      const bytes = await store.getMeta(PKCS11_ROOT_META_NAME);
      if (!bytes) return; // Tombstone only: the objects were destroyed before the record went.
      const record = decodePkcs11Record(bytes);
      const uri = `pkcs11:token=${encodeURIComponent(record.token)};object=${encodeURIComponent(record.object)}`;
      const root = await Pkcs11Root.open(uri, { store });
      try {
        await root.destroy(store, consent, now);
      } finally {
        await root.close();
      }
    },
  },
  secret: pkcs11UserPinHooks,
};
