import { describeKeyStoreConformance } from '@keywarden/testkit';
import { MemoryKeyStore } from '../src/memory-store.js';

describeKeyStoreConformance('MemoryKeyStore', async () => ({ store: new MemoryKeyStore() }));
