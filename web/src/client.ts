/**
 * `SignalingClient`: one connection to a switchboard server, with Hello,
 * heartbeat replies, reconnect with back-off, ICE batching and SDP
 * compression handled for the application, which sees typed events.
 */
import { DEFAULT_BACKOFF, backoffDelay, type BackoffConfig } from "./backoff.js";
import { DEFAULT_LIMITS, decodeMessage, encodeFrame, type CodecLimits } from "./codec.js";
import { Emitter } from "./emitter.js";
import { DecodeError, SdpError, SignalingError } from "./errors.js";
import { concatFrames } from "./frame.js";
import { DEFAULT_BATCH, IceBatcher, type Batch, type BatchConfig } from "./ice.js";
import {
  Capabilities,
  ErrorCode,
  PROTOCOL_VERSION,
  RoomMode,
  addressKey,
  type Address,
  type IceCandidate,
  type Joined,
  type LoginResult,
  type Member,
  type Message,
  type PeerJoined,
  type PeerLeft,
  type Welcome,
} from "./message.js";
import { deflateIfSmaller, inflate } from "./sdp.js";

/** The part of the browser's `WebSocket` the client uses. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** Time and timers, injectable so tests run without waiting. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

export interface ClientOptions {
  /** Access token sent in Hello when the server runs with `--auth token`. */
  accessToken?: string;
  /** Client software name for the server's logs. */
  userAgent?: string;
  /** Reconnect back-off, or `false` to stay closed after a disconnect. */
  reconnect?: Partial<BackoffConfig> | false;
  /** Join the same rooms and log in with the same name after reconnecting. */
  rejoin?: boolean;
  /** ICE batching window and size. */
  iceBatch?: Partial<BatchConfig>;
  /** Decoder limits for what the server sends. */
  limits?: Partial<CodecLimits>;
  /** Opens a socket; defaults to `new WebSocket(url)`. */
  webSocket?: (url: string) => WebSocketLike;
  clock?: Clock;
  random?: () => number;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** An offer or answer, with the SDP inflated. */
export interface DescriptionEvent {
  from: Address;
  sdp: string;
  room?: string;
}

export interface IceEvent {
  from: Address;
  candidates: IceCandidate[];
  endOfCandidates: boolean;
  room?: string;
}

export interface ClientEvents {
  state: { state: ConnectionState; previous: ConnectionState };
  welcome: Welcome;
  joined: Joined;
  peerJoined: PeerJoined;
  peerLeft: PeerLeft;
  roomFull: { room: string; capacity: number };
  left: { room: string };
  loginResult: LoginResult;
  offer: DescriptionEvent;
  answer: DescriptionEvent;
  ice: IceEvent;
  hangUp: { from: Address };
  /** A server Error, or a frame from the server that could not be decoded. */
  error: SignalingError | DecodeError;
}

export interface JoinOptions {
  mode?: "pair" | "mesh";
  /** Capacity asked for when this join creates a mesh room. */
  capacity?: number;
  displayName?: string;
}

/** Options of a negotiation message. */
export interface SendOptions {
  /** The room the negotiation belongs to, for clients in several rooms. */
  room?: string;
}

/** A candidate as the browser gives it (`RTCIceCandidate` or its init). */
export interface CandidateLike {
  candidate?: string;
  sdpMid?: string | null;
  sdpMLineIndex?: number | null;
  usernameFragment?: string | null;
}

interface Pending {
  resolve(value: never): void;
  reject(error: Error): void;
  kind: "join" | "leave" | "login";
  key: string;
}

interface RoomState {
  join: JoinOptions;
  members: Map<bigint, Member>;
}

interface IceQueue {
  batcher: IceBatcher;
  target: Address;
  room?: string;
  timer?: unknown;
}

const OPEN = 1;
const CAPABILITIES = Capabilities.DEFLATE_SDP | Capabilities.ICE_BATCH;
const utf8 = new TextEncoder();
const text = new TextDecoder();

export class SignalingClient extends Emitter<ClientEvents> {
  private readonly backoff: BackoffConfig | undefined;
  private readonly batch: BatchConfig;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly openSocket: (url: string) => WebSocketLike;
  private limits: CodecLimits;

  private url: string | undefined;
  private socket: WebSocketLike | undefined;
  private seq = 0;
  private attempt = 0;
  /** Set when a connection was lost, so the next Welcome restores rooms and name. */
  private restoring = false;
  private retryTimer: unknown;
  private livenessTimer: unknown;
  private currentState: ConnectionState = "idle";
  private welcomeInfo: Welcome | undefined;
  private connectWaiters: { resolve(w: Welcome): void; reject(e: Error): void }[] = [];

  private readonly rooms = new Map<string, RoomState>();
  private userName: string | undefined;
  private readonly pending = new Map<number, Pending>();
  private readonly ice = new Map<string, IceQueue>();

  constructor(private readonly options: ClientOptions = {}) {
    super();
    this.backoff = options.reconnect === false ? undefined : { ...DEFAULT_BACKOFF, ...options.reconnect };
    this.batch = { ...DEFAULT_BATCH, ...options.iceBatch };
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.openSocket =
      options.webSocket ?? ((url) => new WebSocket(url) as unknown as WebSocketLike);
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** The server's Welcome on the current connection. */
  get welcome(): Welcome | undefined {
    return this.welcomeInfo;
  }

  /** This connection's peer id (changes on reconnect). */
  get peerId(): bigint | undefined {
    return this.welcomeInfo?.peerId;
  }

  /** The other members of `room`, in join order. */
  members(room: string): Member[] {
    return [...(this.rooms.get(room)?.members.values() ?? [])];
  }

  /** Connects (and keeps reconnecting) to `url`; resolves on the first Welcome. */
  connect(url: string): Promise<Welcome> {
    this.url = url;
    const welcome = new Promise<Welcome>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this.currentState === "idle" || this.currentState === "closed") {
      this.attempt = 0;
      this.open("connecting");
    }
    return welcome;
  }

  /** Closes the connection for good; nothing reconnects. */
  close(): void {
    this.clock.clearTimeout(this.retryTimer);
    this.teardown();
    this.rooms.clear();
    this.userName = undefined;
    this.failWaiters(new SignalingError(ErrorCode.UNSPECIFIED, "client closed"));
    this.setState("closed");
  }

  /** Joins a room; resolves with its members, rejects on RoomFull or an Error. */
  join(room: string, options: JoinOptions = {}): Promise<Joined> {
    this.rooms.set(room, { join: options, members: this.rooms.get(room)?.members ?? new Map() });
    return this.request("join", room, this.joinMessage(room, options));
  }

  /** Leaves a room. */
  leave(room: string): Promise<{ room: string }> {
    this.rooms.delete(room);
    return this.request("leave", room, { type: "leave", room });
  }

  /** Logs in with a unique name; rejects with the reason when refused. */
  login(name: string): Promise<LoginResult> {
    this.userName = name;
    return this.request("login", name, { type: "login", name });
  }

  /** Gives the name up. */
  logout(): void {
    this.userName = undefined;
    this.send({ type: "logout" });
  }

  /** Sends an offer; the SDP is compressed when the receiver can inflate it and it saves bytes. */
  sendOffer(target: Address, sdp: string, options: SendOptions = {}): void {
    this.sendDescription("offer", target, sdp, options);
  }

  /** Sends an answer, like `sendOffer`. */
  sendAnswer(target: Address, sdp: string, options: SendOptions = {}): void {
    this.sendDescription("answer", target, sdp, options);
  }

  /**
   * Queues a trickled candidate for `target`; `null` (or an empty candidate
   * line) ends gathering and flushes the batch with the end marker.
   */
  sendIce(target: Address, candidate: CandidateLike | null, options: SendOptions = {}): void {
    const key = addressKey(target);
    let queue = this.ice.get(key);
    if (queue === undefined) {
      queue = { batcher: new IceBatcher(this.batch), target };
      this.ice.set(key, queue);
    }
    if (options.room !== undefined) queue.room = options.room;
    if (candidate === null || !candidate.candidate) {
      this.flushIce(queue, queue.batcher.endOfCandidates());
      return;
    }
    const c: IceCandidate = { candidate: candidate.candidate };
    if (candidate.sdpMid != null) c.sdpMid = candidate.sdpMid;
    if (candidate.sdpMLineIndex != null) c.sdpMLineIndex = candidate.sdpMLineIndex;
    if (candidate.usernameFragment != null) c.usernameFragment = candidate.usernameFragment;
    const full = queue.batcher.push(c, this.clock.now());
    if (full !== undefined) this.flushIce(queue, full);
    else this.armIce(queue);
  }

  /** Ends the call with `target`; pending candidates for it are dropped. */
  hangUp(target: Address): void {
    this.dropIce(target);
    this.send({ type: "hang_up", peer: target });
  }

  // ------------------------------------------------------------ internals

  private setState(state: ConnectionState): void {
    const previous = this.currentState;
    if (previous === state) return;
    this.currentState = state;
    this.emit("state", { state, previous });
  }

  private open(state: "connecting" | "reconnecting"): void {
    this.setState(state);
    const url = this.url!;
    let socket: WebSocketLike;
    try {
      socket = this.openSocket(url);
    } catch (e) {
      this.emit("error", new SignalingError(ErrorCode.UNSPECIFIED, `cannot open ${url}: ${String(e)}`));
      this.lost();
      return;
    }
    this.socket = socket;
    this.seq = 0;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      this.send({
        type: "hello",
        hello: {
          protocolVersion: PROTOCOL_VERSION,
          capabilities: CAPABILITIES,
          accessToken: this.options.accessToken,
          userAgent: this.options.userAgent ?? "switchboard-web/0.1",
        },
      });
    };
    socket.onmessage = (ev) => this.receive(ev.data);
    socket.onclose = () => {
      if (this.socket === socket) this.lost();
    };
    socket.onerror = () => {
      // A close event follows; reconnecting is handled there.
    };
  }

  /** Drops the socket and its per-connection state. */
  private teardown(): void {
    const socket = this.socket;
    this.socket = undefined;
    this.welcomeInfo = undefined;
    this.clock.clearTimeout(this.livenessTimer);
    for (const queue of this.ice.values()) this.clock.clearTimeout(queue.timer);
    this.ice.clear();
    for (const room of this.rooms.values()) room.members.clear();
    for (const p of this.pending.values()) {
      // Requests are sent again after reconnecting when `rejoin` is on; the
      // promises of the old connection end here either way.
      p.reject(new SignalingError(ErrorCode.UNSPECIFIED, "connection lost"));
    }
    this.pending.clear();
    if (socket !== undefined) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(1000);
      } catch {
        // Already closed.
      }
    }
  }

  private lost(): void {
    this.teardown();
    this.restoring = true;
    if (this.options.rejoin === false) {
      this.rooms.clear();
      this.userName = undefined;
    }
    if (this.backoff === undefined || this.attempt >= this.backoff.maxAttempts) {
      this.failWaiters(new SignalingError(ErrorCode.UNSPECIFIED, "connection closed"));
      this.setState("closed");
      return;
    }
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt++;
    this.setState("reconnecting");
    this.retryTimer = this.clock.setTimeout(() => this.open("reconnecting"), delay);
  }

  private failWaiters(error: Error): void {
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(error);
  }

  private send(message: Message): number {
    const socket = this.socket;
    if (socket === undefined || socket.readyState !== OPEN) {
      throw new SignalingError(ErrorCode.UNSPECIFIED, `not connected (state ${this.currentState})`);
    }
    this.seq = nextSeq(this.seq);
    socket.send(encodeFrame(message, this.seq));
    return this.seq;
  }

  private request<T>(kind: Pending["kind"], key: string, message: Message): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const seq = this.send(message);
      this.pending.set(seq, { resolve: resolve as (v: never) => void, reject, kind, key });
    });
  }

  private settle(kind: Pending["kind"], key: string, value: unknown, error?: Error): void {
    for (const [seq, p] of this.pending) {
      if (p.kind === kind && p.key === key) {
        this.pending.delete(seq);
        if (error) p.reject(error);
        else p.resolve(value as never);
        return;
      }
    }
  }

  private joinMessage(room: string, options: JoinOptions): Message {
    return {
      type: "join",
      join: {
        room,
        mode: options.mode === "mesh" ? RoomMode.MESH : RoomMode.PAIR,
        capacity: options.capacity,
        displayName: options.displayName ?? "",
      },
    };
  }

  private capabilitiesOf(target: Address): Capabilities {
    for (const room of this.rooms.values()) {
      for (const m of room.members.values()) {
        if ("peerId" in target ? m.peerId === target.peerId : m.user === target.user) return m.capabilities;
      }
    }
    return Capabilities.NONE;
  }

  private sendDescription(type: "offer" | "answer", target: Address, sdp: string, options: SendOptions): void {
    const bytes = utf8.encode(sdp);
    const compressed =
      this.capabilitiesOf(target) & Capabilities.DEFLATE_SDP ? deflateIfSmaller(bytes) : undefined;
    this.send({
      type,
      description: {
        peer: target,
        sdp: compressed ? { deflated: true, bytes: compressed } : { deflated: false, bytes },
        room: options.room,
      },
    });
  }

  private armIce(queue: IceQueue): void {
    const deadline = queue.batcher.deadline();
    if (deadline === undefined || queue.timer !== undefined) return;
    queue.timer = this.clock.setTimeout(() => {
      queue.timer = undefined;
      const batch = queue.batcher.poll(this.clock.now());
      if (batch !== undefined) this.flushIce(queue, batch);
      else this.armIce(queue);
    }, Math.max(0, deadline - this.clock.now()));
  }

  private flushIce(queue: IceQueue, batch: Batch): void {
    this.clock.clearTimeout(queue.timer);
    queue.timer = undefined;
    if (batch.candidates.length === 0 && !batch.endOfCandidates) return;
    this.send({
      type: "ice",
      ice: { peer: queue.target, candidates: batch.candidates, endOfCandidates: batch.endOfCandidates, room: queue.room },
    });
  }

  private dropIce(target: Address): void {
    const key = addressKey(target);
    const queue = this.ice.get(key);
    if (queue !== undefined) {
      this.clock.clearTimeout(queue.timer);
      this.ice.delete(key);
    }
  }

  private armLiveness(): void {
    this.clock.clearTimeout(this.livenessTimer);
    const timeout = this.welcomeInfo?.heartbeatTimeoutMs ?? 0;
    if (timeout <= 0) return;
    this.livenessTimer = this.clock.setTimeout(() => {
      // The server pings a quiet connection; hearing nothing at all for this
      // long means the connection is dead even if the socket does not say so.
      if (this.socket !== undefined) this.lost();
    }, timeout);
  }

  private receive(data: unknown): void {
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (data instanceof Uint8Array) bytes = data;
    else {
      this.emit("error", new DecodeError({ kind: "protobuf", detail: "text WebSocket message" }));
      return;
    }
    this.armLiveness();
    const replies: Uint8Array[] = [];
    for (const decoded of decodeMessage(bytes, this.limits)) {
      if (!decoded.ok) {
        this.emit("error", decoded.error);
        continue;
      }
      const m = decoded.message;
      if (m.type === "ping") {
        // Answered in the same WebSocket message as any other ping of this batch.
        this.seq = nextSeq(this.seq);
        replies.push(encodeFrame({ type: "pong", nonce: m.nonce }, this.seq));
        continue;
      }
      this.dispatch(m);
    }
    if (replies.length > 0 && this.socket?.readyState === OPEN) this.socket.send(concatFrames(replies));
  }

  private dispatch(m: Message): void {
    switch (m.type) {
      case "welcome": {
        this.welcomeInfo = m.welcome;
        if (m.welcome.limits.maxSdpBytes > 0) this.limits.maxSdp = m.welcome.limits.maxSdpBytes;
        this.attempt = 0;
        this.armLiveness();
        this.setState("open");
        this.emit("welcome", m.welcome);
        const waiters = this.connectWaiters;
        this.connectWaiters = [];
        for (const w of waiters) w.resolve(m.welcome);
        if (this.restoring) this.restore();
        this.restoring = false;
        return;
      }
      case "joined": {
        const room = this.rooms.get(m.joined.room);
        if (room !== undefined) {
          room.members.clear();
          for (const member of m.joined.members) room.members.set(member.peerId, member);
        }
        this.settle("join", m.joined.room, m.joined);
        this.emit("joined", m.joined);
        return;
      }
      case "peer_joined": {
        this.rooms.get(m.peerJoined.room)?.members.set(m.peerJoined.member.peerId, m.peerJoined.member);
        this.emit("peerJoined", m.peerJoined);
        return;
      }
      case "peer_left": {
        this.rooms.get(m.peerLeft.room)?.members.delete(m.peerLeft.peerId);
        this.dropIce({ peerId: m.peerLeft.peerId });
        this.emit("peerLeft", m.peerLeft);
        return;
      }
      case "room_full": {
        this.rooms.delete(m.room);
        this.settle("join", m.room, undefined, new SignalingError(ErrorCode.ROOM_FULL, `room ${m.room} is full`));
        this.emit("roomFull", { room: m.room, capacity: m.capacity });
        return;
      }
      case "left":
        this.rooms.delete(m.room);
        this.settle("leave", m.room, { room: m.room });
        this.emit("left", { room: m.room });
        return;
      case "login_result": {
        const r = m.loginResult;
        if (r.error !== undefined) {
          if (this.userName === r.name) this.userName = undefined;
          this.settle("login", r.name, undefined, new SignalingError(r.error, `login as ${r.name} refused`));
        } else {
          this.settle("login", r.name, r);
        }
        this.emit("loginResult", r);
        return;
      }
      case "offer":
      case "answer": {
        const d = m.description;
        let sdp: string;
        try {
          sdp = text.decode(d.sdp.deflated ? inflate(d.sdp.bytes, this.limits.maxSdp) : d.sdp.bytes);
        } catch (e) {
          if (!(e instanceof SdpError)) throw e;
          this.emit("error", new DecodeError({ kind: "compression", error: e.detail }));
          return;
        }
        const event: DescriptionEvent = { from: d.peer, sdp };
        if (d.room !== undefined) event.room = d.room;
        this.emit(m.type, event);
        return;
      }
      case "ice": {
        const event: IceEvent = {
          from: m.ice.peer,
          candidates: m.ice.candidates,
          endOfCandidates: m.ice.endOfCandidates,
        };
        if (m.ice.room !== undefined) event.room = m.ice.room;
        this.emit("ice", event);
        return;
      }
      case "hang_up":
        this.dropIce(m.peer);
        this.emit("hangUp", { from: m.peer });
        return;
      case "error": {
        const e = m.error;
        const error = new SignalingError(e.code, e.message, e.requestSeq);
        const p = this.pending.get(e.requestSeq);
        if (p !== undefined) {
          this.pending.delete(e.requestSeq);
          if (p.kind === "join") this.rooms.delete(p.key);
          if (p.kind === "login" && this.userName === p.key) this.userName = undefined;
          p.reject(error);
        }
        this.emit("error", error);
        return;
      }
      default:
        // pong, ack and client-to-server types are not for a client.
        return;
    }
  }

  /** After a reconnect, joins the rooms and takes the name of the old connection. */
  private restore(): void {
    const swallow = (): void => {};
    for (const [room, state] of this.rooms) {
      if (this.options.rejoin === false) break;
      const seq = this.send(this.joinMessage(room, state.join));
      this.pending.set(seq, { resolve: swallow, reject: swallow, kind: "join", key: room });
    }
    if (this.userName !== undefined && this.options.rejoin !== false) {
      const seq = this.send({ type: "login", name: this.userName });
      this.pending.set(seq, { resolve: swallow, reject: swallow, kind: "login", key: this.userName });
    }
  }
}

/** The next sequence number: wraps modulo 2^32 and skips 0, which means "none" in Error.requestSeq. */
export function nextSeq(seq: number): number {
  return ((seq + 1) >>> 0) || 1;
}
