/**
 * Schema and migrations of the PostgreSQL key store.
 *
 * Rules (as for the SQLite store):
 * - a migration is appended, never edited: a deployed store may already contain it;
 * - every migration runs in the same transaction as the row recording it in `schema_version`,
 *   under a transaction-level advisory lock, so of many processes starting at once exactly one
 *   migrates and the others see the result; a crash leaves the old version or the new one;
 * - a schema whose version is above SCHEMA_VERSION was written by a newer Keywarden and is refused.
 *
 * Times are milliseconds since the epoch (bigint): the contract's dates have millisecond precision
 * and range from before 1970 to year 9999, which `timestamptz` (microseconds) would also hold, but
 * integers round-trip without time-zone or precision questions. `{s}` is replaced by the quoted
 * schema name.
 */

export interface Migration {
  readonly version: number;
  readonly sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    // keys → key_versions is circular (a key's primary version must exist): DEFERRABLE, so
    // createKey inserts both in one transaction. `generation` counts committed changes of the
    // store (the polling fallback of change notifications compares it).
    sql: `
      CREATE TABLE {s}.keys (
        id                     text    NOT NULL PRIMARY KEY,
        name                   text    NOT NULL UNIQUE,
        environment            text,
        service                text,
        tenant                 text,
        purpose                text,
        primary_version        integer NOT NULL CHECK (primary_version >= 1),
        created_at             bigint  NOT NULL,
        updated_at             bigint  NOT NULL,
        revision               bigint  NOT NULL DEFAULT 0 CHECK (revision >= 0),
        min_decryption_version integer NOT NULL DEFAULT 1 CHECK (min_decryption_version >= 1),
        rotation_max_age_ms    bigint  CHECK (rotation_max_age_ms >= 1),
        rotation_max_uses      bigint  CHECK (rotation_max_uses >= 1)
      );
      CREATE TABLE {s}.key_versions (
        key_id           text    NOT NULL REFERENCES {s}.keys (id),
        version          integer NOT NULL CHECK (version >= 1),
        state            text    NOT NULL CHECK (state IN ('enabled', 'disabled', 'compromised', 'destroyed')),
        root_id          text    NOT NULL,
        wrapped_material bytea   NOT NULL,
        created_at       bigint  NOT NULL,
        updated_at       bigint  NOT NULL,
        uses             bigint  NOT NULL DEFAULT 0 CHECK (uses >= 0),
        PRIMARY KEY (key_id, version),
        CHECK (state <> 'destroyed' OR length(wrapped_material) = 0)
      );
      ALTER TABLE {s}.keys ADD FOREIGN KEY (id, primary_version)
        REFERENCES {s}.key_versions (key_id, version) DEFERRABLE INITIALLY DEFERRED;
      CREATE TABLE {s}.meta (
        name  text  NOT NULL PRIMARY KEY,
        value bytea NOT NULL
      );
      CREATE TABLE {s}.store_state (
        one        boolean NOT NULL PRIMARY KEY DEFAULT true CHECK (one),
        store_id   text    NOT NULL,
        generation bigint  NOT NULL DEFAULT 0
      );
      INSERT INTO {s}.store_state (store_id) VALUES ('kws_' || md5(random()::text || clock_timestamp()::text));
    `,
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** Created before the first migration; one row per applied migration. */
export const SCHEMA_VERSION_TABLE = `
  CREATE TABLE IF NOT EXISTS {s}.schema_version (
    version    integer NOT NULL PRIMARY KEY,
    applied_at bigint  NOT NULL
  );
`;

/** COMMENT ON SCHEMA marker: says the schema is a Keywarden key store (like SQLite's application_id). */
export const SCHEMA_MARKER = 'keywarden key store';
