import { describeKeyStoreConformance } from '@keywarden/testkit';
import { afterAll, describe, it } from 'vitest';
import { adminClient, dropSchema, freshSchema, openStore, unavailable } from './_pg.js';

if (unavailable) {
  describe('PostgresKeyStore', () => {
    it.skip(`needs PostgreSQL: ${unavailable}`, () => {});
  });
} else {
  // One schema for the file, emptied before each test (creating and dropping a schema per test
  // costs a second of DDL each on a busy machine); the first open runs the migrations.
  const schema = freshSchema();
  afterAll(() => dropSchema(schema));
  describeKeyStoreConformance('PostgresKeyStore', async () => {
    const store = await openStore(schema);
    const admin = await adminClient();
    try {
      await admin.query(`TRUNCATE ${schema}.keys, ${schema}.key_versions, ${schema}.meta`);
    } finally {
      await admin.end();
    }
    // Another pool on the same schema, as another instance would open it (the lease races).
    return { store, connect: () => openStore(schema) };
  });
}
