import { randomBytes } from 'node:crypto';
import { MemoryKeyStore, SoftwareRoot, openRoot } from '@keywarden/core';
import { describeRootConformance, inspectSoftwareKeyPair } from '../src/index.js';
import { MapKekRoot } from './_map-kek-root.js';

describeRootConformance('SoftwareRoot', async () => {
  const store = new MemoryKeyStore();
  const secret = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey: secret });
  return {
    root,
    store,
    secret,
    reopen: () => SoftwareRoot.load(store),
    inspectPrivateKey: (h: Uint8Array) => inspectSoftwareKeyPair(root, store, secret, h),
  };
});

describeRootConformance('SoftwareRoot opened through the registry (software:)', async () => {
  const store = new MemoryKeyStore();
  const secret = new Uint8Array(randomBytes(32));
  await (await openRoot('software:', { store, secret, create: true })).close();
  const root = await openRoot('software:', { store, secret });
  return {
    root,
    store,
    secret,
    reopen: () => openRoot('software:', { store }),
    inspectPrivateKey: (h: Uint8Array) => inspectSoftwareKeyPair(root, store, secret, h),
  };
});

describeRootConformance('MapKekRoot (in-test token: KEKs held in the root)', async () => {
  const store = new MemoryKeyStore();
  const secret = new TextEncoder().encode('4821-pin-of-the-test-token');
  const { root, token } = await MapKekRoot.create(store, secret);
  return { root, store, secret, reopen: async () => MapKekRoot.open(token) };
});
