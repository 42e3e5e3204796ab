export {
  AuditKey,
  AUDIT_KEY_META_NAME,
  AUDIT_KEY_NEXT_META_NAME,
  finishAuditKeyMove,
  loadAuditKey,
  rewrapAuditKey,
  stageAuditKeyMove,
} from './audit-key.js';
export {
  type AuditEvent,
  type AuditRecord,
  type AuditOutcome,
  type AuditAnchor,
  type AuditVerifyResult,
  type VerifyOptions,
  AUDIT_RECORD_VERSION,
  sealRecord,
  contextDigest,
  verifyAuditLog,
} from './record.js';
export {
  type AuditSink,
  type AuditBatch,
  type SealedAuditBytes,
  StoreAuditSink,
  JsonlFileAuditSink,
  CallbackAuditSink,
  AUDIT_HEAD_META_NAME,
  AUDIT_SEGMENT_PREFIX,
  readStoreAuditHead,
  readStoreAuditLines,
} from './sinks.js';
export { AuditLog, type AuditLogOptions, type AuditDurability } from './audit-log.js';
export {
  AnomalyDetector,
  type Anomaly,
  type AnomalyKind,
  type AnomalyOptions,
  type ObservedRecord,
  detectAnomalies,
} from './anomaly.js';
