/**
 * renum-rt browser client (protocol v1): one ES module, no dependencies, no build step.
 *
 *   import { RenumRealtime } from "/static/renum-rt.js";
 *   const rt = new RenumRealtime({ getToken: async () => session.access_token });
 *   rt.subscribe("execution:42", (ev) => render(ev.data));
 *   rt.connect();
 *
 * What it does for the application (docs/client.md has the details):
 * - reconnects on the contract's backoff schedule, as the close-code table says
 *   (renum-rt-codes.js, generated from the server's codes.json);
 * - resubscribes every channel from the last event id it saw, drops repeats by id, and
 *   acknowledges the durable user channel (coalesced acks);
 * - refreshes the token before it expires; pauses while the browser is offline;
 * - shares one WebSocket between the tabs of a browser (Web Locks elect the tab that holds
 *   it, a BroadcastChannel relays to the others).
 *
 * The code is in two parts: `Connection` owns the socket (it runs in one tab, the leader)
 * and serves "tabs"; `RenumRealtime` is what a tab sees. A tab talks to the Connection
 * with small messages, directly when it is the leader, over the BroadcastChannel when it
 * is not, so a single tab and many tabs run the same code.
 */
import CODES from "./renum-rt-codes.js";

const SUBPROTOCOL = "renum.v1";
/** Acks of the user channel are sent at most this often (the server allows 50 frames/s). */
const ACK_INTERVAL_MS = 250;
/** The token is refreshed this long before `exp` (or a tenth of its lifetime if shorter). */
const REFRESH_LEAD_MS = 60000;
/** Refreshes are at least this far apart: a client clock running ahead must not make a loop. */
const REFRESH_GAP_MS = 1000;
/** A subscribe refused for a passing reason is tried again after this, unless told otherwise. */
const RESUBSCRIBE_DELAY_MS = 1000;
/** setTimeout fires at once for longer delays: longer waits are taken in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const CLOSE_UNAUTHORIZED = 4001;
const STOPPED = new Set(["disconnected", "failed", "unauthorized"]);
const EVENTS = ["state", "reconnecting", "event", "notification", "unread_count", "subscribed", "error"];
/** Error codes of a refused subscribe that a later attempt may not get. */
const PASSING = new Set(["unavailable", "rate_limited", "internal"]);
const ID = /^(\d+)-(\d+)$/;

/** The contract's default reconnection policy. */
export const DEFAULT_RECONNECT = Object.freeze({ attempts: 5, baseDelayMs: 500, maxDelayMs: 30000, factor: 2, jitter: true });

/**
 * Milliseconds to wait before reconnection attempt `attempt` (1-based):
 * `min(maxDelayMs, baseDelayMs * factor ** (attempt - 1))`, or, with `jitter`, a uniformly
 * random time between 0 and that ("full jitter": clients cut off together come back apart).
 * @param {number} attempt
 * @param {Partial<typeof DEFAULT_RECONNECT>} [options]
 * @param {() => number} [random] a number in [0, 1); called once, only with `jitter`
 * @returns {number}
 */
export function backoffDelay(attempt, options = DEFAULT_RECONNECT, random = Math.random) {
  if (!Number.isInteger(attempt) || attempt < 1) throw new RangeError(`attempt is 1-based, got ${attempt}`);
  const { baseDelayMs, maxDelayMs, factor, jitter } = { ...DEFAULT_RECONNECT, ...options };
  const cap = Math.min(maxDelayMs, baseDelayMs * factor ** (attempt - 1));
  return jitter ? random() * cap : cap;
}

/**
 * Order of two event ids `"<ms>-<seq>"`, compared as two integers (as strings,
 * "9-0" would sort after "10-0"): -1, 0 or 1; NaN when either is not such an id.
 * @param {string} a
 * @param {string} b
 * @returns {number}
 */
export function compareIds(a, b) {
  const x = ID.exec(a);
  const y = ID.exec(b);
  if (!x || !y) return NaN;
  for (const part of [1, 2]) {
    const difference = BigInt(x[part]) - BigInt(y[part]);
    if (difference !== 0n) return difference < 0n ? -1 : 1;
  }
  return 0;
}

/**
 * What the client does after a close code, from the protocol's code table:
 * "never", "backoff", "soon", "refresh_token" or "on_activity".
 * @param {number | null} code null for a connection lost without a close frame
 * @returns {string}
 */
export function reconnectPolicy(code) {
  return CODES.close_codes[String(code)]?.reconnect ?? CODES.default_reconnect;
}

/** Is `id` after `last` (no `last`: yes)? Ids of another shape are only told apart. */
function isNewer(id, last) {
  if (last == null) return true;
  const order = compareIds(id, last);
  return Number.isNaN(order) ? id !== last : order > 0;
}

/** An error of a request or of the connection; `code` is a protocol error code or a client state. */
export class RenumRealtimeError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{retryAfterMs?: number, field?: string, channel?: string}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = "RenumRealtimeError";
    this.code = code;
    Object.assign(this, details);
  }
}

function errorOf(frame, channel) {
  const details = {};
  if (frame.retry_after_ms != null) details.retryAfterMs = frame.retry_after_ms;
  if (frame.field != null) details.field = frame.field;
  if (channel != null) details.channel = channel;
  return new RenumRealtimeError(String(frame.code ?? "internal"), String(frame.message ?? ""), details);
}

/** The claims of a JWT, read without verifying it (only the server verifies); null if unreadable. */
function jwtClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** `/ws` (or a relative URL) on the page's origin, with ws: or wss: as the page uses http: or https:. */
function resolveUrl(url = "/ws") {
  const resolved = new URL(url, globalThis.location?.href);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

/** Run an application callback; what it throws is logged, never raised into the client. */
function safeCall(fn, value) {
  try {
    fn(value);
  } catch (error) {
    console.error("renum-rt: a handler threw", error);
  }
}

/**
 * The WebSocket, and everything that lives as long as it: reconnection, token refresh,
 * acks, and the subscriptions every tab needs. It runs in one tab and answers the tabs'
 * messages (`handle`) with messages to all of them (`sink`); a tab's own requests and
 * subscription results carry its id.
 */
class Connection {
  constructor(options, sink) {
    this._opts = options;
    this._sink = sink;
    this._state = null; // announced from start() on
    this._ws = null;
    this._token = null;
    this._welcomed = false;
    this._userId = null;
    this._unread = null;
    this._attempt = 0;
    this._refreshing = false; // the last close was 4001: the next token is the one fresh try
    this._idle = false; // stopped by an idle close: the next user activity reconnects
    this._paused = false; // offline: waiting for the "online" event, no attempt counted
    this._gen = 0; // bumped by every open and stop, so a late getToken answer is dropped
    this._timer = null; // the wait before the next attempt
    this._connectTimer = null;
    this._refreshTimer = null;
    this._ackTimer = null;
    this._acked = null; // {channel, id}: the newest id of the user channel to acknowledge
    this._ackSent = null;
    this._refs = 0;
    this._pending = new Map(); // ref on the wire -> what the reply is for
    this._interest = new Map(); // channel -> Set of tab ids that need it
    this._tokens = new Map(); // channel -> the subscription token to present
    this._since = new Map(); // channel -> last id received: where a new socket resumes
    this._resumed = undefined; // the `system_since` of the current socket's auth frame
    this._retries = new Map(); // channel -> timer of a subscribe to try again
    this._onOnline = () => this._online();
    this._onOffline = () => this._offline();
    globalThis.addEventListener?.("online", this._onOnline);
    globalThis.addEventListener?.("offline", this._onOffline);
  }

  /** A message of a tab: `t` says what it is, `tab` who sent it. */
  handle(msg) {
    switch (msg.t) {
      case "hello":
        return this._hello(msg);
      case "sub":
        return this._subscribe(msg.tab, msg.channel, msg.token, msg.since);
      case "unsub":
        return this._unsubscribe(msg.tab, msg.channel);
      case "req":
        return this._request(msg);
      case "cmd":
        return this._command(msg.op);
      case "bye":
        return this._forget(msg.tab, new Set());
    }
  }

  /** Connect afresh: a new count of attempts. */
  start() {
    this._attempt = 0;
    this._refreshing = false;
    this._stop("connecting");
    this._open();
  }

  /** The leading tab goes away: fail the requests in flight, close, and say nothing more. */
  shutdown() {
    this._detach();
    this._sink = () => {};
    this._stop("disconnected");
    globalThis.removeEventListener?.("online", this._onOnline);
    globalThis.removeEventListener?.("offline", this._onOffline);
  }

  // -- tabs ---------------------------------------------------------------------------

  /** A tab joins (or a new leader asks every tab): its channels, from the ids it last saw. */
  _hello({ tab, subs, system }) {
    this._forget(tab, new Set(subs.map(([channel]) => channel)));
    for (const [channel, token, since] of subs) this._subscribe(tab, channel, token, since);
    // `system` is subscribed at connect without history: ask for what this tab missed on it
    if (this._lower("system", system) && this._welcomed) this._sendSubscribe("system", system, {});
    if (this._state !== null) this._announce();
  }

  _subscribe(tab, channel, token, since) {
    let tabs = this._interest.get(channel);
    if (!tabs) this._interest.set(channel, (tabs = new Set()));
    tabs.add(tab);
    if (token) this._tokens.set(channel, token);
    this._lower(channel, since);
    if (this._welcomed) this._sendSubscribe(channel, since, { tab });
  }

  _unsubscribe(tab, channel) {
    const tabs = this._interest.get(channel);
    if (!tabs?.delete(tab) || tabs.size) return;
    this._interest.delete(channel);
    this._tokens.delete(channel);
    clearTimeout(this._retries.get(channel));
    this._retries.delete(channel);
    // `system` and the own user channel belong to the connection, not to a subscription
    if (this._isAuto(channel)) return;
    this._since.delete(channel);
    if (this._welcomed) this._send({ type: "unsubscribe", channel }, { kind: "quiet" });
  }

  /** Drop `tab`'s interest in every channel not in `keep`. */
  _forget(tab, keep) {
    for (const [channel, tabs] of [...this._interest]) if (tabs.has(tab) && !keep.has(channel)) this._unsubscribe(tab, channel);
  }

  _request({ tab, ref, frame }) {
    if (!this._welcomed) return this._sink({ t: "reply", tab, ref, lost: true });
    this._send({ ...frame }, { kind: "req", tab, ref });
  }

  /** connect(), retry(), user activity, or the page becoming visible, in any tab. */
  _command(op) {
    const restart =
      this._idle || // stopped by an idle close: any of these reconnects
      (op === "connect" && (this._state === null || STOPPED.has(this._state))) ||
      (op === "retry" && this._ws === null) ||
      (op === "visible" && this._state === "failed");
    if (restart) this.start();
    else if (op === "connect" || op === "visible") this._hurry();
  }

  _announce() {
    this._sink({ t: "state", state: this._state, unread: this._unread, idle: this._idle });
  }

  _setState(state) {
    if (state === this._state) return;
    this._state = state;
    this._announce();
  }

  _isAuto(channel) {
    return channel === "system" || channel === `user:${this._userId}`;
  }

  /** Resume `channel` from `since` if that is older than where the socket would resume it (say so). */
  _lower(channel, since) {
    const known = this._since.get(channel);
    if (!since || (known !== undefined && !isNewer(known, since))) return false;
    this._since.set(channel, since);
    return true;
  }

  // -- the socket ---------------------------------------------------------------------

  async _open() {
    const gen = ++this._gen;
    let token;
    try {
      token = await this._opts.getToken();
    } catch (error) {
      if (gen !== this._gen) return;
      console.error("renum-rt: getToken failed", error);
      return this._refreshing ? this._stop("unauthorized") : this._retry();
    }
    if (gen !== this._gen) return;
    if (!token) return this._ended(CLOSE_UNAUTHORIZED); // like a refused token: one more try, then unauthorized
    let ws;
    try {
      ws = new WebSocket(this._opts.url, SUBPROTOCOL);
    } catch (error) {
      console.error("renum-rt: cannot open a WebSocket to", this._opts.url, error);
      return this._stop("failed");
    }
    this._ws = ws;
    this._token = token;
    // A socket can hang in CONNECTING for minutes (a dead proxy); give up and count an attempt.
    this._connectTimer = setTimeout(() => this._drop(ws), this._opts.connectTimeoutMs);
    // The token goes in the first frame, not in the URL, so it never lands in access logs.
    // With it, where `system` resumes: the server replays what was missed on it before it
    // goes live, so nothing newer overtakes the missed events (which would then be dropped).
    ws.onopen = () => {
      this._resumed = this._since.get("system");
      ws.send(JSON.stringify(this._resumed ? { type: "auth", token, system_since: this._resumed } : { type: "auth", token }));
    };
    ws.onmessage = (message) => this._message(message.data);
    ws.onclose = (close) => {
      if (this._ws === ws) this._ended(close.code);
    };
  }

  /** Give up on `ws` (timed out, or the browser went offline) as if the network had cut it. */
  _drop(ws) {
    if (this._ws === ws) this._ended(null);
  }

  /** The socket closed with `code` (null: no close frame): the code table says what next. */
  _ended(code) {
    this._detach();
    const policy = reconnectPolicy(code);
    if (policy === "never") return this._stop("disconnected");
    if (policy === "on_activity") return this._stop("disconnected", true);
    if (policy === "refresh_token") {
      if (this._refreshing) return this._stop("unauthorized");
      this._refreshing = true; // getToken() is asked once more by the next attempt
    }
    this._retry();
  }

  /** Let go of the socket and of everything that lived with it; requests in flight fail. */
  _detach() {
    const ws = this._ws;
    this._ws = null;
    this._welcomed = false;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.close(1000);
    }
    for (const timer of [this._connectTimer, this._refreshTimer, this._ackTimer, ...this._retries.values()]) clearTimeout(timer);
    this._connectTimer = this._refreshTimer = this._ackTimer = null;
    this._retries.clear();
    for (const pending of this._pending.values()) {
      if (pending.kind === "req") this._sink({ t: "reply", tab: pending.tab, ref: pending.ref, lost: true });
    }
    this._pending.clear();
  }

  /** Announce and wait for the next attempt, or stop as `failed` when none is left. */
  _retry(delayMs) {
    if (globalThis.navigator?.onLine === false) {
      this._paused = true; // nothing could connect: count no attempt until "online"
      return this._setState("reconnecting");
    }
    const attempt = this._attempt + 1;
    if (attempt > this._opts.reconnect.attempts) return this._stop("failed");
    this._attempt = attempt;
    delayMs ??= backoffDelay(attempt, this._opts.reconnect);
    this._setState("reconnecting");
    this._sink({ t: "reconnecting", attempt, delayMs });
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delayMs);
  }

  /** Make the attempt being waited for now. */
  _hurry() {
    if (this._timer === null) return;
    clearTimeout(this._timer);
    this._timer = null;
    this._open();
  }

  _online() {
    if (this._paused) {
      this._paused = false;
      this._retry(0);
    } else if (this._state === "failed") {
      this.start(); // it most likely failed for want of a network
    }
  }

  _offline() {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
      this._attempt -= 1; // announced but not made: not counted
      this._paused = true;
      this._setState("reconnecting");
    } else if (this._ws) {
      // Without a network the socket is dead, but the browser may take minutes to notice.
      this._drop(this._ws);
    }
  }

  _stop(state, idle = false) {
    this._gen++;
    clearTimeout(this._timer);
    this._timer = null;
    this._paused = false;
    this._detach();
    this._idle = idle;
    if (state === this._state) this._announce(); // `idle` may have changed
    else this._setState(state);
  }

  // -- frames -------------------------------------------------------------------------

  _send(frame, pending) {
    if (pending) {
      frame.ref = String(++this._refs);
      this._pending.set(frame.ref, pending);
    }
    this._ws.send(JSON.stringify(frame));
  }

  _sendSubscribe(channel, since, route) {
    const frame = { type: "subscribe", channel };
    if (since) frame.since = since;
    const token = this._tokens.get(channel);
    if (token) frame.token = token;
    this._send(frame, { kind: "sub", channel, ...route });
  }

  _message(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      frame = null;
    }
    if (typeof frame?.type !== "string") return console.error("renum-rt: ignoring a frame that is not a JSON object with a type", data);
    const pending = typeof frame.ref === "string" ? this._pending.get(frame.ref) : undefined;
    if (pending) {
      this._pending.delete(frame.ref);
      return this._reply(pending, frame);
    }
    switch (frame.type) {
      case "welcome":
        return this._welcome(frame);
      case "event":
        return this._event(frame);
      case "unread_count":
        this._unread = frame.count;
        return this._sink({ t: "frame", frame });
      case "error":
        return this._sink({ t: "frame", frame });
      // other types are ignored, as protocol v1 asks of clients (it may add some)
    }
  }

  _welcome(frame) {
    clearTimeout(this._connectTimer);
    this._welcomed = true;
    this._attempt = 0;
    this._refreshing = false;
    this._idle = false;
    this._userId = frame.user_id;
    this._setState("connected");
    this._scheduleRefresh(this._token);
    this._ackSent = null;
    if (this._acked) this._flushAck(); // the last ack may have been lost with the old socket
    const own = `user:${this._userId}`;
    for (const channel of new Set([...this._interest.keys(), "system"])) {
      const since = this._since.get(channel);
      // the server subscribes these two itself: own from its ack cursor, `system` from the
      // auth frame's `system_since` (asked again only if a tab that joined since saw less)
      if (channel === own || (channel === "system" && since === this._resumed)) continue;
      this._sendSubscribe(channel, since, {});
    }
  }

  _event(frame) {
    const { channel, id } = frame;
    if (isNewer(id, this._since.get(channel))) this._since.set(channel, id);
    this._sink({ t: "frame", frame }); // tabs de-duplicate, since a replay may repeat what some saw
    if (channel === `user:${this._userId}` && isNewer(id, this._acked?.id)) {
      this._acked = { channel, id };
      if (this._ackTimer === null) this._flushAck();
    }
  }

  /** Send the newest ack now, then at most one per ACK_INTERVAL_MS while events keep coming. */
  _flushAck() {
    if (this._acked === this._ackSent) {
      this._ackTimer = null;
      return;
    }
    this._ackSent = this._acked;
    this._send({ type: "ack", channel: this._acked.channel, id: this._acked.id });
    this._ackTimer = setTimeout(() => this._flushAck(), ACK_INTERVAL_MS);
  }

  _reply(pending, frame) {
    const refused = frame.type === "error";
    switch (pending.kind) {
      case "req":
        return this._sink({ t: "reply", tab: pending.tab, ref: pending.ref, frame });
      case "sub":
        return refused ? this._refused(pending, frame) : this._sink({ t: "subscribed", tab: pending.tab, frame });
      case "refresh":
        if (!refused) return this._scheduleRefresh(pending.token);
        console.error("renum-rt: the token refresh was refused", frame);
        return this._sink({ t: "frame", frame }); // at expiry the server closes with 4001; reconnecting gets a token
      // "quiet": an unsubscribe, whose not_found only means the server had dropped it already
    }
  }

  _refused({ channel, tab }, frame) {
    if (PASSING.has(frame.code)) {
      if (!this._retries.has(channel)) {
        const retry = () => {
          this._retries.delete(channel);
          if (this._interest.has(channel)) this._sendSubscribe(channel, this._since.get(channel), {});
        };
        this._retries.set(channel, setTimeout(retry, frame.retry_after_ms ?? RESUBSCRIBE_DELAY_MS));
      }
      return;
    }
    // refused for good (forbidden, a bad or expired subscription token...): stop asking
    if (tab === undefined) for (const each of [...(this._interest.get(channel) ?? [])]) this._unsubscribe(each, channel);
    else this._unsubscribe(tab, channel);
    this._sink({ t: "refused", tab, channel, frame });
  }

  // -- token refresh ------------------------------------------------------------------

  _scheduleRefresh(token) {
    clearTimeout(this._refreshTimer);
    const claims = jwtClaims(token);
    if (typeof claims?.exp !== "number") return;
    const expMs = claims.exp * 1000;
    const lifetimeMs = expMs - (typeof claims.iat === "number" ? claims.iat * 1000 : Date.now());
    this._refreshAt(Math.max(expMs - Math.min(REFRESH_LEAD_MS, lifetimeMs / 10), Date.now() + REFRESH_GAP_MS), expMs);
  }

  _refreshAt(dueMs, expMs) {
    const wait = Math.max(0, dueMs - Date.now());
    this._refreshTimer = setTimeout(
      () => (wait > MAX_TIMER_MS ? this._refreshAt(dueMs, expMs) : this._refresh(expMs)),
      Math.min(wait, MAX_TIMER_MS),
    );
  }

  async _refresh(expMs) {
    const gen = this._gen;
    let token;
    try {
      token = await this._opts.getToken();
    } catch (error) {
      console.error("renum-rt: getToken failed while refreshing; asking again later", error);
    }
    if (gen !== this._gen || !this._welcomed) return;
    if (token && token !== this._token) {
      this._token = token;
      return this._send({ type: "refresh", token }, { kind: "refresh", token });
    }
    // No new token yet (an identity provider may hand out its cached one until close to
    // expiry): ask again halfway to `exp`. After it, the server's 4001 starts a reconnection.
    const left = expMs - Date.now();
    if (left > 0) this._refreshAt(Date.now() + Math.max(REFRESH_GAP_MS, left / 2), expMs);
  }
}

/**
 * A real-time client: events of the channels you subscribe, notifications, unread count.
 *
 * States: `connecting`, `connected`, `reconnecting`, `disconnected`, `failed`,
 * `unauthorized` (event `state`). Events: `state`, `reconnecting` ({attempt, delayMs}),
 * `event` (every event frame), `notification` (the data of `notification.created`),
 * `unread_count` (a number), `subscribed` ({channel, recovered, replayed}), `error`
 * (a RenumRealtimeError: an error the server sent that answers no request).
 */
export class RenumRealtime {
  /**
   * @param {object} options
   * @param {() => string | Promise<string>} options.getToken the user's JWT; asked at each connection and before expiry
   * @param {string} [options.url] the WebSocket endpoint; relative to the page (default `/ws` of its origin)
   * @param {Partial<typeof DEFAULT_RECONNECT>} [options.reconnect] the reconnection policy
   * @param {boolean} [options.shared] one connection for all the tabs of this origin (default true)
   * @param {number} [options.requestTimeoutMs] how long a notifications request waits for its reply (default 10000)
   * @param {number} [options.connectTimeoutMs] how long a connection attempt may take until `welcome` (default 10000)
   */
  constructor(options = {}) {
    if (typeof options.getToken !== "function") {
      throw new TypeError("RenumRealtime needs getToken: a function returning (a promise of) the user's JWT");
    }
    this._opts = {
      url: resolveUrl(options.url),
      getToken: options.getToken,
      reconnect: { ...DEFAULT_RECONNECT, ...options.reconnect },
      shared: (options.shared ?? true) && typeof BroadcastChannel === "function" && Boolean(globalThis.navigator?.locks),
      requestTimeoutMs: options.requestTimeoutMs ?? 10000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10000,
    };
    this._tab = globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random()}`;
    this._listeners = new Map(EVENTS.map((event) => [event, new Set()]));
    this._subs = new Map(); // channel -> {entries: Set<{handler}>, token}
    this._lastIds = new Map(); // channel -> last event id delivered in this tab
    this._requests = new Map(); // ref -> {frame, resolve, reject, timer, sent}
    this._refs = 0;
    this._state = "disconnected";
    this._unread = null;
    this._idle = false;
    this._run = 0; // bumped by connect() and close(): a late answer of an older run is dropped
    this._started = false;
    this._conn = null; // the Connection, when this tab leads (or does not share)
    this._bc = null;
    this._lockAbort = null;
    this._release = null;
    this._onActivity = () => {
      if (this._idle) this._up({ t: "cmd", op: "activity" });
    };
    this._onVisibility = () => {
      if (document.visibilityState === "visible" && (this._idle || this._state === "failed" || this._state === "reconnecting")) {
        this._up({ t: "cmd", op: "visible" });
      }
    };
    // A follower tab that goes away (closed, or kept in the back-forward cache) releases its
    // channels, so the leader does not keep them subscribed for nobody; back, it asks again.
    this._onPageHide = () => {
      if (!this._conn) this._up({ t: "bye" });
    };
    this._onPageShow = (event) => {
      if (event.persisted && !this._conn) this._up(this._hello());
    };
    /** The user's inbox. Each call resolves to the server's reply frame. */
    this.notifications = Object.freeze({
      /** @param {{status?: string, limit?: number, cursor?: string}} [query] */
      list: ({ status, limit, cursor } = {}) => this._request({ type: "notifications.list", status, limit, cursor }),
      /** @param {string[]} ids */
      markRead: (ids) => this._request({ type: "notifications.read", ids }),
      /** @param {string[]} ids */
      dismiss: (ids) => this._request({ type: "notifications.dismiss", ids }),
      /** @param {{before?: string}} [options] notifications newer than `before` stay unread */
      markAllRead: ({ before } = {}) => this._request({ type: "notifications.read_all", before }),
    });
  }

  /** The current state. */
  get state() {
    return this._state;
  }

  /** The user's number of unread notifications (null until the server said). */
  get unreadCount() {
    return this._unread;
  }

  /** Whether this tab holds the WebSocket (always, with `shared: false`). */
  get leader() {
    return this._conn !== null;
  }

  /**
   * Listen to an event; returns a function that stops listening.
   * @param {string} event
   * @param {(value: any) => void} fn
   * @returns {() => void}
   */
  on(event, fn) {
    this._listenersOf(event).add(fn);
    return () => this.off(event, fn);
  }

  /** Stop listening. */
  off(event, fn) {
    this._listenersOf(event).delete(fn);
  }

  /**
   * Receive the events of `channel` (from now on, and across reconnections without gap or
   * repeat). `token` is a subscription token, presented again on every resubscription.
   * @param {string} channel
   * @param {(event: object) => void} handler gets each event frame of the channel
   * @param {{token?: string}} [options]
   * @returns {{unsubscribe(): void}}
   */
  subscribe(channel, handler, { token } = {}) {
    if (typeof channel !== "string" || !channel) throw new TypeError("subscribe needs a channel name");
    if (typeof handler !== "function") throw new TypeError("subscribe needs a handler function");
    let sub = this._subs.get(channel);
    if (!sub || (token && token !== sub.token)) {
      sub ??= { entries: new Set(), token };
      sub.token = token ?? sub.token;
      this._subs.set(channel, sub);
      this._up({ t: "sub", channel, token: sub.token ?? null, since: this._lastIds.get(channel) ?? null });
    }
    const entry = { handler };
    sub.entries.add(entry);
    return { unsubscribe: () => this._unsubscribe(channel, sub, entry) };
  }

  /** Connect (or, when stopped or waiting to reconnect, connect now). */
  connect() {
    if (this._started) return this._up({ t: "cmd", op: "connect" });
    this._started = true;
    const run = ++this._run;
    this._listen("addEventListener");
    this._setState("connecting");
    if (this._opts.shared) this._join(run);
    else this._lead();
  }

  /** Start over after `failed` or `unauthorized`: a new count of attempts, and a new token. */
  retry() {
    if (this._started) this._up({ t: "cmd", op: "retry" });
    else this.connect();
  }

  /** Close this tab's client (state `disconnected`); another tab takes over the shared connection. */
  close() {
    if (!this._started) return;
    this._started = false;
    this._run++;
    this._listen("removeEventListener");
    if (this._conn) {
      this._conn.shutdown();
      this._conn = null;
      this._release?.();
    } else {
      this._up({ t: "bye" });
    }
    this._lockAbort?.abort();
    this._bc?.close();
    this._bc = this._lockAbort = this._release = null;
    this._idle = false;
    this._setState("disconnected");
  }

  // -- one connection per browser -----------------------------------------------------

  /**
   * Share the connection of the tabs of this origin, URL and user: wait for the lock as a
   * follower, and lead when it is granted (at once when no other tab holds it).
   */
  async _join(run) {
    let user;
    try {
      user = jwtClaims(await this._opts.getToken())?.sub;
    } catch (error) {
      console.error("renum-rt: getToken failed", error);
    }
    if (run !== this._run) return;
    // Tabs are grouped by user so that one never receives another's events: without a
    // readable `sub`, this tab keeps a connection of its own.
    if (typeof user !== "string") return this._lead();
    const name = `renum-rt ${this._opts.url} ${user}`;
    this._bc = new BroadcastChannel(name);
    this._bc.onmessage = ({ data }) => {
      if (data.up) this._conn?.handle(data);
      else if (!this._conn) this._fromLeader(data);
    };
    this._lockAbort = new AbortController();
    const lead = () =>
      new Promise((release) => {
        if (run !== this._run) return release();
        this._release = release;
        this._lead();
      });
    navigator.locks.request(name, { signal: this._lockAbort.signal }, lead).catch((error) => {
      if (error.name !== "AbortError") console.error("renum-rt: Web Locks refused; this tab connects alone", error);
      if (run === this._run && !this._conn) this._lead();
    });
    this._up(this._hello()); // to the current leader, if any; it answers with its state
  }

  /** Hold the connection for this tab (and for the others, when shared). */
  _lead() {
    const bc = this._bc;
    this._conn = new Connection(this._opts, (msg) => {
      bc?.postMessage(msg);
      this._fromLeader(msg);
    });
    this._failRequests("connection_lost", true); // a former leader will not answer them
    bc?.postMessage({ t: "leader" });
    this._conn.handle({ ...this._hello(), tab: this._tab });
    this._conn.start();
  }

  _hello() {
    const subs = [...this._subs].map(([channel, sub]) => [channel, sub.token ?? null, this._lastIds.get(channel) ?? null]);
    return { t: "hello", subs, system: this._lastIds.get("system") ?? null };
  }

  /** To the Connection: directly when this tab leads, else to the leader over the channel. */
  _up(msg) {
    msg.tab = this._tab;
    if (this._conn) this._conn.handle(msg);
    else this._bc?.postMessage({ ...msg, up: true });
  }

  /** A message of the Connection (this tab's or the leader's). */
  _fromLeader(msg) {
    switch (msg.t) {
      case "state":
        return this._mirror(msg);
      case "reconnecting":
        return this._emit("reconnecting", { attempt: msg.attempt, delayMs: msg.delayMs });
      case "frame":
        return this._frame(msg.frame);
      case "subscribed":
        if (msg.tab === undefined ? this._wants(msg.frame.channel) : msg.tab === this._tab) {
          const { channel, recovered, replayed } = msg.frame;
          this._emit("subscribed", { channel, recovered, replayed });
        }
        return;
      case "refused":
        return this._refused(msg);
      case "reply":
        if (msg.tab === this._tab) this._settle(msg);
        return;
      case "leader":
        this._failRequests("connection_lost", true);
        return this._up(this._hello());
    }
  }

  _mirror({ state, unread, idle }) {
    if (!this._started) return;
    this._idle = idle;
    if (unread !== null && unread !== this._unread) {
      this._unread = unread;
      this._emit("unread_count", unread);
    }
    this._setState(state);
  }

  // -- events -------------------------------------------------------------------------

  _frame(frame) {
    switch (frame.type) {
      case "event":
        return this._deliver(frame);
      case "unread_count":
        this._unread = frame.count;
        return this._emit("unread_count", frame.count);
      case "error":
        return this._emit("error", errorOf(frame));
    }
  }

  /** Channels this tab receives: its subscriptions, and the two every connection has. */
  _wants(channel) {
    return this._subs.has(channel) || channel === "system" || channel.startsWith("user:");
  }

  _deliver(frame) {
    const { channel, id } = frame;
    if (!this._wants(channel) || !isNewer(id, this._lastIds.get(channel))) return;
    this._lastIds.set(channel, id);
    for (const { handler } of [...(this._subs.get(channel)?.entries ?? [])]) safeCall(handler, frame);
    this._emit("event", frame);
    if (frame.event === "notification.created") this._emit("notification", frame.data);
  }

  _refused({ tab, channel, frame }) {
    if ((tab !== undefined && tab !== this._tab) || !this._subs.delete(channel)) return;
    this._lastIds.delete(channel);
    this._emit("error", errorOf(frame, channel));
  }

  _unsubscribe(channel, sub, entry) {
    if (!sub.entries.delete(entry) || sub.entries.size || this._subs.get(channel) !== sub) return;
    this._subs.delete(channel);
    if (!this._wants(channel)) this._lastIds.delete(channel); // subscribed again later, it starts afresh
    this._up({ t: "unsub", channel });
  }

  _listenersOf(event) {
    const listeners = this._listeners.get(event);
    if (!listeners) throw new TypeError(`unknown event "${event}"; events: ${EVENTS.join(", ")}`);
    return listeners;
  }

  _emit(event, value) {
    for (const fn of [...this._listeners.get(event)]) safeCall(fn, value);
  }

  _setState(state) {
    if (state === this._state) return;
    this._state = state;
    if (state === "connected") this._sendRequests();
    else if (STOPPED.has(state)) this._failRequests(state, false);
    this._emit("state", state);
  }

  /** Add or remove (`method`) the page listeners: user activity, visibility, page hidden or shown. */
  _listen(method) {
    for (const type of ["pointerdown", "keydown"]) globalThis[method]?.(type, this._onActivity, { capture: true, passive: true });
    globalThis.document?.[method]("visibilitychange", this._onVisibility);
    globalThis[method]?.("pagehide", this._onPageHide);
    globalThis[method]?.("pageshow", this._onPageShow);
  }

  // -- requests -----------------------------------------------------------------------

  /** Send `frame` once connected; settle with the reply frame, or a RenumRealtimeError. */
  _request(frame) {
    return new Promise((resolve, reject) => {
      if (!this._started || STOPPED.has(this._state)) {
        return reject(new RenumRealtimeError(this._state, `not connected (${this._state}): call connect()`));
      }
      const ref = String(++this._refs);
      const timeout = this._opts.requestTimeoutMs;
      const timer = setTimeout(() => this._finish(ref, new RenumRealtimeError("timeout", `no reply within ${timeout} ms`)), timeout);
      this._requests.set(ref, { frame, resolve, reject, timer, sent: false });
      if (this._state === "connected") this._sendRequests();
    });
  }

  _sendRequests() {
    for (const [ref, request] of this._requests) {
      if (request.sent) continue;
      request.sent = true;
      this._up({ t: "req", ref, frame: request.frame });
    }
  }

  _settle({ ref, frame, lost }) {
    if (lost) this._finish(ref, new RenumRealtimeError("connection_lost", "the connection closed before the reply"));
    else if (frame.type === "error") this._finish(ref, errorOf(frame));
    else this._finish(ref, null, frame);
  }

  /** Fail the requests (with `onlySent`, those already sent) with `code`. */
  _failRequests(code, onlySent) {
    for (const [ref, request] of [...this._requests]) {
      if (!onlySent || request.sent) this._finish(ref, new RenumRealtimeError(code, `the request was not answered: ${code}`));
    }
  }

  _finish(ref, error, frame) {
    const request = this._requests.get(ref);
    if (!request) return;
    this._requests.delete(ref);
    clearTimeout(request.timer);
    if (error) request.reject(error);
    else request.resolve(frame);
  }
}
