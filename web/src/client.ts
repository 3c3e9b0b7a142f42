/**
 * `SignalingClient`: one connection to a switchboard server, with Hello,
 * heartbeat replies, reconnect with back-off, ICE batching and SDP
 * compression handled for the application, which sees typed events.
 *
 * What the client sends stays within `Welcome.limits`: the frame count, the
 * message size and the rate are kept by the `Outbox`; an SDP, an id or a
 * capacity over its limit is refused here with a `LimitError`. What it
 * receives is decoded with the announced limits; a frame it cannot decode is
 * reported as an `error` event and skipped (PROTOCOL.md section 5), and the
 * connection stays open.
 *
 * Session resume (PROTOCOL.md section 11a, on unless `resume: false`): the
 * client numbers its frames across the connections of one session, keeps
 * those the server has not acknowledged, and acknowledges the server's. A
 * connection that drops is resumed on the next one: nothing is lost, peers
 * see nothing, and the `resumed` event says so; when the server cannot
 * resume it, `startedFresh` says why and rooms and name are restored as
 * without resume.
 */
import { DEFAULT_BACKOFF, backoffDelay, type BackoffConfig } from "./backoff.js";
import { DEFAULT_LIMITS, decodeMessage, encode, type CodecLimits, type Encoded } from "./codec.js";
import { Emitter } from "./emitter.js";
import { DecodeError, LimitError, SdpError, SignalingError } from "./errors.js";
import { HEADER_LEN, MessageType, writeFrame } from "./frame.js";
import { DEFAULT_BATCH, IceBatcher, type Batch, type BatchConfig } from "./ice.js";
import {
  Capabilities,
  ErrorCode,
  MAX_ID_BYTES,
  PROTOCOL_VERSION,
  RoomMode,
  addressKey,
  type Address,
  type IceCandidate,
  type Joined,
  type Limits,
  type LoginResult,
  type Member,
  type Message,
  type PeerJoined,
  type PeerLeft,
  type ResumeRefusal,
  type Welcome,
} from "./message.js";
import { DEFAULT_OUTBOX, Outbox } from "./outbox.js";
import { ResumeSession } from "./resume.js";
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
  /** Join the same rooms and log in with the same name after reconnecting (when the session is not resumed). */
  rejoin?: boolean;
  /**
   * Session resume (`CAPABILITY_RESUME`): a dropped connection's session
   * goes on on the next one, rooms, name, calls and every frame included.
   * On by default; `false` starts a new session on every reconnect.
   */
  resume?: boolean;
  /** ICE batching window and size. */
  iceBatch?: Partial<BatchConfig>;
  /**
   * Decoder limits for what the server sends. Those not set here follow the
   * server's `Welcome.limits` (`maxMessageBytes`, `maxFramesPerMessage`,
   * `maxSdpBytes`), else `DEFAULT_LIMITS`.
   */
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
  /**
   * After a drop, the new connection continues the session: same peer id,
   * rooms, name and calls; frames the server had not processed were sent
   * again (`resent`), and the others were told nothing.
   */
  resumed: { welcome: Welcome; resent: number };
  /**
   * After a drop, the new connection is a new session: a new peer id, the
   * calls of the old one are over, and rooms and name are being joined and
   * taken again (`rejoin`). `refusal` says why the server did not resume
   * the old session; absent when no resume was asked for (resume off or not
   * granted, or frames the server had not acknowledged were dropped).
   */
  startedFresh: { welcome: Welcome; refusal?: ResumeRefusal };
  /**
   * A server Error; a frame from the server that could not be decoded (it was
   * skipped, the connection stays open); or a rejoin after reconnecting that
   * the new server's limits refuse.
   */
  error: SignalingError | DecodeError | LimitError;
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

/**
 * What the client assumes of a server until its Welcome says otherwise, and
 * for every limit the Welcome leaves at 0 ("not announced"): the server's
 * defaults for sizes and ids, no pacing, no capacity check.
 */
const SDK_LIMITS: Readonly<Limits> = Object.freeze({
  ...DEFAULT_OUTBOX,
  maxSdpBytes: DEFAULT_LIMITS.maxSdp,
  maxIdBytes: MAX_ID_BYTES,
  maxRoomCapacity: 0,
  defaultRoomCapacity: 0,
  maxPayloadBytes: DEFAULT_LIMITS.maxPayload,
  maxCandidatesPerBatch: DEFAULT_LIMITS.maxCandidates,
  rateBytesPerSecond: 0,
  rateBytesBurst: 0,
  maxRoomsPerPeer: 0,
});

/** The limits of `limits` that are announced (not 0). */
function announced<T extends object>(limits: T): Partial<T> {
  return Object.fromEntries(Object.entries(limits).filter(([, v]) => v !== 0)) as Partial<T>;
}

export class SignalingClient extends Emitter<ClientEvents> {
  private readonly backoff: BackoffConfig | undefined;
  private readonly batch: BatchConfig;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly openSocket: (url: string) => WebSocketLike;
  /** Decoder limits of this connection. */
  private limits: CodecLimits;
  /** The server's limits on what this connection sends. */
  private serverLimits: Limits = SDK_LIMITS;
  private outbox = new Outbox();
  private outboxTimer: unknown;
  /** Set while a WebSocket message is handled: sends wait for its end, to share messages. */
  private holding = false;

  private url: string | undefined;
  private socket: WebSocketLike | undefined;
  private seq = 0;
  private attempt = 0;
  /** Session resume's bookkeeping while the session may resume (asked for, or granted). */
  private resume: ResumeSession | undefined;
  /** This connection's Hello asked to resume the session. */
  private resuming = false;
  /** Dropped sockets left to the server (closing one would end the session), closed after the next Welcome. */
  private abandoned: WebSocketLike[] = [];
  private ackTimer: unknown;
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
    // A close frame ends the session on the server: nothing will resume it.
    this.resume = undefined;
    this.resuming = false;
    this.closeAbandoned();
    this.teardown();
    this.rooms.clear();
    this.userName = undefined;
    this.failWaiters(new SignalingError(ErrorCode.UNSPECIFIED, "client closed"));
    this.setState("closed");
  }

  /** Joins a room; resolves with its members, rejects on RoomFull or an Error. */
  join(room: string, options: JoinOptions = {}): Promise<Joined> {
    const message = this.joinMessage(room, options);
    try {
      this.checkLimits(message);
    } catch (e) {
      return Promise.reject(e);
    }
    this.rooms.set(room, { join: options, members: this.rooms.get(room)?.members ?? new Map() });
    return this.request("join", room, message);
  }

  /** Leaves a room. */
  leave(room: string): Promise<{ room: string }> {
    this.rooms.delete(room);
    return this.request("leave", room, { type: "leave", room });
  }

  /** Logs in with a unique name; rejects with the reason when refused. */
  login(name: string): Promise<LoginResult> {
    const message: Message = { type: "login", name };
    try {
      this.checkLimits(message);
    } catch (e) {
      return Promise.reject(e);
    }
    this.userName = name;
    return this.request("login", name, message);
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
   * line) ends gathering and flushes the batch with the end marker. Throws a
   * `LimitError`, and queues nothing, when the target, the room or the
   * candidate alone would be over the server's limits.
   */
  sendIce(target: Address, candidate: CandidateLike | null, options: SendOptions = {}): void {
    const c = candidate?.candidate ? iceCandidate(candidate.candidate, candidate) : undefined;
    // Checked alone in a frame now, so that a batch can always be split into frames that fit.
    this.checkLimits({
      type: "ice",
      ice: { peer: target, candidates: c ? [c] : [], endOfCandidates: true, room: options.room },
    });
    const key = addressKey(target);
    let queue = this.ice.get(key);
    if (queue === undefined) {
      queue = { batcher: new IceBatcher(this.batch), target };
      this.ice.set(key, queue);
    }
    if (options.room !== undefined) queue.room = options.room;
    if (c === undefined) {
      this.flushIce(queue, queue.batcher.endOfCandidates());
      return;
    }
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
    this.resuming = this.resume?.resumable === true;
    if (!this.resuming) {
      // A new session: numbering starts over; frames sent before its
      // Welcome are held in case it grants resume.
      this.seq = 0;
      this.resume = this.options.resume === false ? undefined : new ResumeSession();
      this.serverLimits = SDK_LIMITS;
    }
    this.limits = { ...DEFAULT_LIMITS, ...this.options.limits };
    this.outbox = new Outbox();
    socket.binaryType = "arraybuffer";
    socket.onopen = () => this.hello(socket);
    socket.onmessage = (ev) => this.receive(ev.data);
    socket.onclose = () => {
      if (this.socket === socket) this.lost();
    };
    socket.onerror = () => {
      // A close event follows; reconnecting is handled there.
    };
  }

  /**
   * Sends Hello, outside the outbox's pacing (it is the first frame) and
   * outside the replay buffer (it is never sent again). Its number is the
   * session's next one; a resume Hello names the session and the last
   * server frame processed, which acknowledges everything up to it.
   */
  private hello(socket: WebSocketLike): void {
    if (this.socket !== socket) return;
    const resume = this.resuming && this.resume !== undefined ? this.resume : undefined;
    const hello: Message = {
      type: "hello",
      hello: {
        protocolVersion: PROTOCOL_VERSION,
        capabilities: this.options.resume === false ? CAPABILITIES : CAPABILITIES | Capabilities.RESUME,
        accessToken: this.options.accessToken,
        userAgent: this.options.userAgent ?? "switchboard-web/0.1",
      },
    };
    if (resume !== undefined) hello.hello.resume = { token: resume.token!, lastSeq: resume.takeAck() };
    const { type, flags, payload } = encode(hello);
    this.seq = nextSeq(this.seq);
    this.outbox.push(writeFrame(type, flags, this.seq, payload));
    this.flush();
  }

  /** Drops the socket, closing it, and the state of the session it carried. */
  private teardown(): void {
    this.detach(true);
    this.forgetSession();
  }

  /**
   * Drops the socket and its per-connection state. `close`: with a close
   * frame; else the socket is left alone, since a close frame would end a
   * session that is to be resumed (the server closes it when the resume
   * takes over, else it is closed after the next Welcome).
   */
  private detach(close: boolean): void {
    const socket = this.socket;
    this.socket = undefined;
    this.clock.clearTimeout(this.livenessTimer);
    this.clock.clearTimeout(this.outboxTimer);
    this.outboxTimer = undefined;
    this.clock.clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.outbox.clear();
    if (socket !== undefined) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      if (close) {
        try {
          socket.close(1000);
        } catch {
          // Already closed.
        }
      } else if (socket.readyState <= OPEN) {
        this.abandoned.push(socket);
      }
    }
  }

  private closeAbandoned(): void {
    for (const socket of this.abandoned.splice(0)) {
      try {
        socket.close(1000);
      } catch {
        // Already closed.
      }
    }
  }

  /** Forgets what the session had on the server: calls, members, requests, candidates. */
  private forgetSession(): void {
    this.welcomeInfo = undefined;
    for (const queue of this.ice.values()) this.clock.clearTimeout(queue.timer);
    this.ice.clear();
    for (const room of this.rooms.values()) room.members.clear();
    for (const p of this.pending.values()) {
      // Requests are sent again after reconnecting when `rejoin` is on; the
      // promises of the old connection end here either way.
      p.reject(new SignalingError(ErrorCode.UNSPECIFIED, "connection lost"));
    }
    this.pending.clear();
    if (this.options.rejoin === false) {
      this.rooms.clear();
      this.userName = undefined;
    }
  }

  private lost(): void {
    const retry = this.backoff !== undefined && this.attempt < this.backoff.maxAttempts;
    if (retry && this.resume?.resumable === true) {
      // The session waits on the server: keep its state, requests and
      // candidates included, for the resume.
      this.detach(false);
    } else {
      this.resume = undefined;
      this.teardown();
    }
    this.resuming = false;
    this.restoring = true;
    if (!retry) {
      this.failWaiters(new SignalingError(ErrorCode.UNSPECIFIED, "connection closed"));
      this.setState("closed");
      return;
    }
    const delay = backoffDelay(this.attempt, this.backoff!, this.random);
    this.attempt++;
    this.setState("reconnecting");
    this.retryTimer = this.clock.setTimeout(() => this.open("reconnecting"), delay);
  }

  private failWaiters(error: Error): void {
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(error);
  }

  /**
   * Numbers `message` and queues it for the socket; returns its seq. Throws,
   * sending nothing, when not connected or when the message is over one of
   * the server's limits (`LimitError`). While a session that can resume is
   * reconnecting, the frame is only held: it goes out after the resume, or
   * is dropped with the session when the server starts a fresh one.
   */
  private send(message: Message): number {
    const socket = this.socket;
    const holdOnly = this.currentState === "reconnecting" && this.resume?.resumable === true;
    if (!holdOnly && (socket === undefined || socket.readyState !== OPEN)) {
      throw new SignalingError(ErrorCode.UNSPECIFIED, `not connected (state ${this.currentState})`);
    }
    const { type, flags, payload } = this.checkLimits(message);
    if (holdOnly && !this.resume!.fits(payload.length)) {
      throw new SignalingError(ErrorCode.UNSPECIFIED, "not connected (reconnecting), and no room to hold more frames");
    }
    this.seq = nextSeq(this.seq);
    const frame = writeFrame(type, flags, this.seq, payload);
    this.resume?.hold(this.seq, frame, payload.length);
    if (!holdOnly) {
      this.outbox.push(frame);
      if (!this.holding) this.flush();
    }
    return this.seq;
  }

  /**
   * Sends what the outbox lets go now, and comes back when it lets go more.
   * An `Ack` that is owed rides along with whatever is sent.
   */
  private flush(): void {
    const socket = this.socket;
    if (socket === undefined || socket.readyState !== OPEN) return;
    if (this.outbox.size > 0 && this.acking()) this.queueAck();
    const now = this.clock.now();
    for (const bytes of this.outbox.take(now)) socket.send(bytes);
    this.armAck();
    const deadline = this.outbox.deadline();
    if (deadline === undefined || this.outboxTimer !== undefined) return;
    this.outboxTimer = this.clock.setTimeout(() => {
      this.outboxTimer = undefined;
      this.flush();
    }, Math.max(0, deadline - now));
  }

  /** Whether an `Ack` is owed on this connection. */
  private acking(): boolean {
    return this.currentState === "open" && this.resume?.token !== undefined && this.resume.ackOwed;
  }

  private queueAck(): void {
    this.clock.clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    const seq = this.resume!.takeAck();
    this.outbox.ack(writeFrame(MessageType.Ack, 0, 0, encode({ type: "ack", seq }).payload));
  }

  /** Acknowledges within `ack_delay_ms` what nothing sent carried an `Ack` for. */
  private armAck(): void {
    if (this.ackTimer !== undefined || !this.acking()) return;
    this.ackTimer = this.clock.setTimeout(() => {
      this.ackTimer = undefined;
      if (!this.acking()) return;
      this.queueAck();
      this.flush();
    }, this.resume!.ackDelayMs);
  }

  /**
   * Encodes `message`, or throws a `LimitError` when it is over a limit the
   * server announced: an id (room, user name) longer than `maxIdBytes`, a
   * mesh capacity above `maxRoomCapacity`, a frame larger than
   * `maxMessageBytes` (the server would close the connection for it).
   */
  private checkLimits(message: Message): Encoded {
    const l = this.serverLimits;
    const id = (s: string | undefined): void => {
      const size = s === undefined ? 0 : utf8.encode(s).length;
      if (size > l.maxIdBytes) throw new LimitError("maxIdBytes", size, l.maxIdBytes);
    };
    const user = (a: Address): void => id("user" in a ? a.user : undefined);
    switch (message.type) {
      case "join": {
        id(message.join.room);
        const capacity = message.join.capacity ?? 0;
        if (message.join.mode === RoomMode.MESH && l.maxRoomCapacity > 0 && capacity > l.maxRoomCapacity) {
          throw new LimitError("maxRoomCapacity", capacity, l.maxRoomCapacity);
        }
        break;
      }
      case "leave":
        id(message.room);
        break;
      case "login":
        id(message.name);
        break;
      case "hang_up":
        user(message.peer);
        break;
      case "offer":
      case "answer":
        user(message.description.peer);
        id(message.description.room);
        break;
      case "ice":
        user(message.ice.peer);
        id(message.ice.room);
        break;
      default:
        break;
    }
    const encoded = encode(message);
    const size = HEADER_LEN + encoded.payload.length;
    if (size > l.maxMessageBytes) throw new LimitError("maxMessageBytes", size, l.maxMessageBytes);
    return encoded;
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

  /** Throws a `LimitError` for an SDP over the server's `maxSdpBytes` (before compression, as the receiver inflates it). */
  private sendDescription(type: "offer" | "answer", target: Address, sdp: string, options: SendOptions): void {
    const bytes = utf8.encode(sdp);
    const max = this.serverLimits.maxSdpBytes;
    if (bytes.length > max) throw new LimitError("maxSdpBytes", bytes.length, max);
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
      if (batch === undefined) {
        this.armIce(queue);
        return;
      }
      try {
        this.flushIce(queue, batch);
      } catch (e) {
        // Not connected (a drop nothing can resume): the batch is lost with the call.
        if (e instanceof SignalingError || e instanceof LimitError) this.emit("error", e);
        else throw e;
      }
    }, Math.max(0, deadline - this.clock.now()));
  }

  private flushIce(queue: IceQueue, batch: Batch): void {
    this.clock.clearTimeout(queue.timer);
    queue.timer = undefined;
    if (batch.candidates.length === 0 && !batch.endOfCandidates) return;
    this.sendCandidates(queue, batch.candidates, batch.endOfCandidates);
  }

  /**
   * Sends candidates as one IceCandidates frame, or in halves until each
   * frame fits in the server's `maxMessageBytes`; the end marker rides on
   * the last.
   */
  private sendCandidates(queue: IceQueue, candidates: IceCandidate[], endOfCandidates: boolean): void {
    const message: Message = {
      type: "ice",
      ice: { peer: queue.target, candidates, endOfCandidates, room: queue.room },
    };
    if (candidates.length > 1 && frameSize(message) > this.serverLimits.maxMessageBytes) {
      const half = Math.ceil(candidates.length / 2);
      this.sendCandidates(queue, candidates.slice(0, half), false);
      this.sendCandidates(queue, candidates.slice(half), endOfCandidates);
      return;
    }
    this.send(message);
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
    // What is sent while this message is handled (Pongs, rejoins, what the
    // application sends from its listeners) shares WebSocket messages.
    this.holding = true;
    try {
      for (const decoded of decodeMessage(bytes, this.limits)) {
        if (decoded.ok && decoded.message.type === "welcome") {
          this.welcomed(decoded.message.welcome, decoded.seq);
          continue;
        }
        // With resume, a frame processed before a drop is never handled twice.
        const r = this.resume;
        if (decoded.seq !== undefined && r?.token !== undefined && this.currentState === "open") {
          if (!r.received(decoded.seq)) continue;
        }
        if (!decoded.ok) {
          // That frame is skipped; after a frame-layer error, so is the rest
          // of this message. The connection stays open either way.
          this.emit("error", decoded.error);
          continue;
        }
        const m = decoded.message;
        if (m.type === "ping") {
          if (this.socket?.readyState === OPEN) this.send({ type: "pong", nonce: m.nonce });
          continue;
        }
        this.dispatch(m);
      }
    } finally {
      this.holding = false;
    }
    this.flush();
  }

  private dispatch(m: Message): void {
    switch (m.type) {
      case "ack":
        this.resume?.acknowledged(m.seq);
        return;
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

  /**
   * A Welcome (numbered `seq`) opens the connection: it continues the
   * session (a resume: the frames the server did not process are sent
   * again) or begins one (after a drop: a fresh start, rooms and name are
   * restored).
   */
  private welcomed(w: Welcome, seq: number): void {
    const asked = this.resuming;
    this.resuming = false;
    const r = this.resume;
    this.welcomeInfo = w;
    this.adoptLimits(w.limits);
    this.attempt = 0;
    this.armLiveness();
    let resent: number | undefined;
    let fresh = false;
    if (asked && r !== undefined && w.resume?.resumed === true) {
      r.token = w.resume.token;
      r.adopt(w.resume.limits);
      const frames = r.resendAfter(w.resume.lastSeq);
      for (const frame of frames) this.outbox.push(frame);
      resent = frames.length;
    } else {
      fresh = this.restoring;
      // The old session, kept through the drop for a resume, is over: its
      // calls, requests and held frames go with it.
      if (asked) {
        this.forgetSession();
        this.welcomeInfo = w;
      }
      const granted = this.options.resume !== false && (w.capabilities & Capabilities.RESUME) !== 0 && w.resume !== undefined;
      if (granted) {
        // Frames held from before this Welcome are this session's only when
        // it was begun fresh (a refused resume's held frames are the old one's).
        const session = asked || r === undefined ? new ResumeSession() : r;
        session.token = w.resume!.token;
        session.adopt(w.resume!.limits);
        session.received(seq);
        this.resume = session;
      } else {
        this.resume = undefined;
      }
    }
    this.restoring = false;
    this.closeAbandoned();
    this.setState("open");
    this.emit("welcome", w);
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const waiter of waiters) waiter.resolve(w);
    if (resent !== undefined) {
      this.emit("resumed", { welcome: w, resent });
    } else if (fresh) {
      const event: ClientEvents["startedFresh"] = { welcome: w };
      if (asked && w.resume?.refusal !== undefined) event.refusal = w.resume.refusal;
      this.emit("startedFresh", event);
      this.restore();
    }
  }

  /**
   * Adopts the limits of a Welcome, those at 0 ("not announced") staying at
   * the SDK's defaults: for what is sent, and for decoding (where a limit
   * set in `options.limits` wins).
   */
  private adoptLimits(limits: Limits): void {
    this.serverLimits = { ...SDK_LIMITS, ...announced(limits) };
    const decode = announced({
      maxPayload: limits.maxMessageBytes,
      maxFrames: limits.maxFramesPerMessage,
      maxSdp: limits.maxSdpBytes,
    });
    this.limits = { ...DEFAULT_LIMITS, ...decode, ...this.options.limits };
    this.outbox.adopt(this.serverLimits, this.clock.now());
  }

  /**
   * After a reconnect, joins the rooms and takes the name of the old
   * connection; one the new server's limits refuse is forgotten, and the
   * `LimitError` emitted.
   */
  private restore(): void {
    if (this.options.rejoin === false) return;
    const swallow = (): void => {};
    const again = (kind: Pending["kind"], key: string, message: Message): boolean => {
      try {
        const seq = this.send(message);
        this.pending.set(seq, { resolve: swallow, reject: swallow, kind, key });
        return true;
      } catch (e) {
        if (!(e instanceof LimitError)) throw e;
        this.emit("error", e);
        return false;
      }
    };
    for (const [room, state] of this.rooms) {
      if (!again("join", room, this.joinMessage(room, state.join))) this.rooms.delete(room);
    }
    if (this.userName !== undefined && !again("login", this.userName, { type: "login", name: this.userName })) {
      this.userName = undefined;
    }
  }
}

/** Bytes of `message` as one frame. */
function frameSize(message: Message): number {
  return HEADER_LEN + encode(message).payload.length;
}

/** A browser candidate as the wire carries it. */
function iceCandidate(line: string, from: CandidateLike): IceCandidate {
  const c: IceCandidate = { candidate: line };
  if (from.sdpMid != null) c.sdpMid = from.sdpMid;
  if (from.sdpMLineIndex != null) c.sdpMLineIndex = from.sdpMLineIndex;
  if (from.usernameFragment != null) c.usernameFragment = from.usernameFragment;
  return c;
}

/** The next sequence number: wraps modulo 2^32 and skips 0, which means "none" in Error.requestSeq. */
export function nextSeq(seq: number): number {
  return ((seq + 1) >>> 0) || 1;
}
