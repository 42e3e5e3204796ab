import { MemoryKeyStore } from '@keywarden/core';
import { describeKeyStoreConformance } from '../src/index.js';

describeKeyStoreConformance('MemoryKeyStore', async () => ({ store: new MemoryKeyStore() }));
