/**
 * The session vocabulary shared by the TCP and UDP proxies, the registry and the taps (README "Design").
 *
 *   client ⇄ proxy ⇄ server
 *               └─ taps observe (registry counters, mirror, recorder); a tap never slows the session
 */
import type {Address} from '../addr/address.js'
import type {Protocol} from '../config/types.js'

/** What a tap learns about the session it observes, once the upstream side is chosen. */
export interface SessionMeta {
  id: string
  protocol: Protocol
  listener: string
  backend: string
  rule?: string
  /** The real client. */
  client: Address
  /** The real backend server the session was sent to. */
  server: Address
  /** The listener address the client reached (the destination a PROXY header names). */
  local?: Address
  startedAt: number
}

export type CloseCause =
  | 'client-closed'
  | 'server-closed'
  | 'client-reset'
  | 'server-reset'
  | 'client-error'
  | 'server-error'
  | 'connect-timeout'
  | 'connect-refused'
  | 'connect-failed'
  | 'no-server'
  | 'client-timeout'
  | 'server-timeout'
  | 'idle-timeout'
  | 'killed'
  | 'rule-changed'
  | 'shutdown'
  | 'limit'

/**
 * A tap observes one session's bytes. Every method must return quickly and never throw: the proxy
 * calls them inline on its data path. A tap that falls behind drops its own work, never the session's.
 */
export interface Tap {
  /** Bytes (a TCP chunk or a UDP datagram's payload) the client sent towards the server. */
  clientData?(chunk: Buffer): void
  /** Bytes the server sent back towards the client. */
  serverData?(chunk: Buffer): void
  /** TCP: the client half-closed (FIN). */
  clientEnd?(): void
  /** TCP: the server half-closed (FIN). */
  serverEnd?(): void
  /** The session ended; `reset` when it ended abortively (TCP RST rather than FIN). */
  close?(cause: CloseCause, reset: boolean): void
  /** State shown by `divert sessions` (e.g. `{mirror: {state, dropped}}`). */
  describe?(): Record<string, unknown>
}

/** Builds the taps a decision asks for (mirror, record) for one session. */
export type TapFactory = (meta: SessionMeta) => Tap[]
