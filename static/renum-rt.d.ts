// Type declarations of renum-rt.js, the renum-rt browser client (protocol v1). See docs/client.md.

/** The client's state, reported by the `state` event and the `state` getter. */
export type State = "connecting" | "connected" | "reconnecting" | "disconnected" | "failed" | "unauthorized";

/** What the client does after a close code (codes.json). */
export type ReconnectPolicy = "never" | "backoff" | "soon" | "refresh_token" | "on_activity";

/** The reconnection schedule: attempt n waits min(maxDelayMs, baseDelayMs * factor ** (n - 1)). */
export interface ReconnectOptions {
  /** Attempts after a connection is lost before the state becomes `failed` (default 5). */
  attempts: number;
  /** Delay of the first attempt in ms (default 500). */
  baseDelayMs: number;
  /** Longest delay in ms (default 30000). */
  maxDelayMs: number;
  /** Growth of the delay from one attempt to the next (default 2). */
  factor: number;
  /** Wait a random time between 0 and the delay (default true). */
  jitter: boolean;
}

export interface RenumRealtimeOptions {
  /** The user's JWT (or a promise of it); asked before each connection and before the token expires. */
  getToken: () => string | null | undefined | Promise<string | null | undefined>;
  /** The WebSocket endpoint, absolute or relative to the page; default `/ws` on the page's origin. */
  url?: string;
  reconnect?: Partial<ReconnectOptions>;
  /** One connection for all the tabs of this origin, URL and user (default true). */
  shared?: boolean;
  /** How long a notifications request waits for its reply, in ms (default 10000). */
  requestTimeoutMs?: number;
  /** How long a connection attempt may take until the server's welcome, in ms (default 10000). */
  connectTimeoutMs?: number;
}

/** An event frame as the server sends it. */
export interface EventFrame<D extends object = Record<string, unknown>> {
  type: "event";
  v: number;
  channel: string;
  /** `"<ms>-<seq>"`, ordered within the channel. */
  id: string;
  /** When the server stored it, in ms since the epoch. */
  ts: number;
  /** The event name, e.g. `execution.status`. */
  event: string;
  data: D;
}

export type NotificationLevel = "info" | "success" | "warning" | "error";
export type NotificationStatus = "unread" | "read" | "dismissed";

export interface Notification {
  id: string;
  title: string;
  body: string;
  level: NotificationLevel;
  category: string | null;
  data: Record<string, unknown> | null;
  link: string | null;
  created_at: number;
  status: NotificationStatus;
}

/** The reply to `notifications.list()`. */
export interface NotificationsPage {
  type: "notifications";
  ref: string;
  items: Notification[];
  /** Pass it as `cursor` for the next page; null on the last one. */
  next_cursor: string | null;
  unread: number;
}

/** The reply to `markRead`, `dismiss` and `markAllRead`. */
export interface OkFrame {
  type: "ok";
  ref: string;
}

export interface ReconnectingInfo {
  /** 1-based. */
  attempt: number;
  /** How long the client waits before this attempt. */
  delayMs: number;
}

export interface SubscribedInfo {
  channel: string;
  /** False when the server could not replay everything after the last id seen: reload the state you show. */
  recovered: boolean;
  replayed: number;
}

export interface RenumRealtimeEvents {
  state: State;
  reconnecting: ReconnectingInfo;
  /** Every event of every channel this tab receives (its subscriptions, `system`, its own `user:` channel). */
  event: EventFrame;
  /** The data of each `notification.created` event. */
  notification: Notification;
  /** The user's number of unread notifications. */
  unread_count: number;
  subscribed: SubscribedInfo;
  /** An error the server sent that answers no request, or a subscription refused for good (`channel` set). */
  error: RenumRealtimeError;
}

/** The handle `subscribe` returns. */
export interface Subscription {
  /** Stop calling this handler; the channel is left once no handler of any tab needs it. */
  unsubscribe(): void;
}

export interface NotificationsApi {
  list(query?: { status?: NotificationStatus; limit?: number; cursor?: string }): Promise<NotificationsPage>;
  markRead(ids: string[]): Promise<OkFrame>;
  dismiss(ids: string[]): Promise<OkFrame>;
  /** Notifications newer than `before` (a notification id) stay unread. */
  markAllRead(options?: { before?: string }): Promise<OkFrame>;
}

export declare class RenumRealtime {
  constructor(options: RenumRealtimeOptions);
  readonly state: State;
  /** Null until the server has sent the count. */
  readonly unreadCount: number | null;
  /** Whether this tab holds the WebSocket (always true with `shared: false`). */
  readonly leader: boolean;
  readonly notifications: NotificationsApi;
  /** Returns a function that removes the listener. */
  on<K extends keyof RenumRealtimeEvents>(event: K, listener: (value: RenumRealtimeEvents[K]) => void): () => void;
  off<K extends keyof RenumRealtimeEvents>(event: K, listener: (value: RenumRealtimeEvents[K]) => void): void;
  /** `token`: a subscription token for the channel, presented again on every resubscription. */
  subscribe<D extends object = Record<string, unknown>>(
    channel: string,
    handler: (event: EventFrame<D>) => void,
    options?: { token?: string },
  ): Subscription;
  connect(): void;
  /** Start over after `failed` or `unauthorized`. */
  retry(): void;
  close(): void;
}

/**
 * `code`: a protocol error code (`forbidden`, `rate_limited`...), `timeout`,
 * `connection_lost`, or the state that stopped the client (`disconnected`, `failed`, `unauthorized`).
 */
export declare class RenumRealtimeError extends Error {
  constructor(code: string, message: string, details?: { retryAfterMs?: number; field?: string; channel?: string });
  readonly code: string;
  /** With `rate_limited`: wait at least this long. */
  readonly retryAfterMs?: number;
  /** The offending field of the request, when the server names one. */
  readonly field?: string;
  /** The channel of a refused subscription. */
  readonly channel?: string;
}

export declare const DEFAULT_RECONNECT: Readonly<ReconnectOptions>;

/** Delay before reconnection attempt `attempt` (1-based); `random` is called only with jitter. */
export declare function backoffDelay(attempt: number, options?: Partial<ReconnectOptions>, random?: () => number): number;

/** -1, 0 or 1 comparing two event ids numerically; NaN if either is not `"<ms>-<seq>"`. */
export declare function compareIds(a: string, b: string): number;

/** What the client does after `code` (null: lost without a close frame). */
export declare function reconnectPolicy(code: number | null): ReconnectPolicy;
