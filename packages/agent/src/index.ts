/**
 * @keywarden/agent — the key agent as a library: a server that holds a key store's root (sealed,
 * unsealed by a quorum of shares) and serves data keys over a local unix socket (and to remote
 * clients over mutual TLS), the wire
 * protocol (docs/agent-protocol.md), and the client applications use in place of a Keywarden.
 */
export {
  AgentServer,
  type AgentServerOptions,
  type RootFactory,
  type SecretShareSet,
  DEFAULT_IDLE_TIMEOUT_SECONDS,
  DEFAULT_LINE_TIMEOUT_SECONDS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_SEALED_MESSAGE,
  DEFAULT_UNSEAL_TIMEOUT_SECONDS,
  MAX_PIPELINED,
  NO_ROOT_MESSAGE,
} from './server.js';
export {
  AgentClient,
  type AgentClientOptions,
  AgentOperations,
  type AgentEndpoint,
  type KeyService,
  type Outcome,
  type RequestFate,
  isAgentUnavailable,
} from './client.js';
export {
  AgentFleetClient,
  type AgentFleetOptions,
  endpointDisplay,
  type FleetStats,
  parseAgentEndpoint,
  RETRIED_WHEN_LOST,
  type SealReport,
  sealAgents,
} from './fleet.js';
export type { SocketLocation } from './_socket.js';
export {
  type AgentCheckpointOptions,
  type AgentCheckpointWriter,
  CHECKPOINT_FAILED_OP,
  CHECKPOINT_PRINCIPAL,
} from './_checkpoint.js';
export {
  type AgentClientTlsOptions,
  type AgentListenOptions,
  type AgentTcpEndpoint,
  type AgentTlsOptions,
  PRINCIPAL_URI_PREFIX,
} from './_tls.js';
export {
  CREDENTIALS_META_NAME,
  CREDENTIAL_PREFIX,
  admitAgentPrincipal,
  checkAgentCredential,
  credentialPrincipal,
  issueAgentCredential,
  readAgentCredentials,
  revokeAgentCredential,
} from './credentials.js';
export {
  type AgentOp,
  type AgentRequest,
  type AgentResponse,
  type AgentStatus,
  type HelloResult,
  type UnsealResult,
  type WireError,
  AGENT_OPS,
  INTERNAL_ERROR,
  MAX_REQUEST_BYTES,
  MAX_RESPONSE_BYTES,
  PROTOCOL_ERROR,
  PROTOCOL_VERSION,
  PROTOCOL_VERSIONS,
  keyInfoToWire,
} from './protocol.js';
/** The agent's errors live in core with every other code (re-exported for convenience). */
export { AgentError, AgentProtocolError, AgentUnavailableError, AgentVersionError } from '@keywarden/core';
