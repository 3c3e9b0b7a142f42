/**
 * The switchboard demo page: 1:1 and mesh video rooms, calls by name, chat
 * and file transfer over an RTCDataChannel, all signaled through the SDK.
 *
 * Negotiation rules, so two ends never offer at once (glare):
 * - rooms: the newcomer, who gets `joined` with the member list, offers to
 *   every member; members wait for its offer;
 * - named calls: the caller offers; the callee accepts (answers) or declines
 *   (HangUp).
 *
 * `window.__switchboard` exposes the state the end-to-end test reads.
 */
import {
  ErrorCode,
  LeaveReason,
  SignalingClient,
  SignalingError,
  addressKey,
  type Address,
  type ConnectionState,
  type IceServer,
  type Member,
} from "../src/index.js";

// ------------------------------------------------------------------ page

function el<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`#${id} is missing from the page`);
  return found as T;
}

const ui = {
  serverState: el<HTMLParagraphElement>("server-state"),
  error: el<HTMLParagraphElement>("error"),
  displayName: el<HTMLInputElement>("display-name"),
  room: el<HTMLInputElement>("room"),
  mode: el<HTMLSelectElement>("mode"),
  capacity: el<HTMLInputElement>("capacity"),
  join: el<HTMLButtonElement>("join"),
  loginName: el<HTMLInputElement>("login-name"),
  login: el<HTMLButtonElement>("login"),
  callee: el<HTMLInputElement>("callee"),
  call: el<HTMLButtonElement>("call"),
  loginState: el<HTMLParagraphElement>("login-state"),
  mute: el<HTMLButtonElement>("mute"),
  camera: el<HTMLButtonElement>("camera"),
  hangup: el<HTMLButtonElement>("hangup"),
  incoming: el<HTMLDivElement>("incoming"),
  incomingFrom: el<HTMLElement>("incoming-from"),
  accept: el<HTMLButtonElement>("accept"),
  decline: el<HTMLButtonElement>("decline"),
  localVideo: el<HTMLVideoElement>("local-video"),
  tiles: el<HTMLDivElement>("tiles"),
  chatLog: el<HTMLOListElement>("chat-log"),
  chatForm: el<HTMLFormElement>("chat-form"),
  chatInput: el<HTMLInputElement>("chat-input"),
  fileInput: el<HTMLInputElement>("file-input"),
  fileSend: el<HTMLButtonElement>("file-send"),
  fileProgress: el<HTMLProgressElement>("file-progress"),
  fileStatus: el<HTMLSpanElement>("file-status"),
  files: el<HTMLUListElement>("files"),
  log: el<HTMLOListElement>("log"),
};

/** What the end-to-end test reads; plain data, updated as things happen. */
const exposed = {
  server: "idle" as ConnectionState,
  peerId: "",
  room: "",
  user: "",
  log: [] as string[],
  errors: [] as string[],
  chat: [] as { from: string; text: string }[],
  files: [] as { from: string; name: string; size: number; sha256: string; intact: boolean }[],
  incoming: "" as string,
  /** One entry per reconnect: "resumed" (the calls went on) or "fresh" (a new session, rejoining). */
  reconnects: [] as ("resumed" | "fresh")[],
  /** Whether the local microphone and camera tracks are sending (mute and camera toggles). */
  local(): { audio: boolean[]; video: boolean[] } {
    return {
      audio: localStream?.getAudioTracks().map((t) => t.enabled) ?? [],
      video: localStream?.getVideoTracks().map((t) => t.enabled) ?? [],
    };
  },
  peers(): { key: string; label: string; pc: RTCPeerConnectionState; ice: RTCIceConnectionState; channel: string }[] {
    return [...peers.values()].map((p) => ({
      key: p.key,
      label: p.label,
      pc: p.pc.connectionState,
      ice: p.pc.iceConnectionState,
      channel: p.channel.readyState,
    }));
  },
  /** Frames decoded so far on each peer's incoming video. */
  async framesDecoded(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const p of peers.values()) {
      let frames = 0;
      const stats = await p.pc.getStats();
      stats.forEach((s: { type: string; kind?: string; framesDecoded?: number }) => {
        if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded ?? 0;
      });
      out[p.label] = frames;
    }
    return out;
  },
};
(window as unknown as { __switchboard: typeof exposed }).__switchboard = exposed;

function log(line: string): void {
  exposed.log.push(line);
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${line}`;
  ui.log.append(li);
  li.scrollIntoView({ block: "nearest" });
}

function showError(line: string): void {
  // A refused request is reported by the SDK's error event and by its promise.
  if (!ui.error.hidden && ui.error.textContent === line) return;
  exposed.errors.push(line);
  ui.error.textContent = line;
  ui.error.hidden = false;
  log(line);
}

function clearError(): void {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

const ERROR_WORDS: Partial<Record<ErrorCode, string>> = {
  [ErrorCode.ROOM_FULL]: "That room is full.",
  [ErrorCode.MODE_MISMATCH]: "That room exists with the other kind (1:1 or mesh).",
  [ErrorCode.NAME_TAKEN]: "Someone else is logged in with that name.",
  [ErrorCode.ALREADY_LOGGED_IN]: "You are already logged in.",
  [ErrorCode.UNKNOWN_PEER]: "Nobody by that name is online.",
  [ErrorCode.INVALID_ARGUMENT]: "The server refused a value (check the room or name).",
  [ErrorCode.RATE_LIMITED]: "Too many messages; slow down.",
  [ErrorCode.UNAUTHENTICATED]: "The server wants an access token.",
  [ErrorCode.TOO_MANY_ROOMS]: "You are in too many rooms.",
  [ErrorCode.SERVER_SHUTTING_DOWN]: "The server is shutting down.",
};

function words(e: unknown): string {
  if (e instanceof SignalingError) return ERROR_WORDS[e.code] ?? `The server said: ${e.message}`;
  if (e instanceof DOMException && e.name === "NotAllowedError") {
    return "The browser did not allow the camera and microphone.";
  }
  if (e instanceof DOMException && e.name === "NotFoundError") return "No camera or microphone was found.";
  return e instanceof Error ? e.message : String(e);
}

const SERVER_WORDS: Record<ConnectionState, string> = {
  idle: "Not connected.",
  connecting: "Connecting to the server…",
  open: "Connected to the server.",
  reconnecting: "Lost the server; trying again…",
  closed: "Disconnected from the server.",
};

const PEER_WORDS: Record<RTCPeerConnectionState, string> = {
  new: "waiting",
  connecting: "connecting…",
  connected: "connected",
  disconnected: "connection interrupted",
  failed: "could not connect (a TURN server may be needed)",
  closed: "ended",
};

// ------------------------------------------------------------------ media

let localStream: MediaStream | undefined;
let mediaTried = false;

/** Camera and microphone, asked for once; the page still works without them. */
async function media(): Promise<MediaStream | undefined> {
  if (mediaTried) return localStream;
  mediaTried = true;
  try {
    localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
    ui.localVideo.srcObject = localStream;
  } catch (e) {
    showError(`${words(e)} You can still receive video, chat and send files.`);
  }
  return localStream;
}

function showCapacity(): void {
  // Only a mesh room has a capacity to choose; a 1:1 room always holds two.
  (ui.capacity.parentElement ?? ui.capacity).hidden = ui.mode.value !== "mesh";
}
ui.mode.onchange = showCapacity;

ui.mute.onclick = () => {
  const on = ui.mute.getAttribute("aria-pressed") !== "true";
  for (const t of localStream?.getAudioTracks() ?? []) t.enabled = !on;
  ui.mute.setAttribute("aria-pressed", String(on));
  ui.mute.textContent = on ? "Unmute" : "Mute";
};

ui.camera.onclick = () => {
  const off = ui.camera.getAttribute("aria-pressed") !== "true";
  for (const t of localStream?.getVideoTracks() ?? []) t.enabled = !off;
  ui.camera.setAttribute("aria-pressed", String(off));
  ui.camera.textContent = off ? "Camera on" : "Camera off";
};

// ------------------------------------------------------------------ peers

const CHUNK = 16 * 1024;

interface Incoming {
  name: string;
  size: number;
  sha256: string;
  parts: ArrayBuffer[];
  received: number;
}

/** One RTCPeerConnection to a room member or a named caller. */
class Peer {
  readonly key: string;
  readonly pc: RTCPeerConnection;
  /** Negotiated on both ends with the same id, so neither waits for the other. */
  readonly channel: RTCDataChannel;
  readonly tile: HTMLElement;
  private readonly video: HTMLVideoElement;
  private readonly stateText: HTMLElement;
  private remoteSet = false;
  private readonly pendingIce: RTCIceCandidateInit[] = [];
  private incoming: Incoming | undefined;
  /** The call was answered (named calls), so a HangUp is a hang-up, not a decline. */
  answered = false;

  constructor(
    readonly address: Address,
    readonly label: string,
    readonly room: string | undefined,
  ) {
    this.key = addressKey(address);
    this.pc = new RTCPeerConnection({ iceServers: iceServers() });
    this.channel = this.pc.createDataChannel("chat", { negotiated: true, id: 0 });
    this.channel.binaryType = "arraybuffer";
    this.channel.bufferedAmountLowThreshold = 4 * CHUNK;
    this.channel.onopen = () => log(`Chat with ${label} is open.`);
    this.channel.onmessage = (ev) => this.receive(ev.data);

    this.tile = document.createElement("figure");
    this.tile.className = "tile";
    this.tile.dataset.peer = this.key;
    this.tile.dataset.testid = "remote-tile";
    this.video = document.createElement("video");
    this.video.autoplay = true;
    this.video.playsInline = true;
    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.textContent = label;
    this.stateText = document.createElement("span");
    this.stateText.className = "pc-state";
    caption.append(name, this.stateText);
    this.tile.append(this.video, caption);
    ui.tiles.append(this.tile);
    this.showState();

    const stream = localStream;
    if (stream !== undefined) for (const t of stream.getTracks()) this.pc.addTrack(t, stream);
    else {
      this.pc.addTransceiver("audio", { direction: "recvonly" });
      this.pc.addTransceiver("video", { direction: "recvonly" });
    }
    this.pc.ontrack = (ev) => {
      const remote = ev.streams[0] ?? new MediaStream([ev.track]);
      if (this.video.srcObject !== remote) this.video.srcObject = remote;
    };
    this.pc.onicecandidate = (ev) => {
      const options = room === undefined ? {} : { room };
      try {
        client.sendIce(address, ev.candidate, options);
      } catch (e) {
        showError(words(e));
      }
    };
    this.pc.onconnectionstatechange = () => {
      this.showState();
      log(`Connection with ${label}: ${PEER_WORDS[this.pc.connectionState]}`);
    };
  }

  private showState(): void {
    this.tile.dataset.state = this.pc.connectionState;
    this.stateText.textContent = PEER_WORDS[this.pc.connectionState];
  }

  async offer(): Promise<void> {
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    client.sendOffer(this.address, offer.sdp ?? "", this.room === undefined ? {} : { room: this.room });
  }

  async answer(sdp: string): Promise<void> {
    await this.remote({ type: "offer", sdp });
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    client.sendAnswer(this.address, answer.sdp ?? "", this.room === undefined ? {} : { room: this.room });
  }

  async remote(description: RTCSessionDescriptionInit): Promise<void> {
    await this.pc.setRemoteDescription(description);
    this.remoteSet = true;
    for (const c of this.pendingIce.splice(0)) await this.addIce(c);
  }

  async addIce(candidate: RTCIceCandidateInit): Promise<void> {
    if (!this.remoteSet) {
      this.pendingIce.push(candidate);
      return;
    }
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (e) {
      log(`Ignored a network address from ${this.label}: ${words(e)}`);
    }
  }

  close(): void {
    this.channel.close();
    this.pc.close();
    this.tile.remove();
  }

  send(data: string | ArrayBuffer): void {
    if (this.channel.readyState !== "open") return;
    if (typeof data === "string") this.channel.send(data);
    else this.channel.send(data);
  }

  /** Waits until the channel's send buffer has room, so big files do not overflow it. */
  async drain(): Promise<void> {
    if (this.channel.bufferedAmount <= this.channel.bufferedAmountLowThreshold) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        this.channel.removeEventListener("bufferedamountlow", done);
        this.channel.removeEventListener("close", done);
        resolve();
      };
      this.channel.addEventListener("bufferedamountlow", done);
      this.channel.addEventListener("close", done);
    });
  }

  private receive(data: unknown): void {
    if (typeof data !== "string") {
      const file = this.incoming;
      if (file === undefined || !(data instanceof ArrayBuffer)) return;
      file.parts.push(data);
      file.received += data.byteLength;
      ui.fileProgress.max = file.size || 1;
      ui.fileProgress.value = file.received;
      ui.fileStatus.textContent = `Receiving ${file.name}: ${percent(file.received, file.size)}`;
      if (file.received >= file.size) {
        this.incoming = undefined;
        void finishFile(this.label, file);
      }
      return;
    }
    let msg: { type?: string; text?: string; name?: string; size?: number; sha256?: string };
    try {
      msg = JSON.parse(data) as typeof msg;
    } catch {
      return;
    }
    if (msg.type === "chat" && typeof msg.text === "string") {
      addChat(this.label, msg.text);
    } else if (msg.type === "file" && typeof msg.name === "string" && typeof msg.size === "number") {
      const file: Incoming = { name: msg.name, size: msg.size, sha256: msg.sha256 ?? "", parts: [], received: 0 };
      log(`${this.label} is sending ${msg.name} (${msg.size} bytes).`);
      if (msg.size === 0) void finishFile(this.label, file);
      else this.incoming = file;
    }
  }
}

const peers = new Map<string, Peer>();
let welcomeIce: IceServer[] = [];

function iceServers(): RTCIceServer[] {
  return welcomeIce
    .map((s) => ({ ...s, urls: s.urls.filter((u) => u.length > 0) }))
    .filter((s) => s.urls.length > 0)
    .map((s) => (s.username ? { urls: s.urls, username: s.username, credential: s.credential } : { urls: s.urls }));
}

function memberLabel(m: Member): string {
  return m.displayName || m.user || `peer ${m.peerId.toString(16)}`;
}

function addPeer(address: Address, label: string, room: string | undefined): Peer {
  const key = addressKey(address);
  peers.get(key)?.close();
  const peer = new Peer(address, label, room);
  peers.set(key, peer);
  updateButtons();
  return peer;
}

function dropPeer(key: string): void {
  const peer = peers.get(key);
  if (peer === undefined) return;
  peer.close();
  peers.delete(key);
  updateButtons();
}

function updateButtons(): void {
  ui.hangup.disabled = peers.size === 0 && exposed.room === "";
}

// ------------------------------------------------------------------ chat and files

function addChat(from: string, text: string): void {
  exposed.chat.push({ from, text });
  const li = document.createElement("li");
  const who = document.createElement("strong");
  who.textContent = `${from}: `;
  li.append(who, text);
  ui.chatLog.append(li);
  li.scrollIntoView({ block: "nearest" });
}

function percent(n: number, of: number): string {
  return of === 0 ? "100%" : `${Math.floor((100 * n) / of)}%`;
}

async function sha256(data: ArrayBuffer | Blob): Promise<string> {
  const bytes = data instanceof Blob ? await data.arrayBuffer() : data;
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function finishFile(from: string, file: Incoming): Promise<void> {
  const blob = new Blob(file.parts);
  const hash = await sha256(blob);
  const intact = hash === file.sha256 && blob.size === file.size;
  exposed.files.push({ from, name: file.name, size: blob.size, sha256: hash, intact });
  const li = document.createElement("li");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = file.name;
  link.textContent = file.name;
  li.dataset.sha256 = hash;
  li.append(link, ` from ${from}, ${blob.size} bytes, ${intact ? "intact" : "DAMAGED (checksum differs)"}`);
  ui.files.append(li);
  ui.fileStatus.textContent = intact ? `Received ${file.name}.` : `${file.name} arrived damaged.`;
  log(`Received ${file.name} from ${from}${intact ? "" : ", but it is damaged"}.`);
}

ui.chatForm.onsubmit = (ev) => {
  ev.preventDefault();
  const text = ui.chatInput.value.trim();
  if (text === "") return;
  const open = [...peers.values()].filter((p) => p.channel.readyState === "open");
  if (open.length === 0) {
    showError("Nobody to chat with yet: join a room or call someone first.");
    return;
  }
  for (const p of open) p.send(JSON.stringify({ type: "chat", text }));
  addChat("You", text);
  ui.chatInput.value = "";
};

ui.fileSend.onclick = async () => {
  const file = ui.fileInput.files?.[0];
  if (file === undefined) {
    showError("Choose a file first.");
    return;
  }
  const open = [...peers.values()].filter((p) => p.channel.readyState === "open");
  if (open.length === 0) {
    showError("Nobody to send to yet: join a room or call someone first.");
    return;
  }
  clearError();
  ui.fileSend.disabled = true;
  try {
    const hash = await sha256(file);
    const header = JSON.stringify({ type: "file", name: file.name, size: file.size, sha256: hash });
    for (const p of open) p.send(header);
    ui.fileProgress.max = file.size || 1;
    for (let offset = 0; offset < file.size; offset += CHUNK) {
      const chunk = await file.slice(offset, offset + CHUNK).arrayBuffer();
      for (const p of open) {
        await p.drain();
        p.send(chunk);
      }
      ui.fileProgress.value = offset + chunk.byteLength;
      ui.fileStatus.textContent = `Sending ${file.name}: ${percent(offset + chunk.byteLength, file.size)}`;
    }
    ui.fileStatus.textContent = `Sent ${file.name}.`;
    log(`Sent ${file.name} (${file.size} bytes).`);
  } catch (e) {
    showError(`Sending the file failed: ${words(e)}`);
  } finally {
    ui.fileSend.disabled = false;
  }
};

// ------------------------------------------------------------------ signaling

const client = new SignalingClient({ userAgent: "switchboard-demo/0.1" });
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

client.on("state", ({ state }) => {
  exposed.server = state;
  ui.serverState.textContent = SERVER_WORDS[state];
  ui.serverState.dataset.state = state;
  // While reconnecting the calls stay: the session may be resumed.
  if (state === "closed") for (const key of [...peers.keys()]) dropPeer(key);
});

/** Whether there is anything a reconnect could keep or lose. */
function inCall(): boolean {
  return peers.size > 0 || exposed.room !== "" || exposed.user !== "";
}

function reconnected(line: string): void {
  ui.serverState.textContent = line;
  log(line);
}

client.on("resumed", () => {
  exposed.reconnects.push("resumed");
  reconnected(inCall() ? "Reconnected — your call continued." : "Reconnected.");
});

/** Set when a new session rejoins the room: its Joined lists whom to call again. */
let rejoining = false;

client.on("startedFresh", () => {
  exposed.reconnects.push("fresh");
  const had = inCall();
  // A new session has a new peer id: the calls of the old one are over.
  for (const key of [...peers.keys()]) dropPeer(key);
  hideIncoming();
  rejoining = exposed.room !== "";
  reconnected(had ? "Reconnected — rejoining." : "Reconnected.");
});

client.on("joined", (joined) => {
  if (!rejoining || joined.room !== exposed.room) return;
  rejoining = false;
  // Back in the room as a newcomer, who offers to everyone there.
  for (const m of joined.members) {
    const peer = addPeer({ peerId: m.peerId }, memberLabel(m), joined.room);
    peer.offer().catch((e: unknown) => showError(`Could not call ${peer.label}: ${words(e)}`));
  }
});

client.on("welcome", (w) => {
  welcomeIce = w.iceServers;
  exposed.peerId = w.peerId.toString();
  clearError();
});

client.on("error", (e) => {
  if (e instanceof SignalingError && e.code === ErrorCode.UNKNOWN_PEER) {
    // The name we called is not online: that call is over before it began.
    for (const p of [...peers.values()]) if ("user" in p.address && !p.answered) dropPeer(p.key);
  }
  showError(words(e));
});

client.on("peerJoined", ({ room, member }) => {
  log(`${memberLabel(member)} joined room ${room}.`);
  addPeer({ peerId: member.peerId }, memberLabel(member), room);
});

client.on("peerLeft", ({ room, peerId, reason }) => {
  const key = addressKey({ peerId });
  const label = peers.get(key)?.label ?? `peer ${peerId.toString(16)}`;
  const why =
    reason === LeaveReason.DISCONNECTED
      ? " (closed the page or lost the connection)"
      : reason === LeaveReason.TIMED_OUT
        ? " (stopped answering)"
        : "";
  log(`${label} left room ${room}${why}.`);
  dropPeer(key);
});

client.on("offer", async ({ from, sdp, room }) => {
  const key = addressKey(from);
  try {
    if ("user" in from) {
      // A named call: ask first, the answer comes from the Accept button.
      pendingCall = { from: from.user, sdp };
      exposed.incoming = from.user;
      ui.incomingFrom.textContent = from.user;
      ui.incoming.hidden = false;
      log(`${from.user} is calling you.`);
      return;
    }
    const peer = peers.get(key) ?? addPeer(from, `peer ${from.peerId.toString(16)}`, room ?? exposed.room);
    await peer.answer(sdp);
  } catch (e) {
    showError(`Could not answer: ${words(e)}`);
  }
});

client.on("answer", async ({ from, sdp }) => {
  const peer = peers.get(addressKey(from));
  if (peer === undefined) return;
  peer.answered = true;
  try {
    await peer.remote({ type: "answer", sdp });
    if ("user" in from) log(`${from.user} accepted the call.`);
  } catch (e) {
    showError(`Could not use the answer: ${words(e)}`);
  }
});

/** Candidates of a named call that arrive before the callee accepts. */
const earlyIce = new Map<string, RTCIceCandidateInit[]>();

client.on("ice", async ({ from, candidates }) => {
  const key = addressKey(from);
  const peer = peers.get(key);
  const inits: RTCIceCandidateInit[] = candidates.map((c) => ({
    candidate: c.candidate,
    sdpMid: c.sdpMid ?? null,
    sdpMLineIndex: c.sdpMLineIndex ?? null,
    usernameFragment: c.usernameFragment ?? null,
  }));
  if (peer === undefined) {
    earlyIce.set(key, [...(earlyIce.get(key) ?? []), ...inits]);
    return;
  }
  for (const c of inits) await peer.addIce(c);
});

client.on("hangUp", ({ from }) => {
  const key = addressKey(from);
  const name = "user" in from ? from.user : `peer ${from.peerId.toString(16)}`;
  if (pendingCall !== undefined && "user" in from && pendingCall.from === from.user) {
    hideIncoming();
    log(`${name} gave up calling.`);
    return;
  }
  const peer = peers.get(key);
  if (peer === undefined) return;
  log(peer.answered ? `${name} hung up.` : `${name} declined the call.`);
  dropPeer(key);
});

// ------------------------------------------------------------------ rooms

ui.join.onclick = async () => {
  const room = ui.room.value.trim();
  if (room === "") {
    showError("Type a room id first.");
    return;
  }
  clearError();
  await media();
  if (exposed.room !== "") await leaveRoom();
  const mode = ui.mode.value === "mesh" ? "mesh" : "pair";
  try {
    const joined = await client.join(room, {
      mode,
      capacity: mode === "mesh" ? Number(ui.capacity.value) || undefined : undefined,
      displayName: ui.displayName.value.trim(),
    });
    exposed.room = room;
    updateButtons();
    const others = joined.members.length;
    log(
      `Joined ${mode === "mesh" ? "mesh room" : "1:1 room"} ${room} (room for ${joined.capacity}); ` +
        (others === 0 ? "waiting for others." : `${others} already here.`),
    );
    // The newcomer offers to everyone already in the room.
    for (const m of joined.members) {
      const peer = addPeer({ peerId: m.peerId }, memberLabel(m), room);
      peer.offer().catch((e: unknown) => showError(`Could not call ${peer.label}: ${words(e)}`));
    }
  } catch (e) {
    showError(words(e));
  }
};

async function leaveRoom(): Promise<void> {
  const room = exposed.room;
  exposed.room = "";
  for (const p of [...peers.values()]) if (p.room !== undefined) dropPeer(p.key);
  if (room !== "" && client.state === "open") {
    try {
      await client.leave(room);
      log(`Left room ${room}.`);
    } catch (e) {
      showError(words(e));
    }
  }
  updateButtons();
}

ui.hangup.onclick = async () => {
  for (const p of [...peers.values()]) {
    if ("user" in p.address) {
      client.hangUp(p.address);
      log(`Hung up on ${p.label}.`);
      dropPeer(p.key);
    }
  }
  await leaveRoom();
};

// ------------------------------------------------------------------ named calls

let pendingCall: { from: string; sdp: string } | undefined;

function hideIncoming(): void {
  pendingCall = undefined;
  exposed.incoming = "";
  ui.incoming.hidden = true;
}

ui.login.onclick = async () => {
  const name = ui.loginName.value.trim();
  if (name === "") {
    showError("Type a name to log in with.");
    return;
  }
  clearError();
  try {
    await client.login(name);
    exposed.user = name;
    ui.loginState.textContent = `Logged in as ${name}. Others can call you by this name.`;
    ui.call.disabled = false;
    ui.login.disabled = true;
    log(`Logged in as ${name}.`);
  } catch (e) {
    showError(words(e));
  }
};

ui.call.onclick = async () => {
  const name = ui.callee.value.trim();
  if (name === "") {
    showError("Type the name to call.");
    return;
  }
  clearError();
  await media();
  const peer = addPeer({ user: name }, name, undefined);
  log(`Calling ${name}…`);
  try {
    await peer.offer();
  } catch (e) {
    dropPeer(peer.key);
    showError(`Could not call ${name}: ${words(e)}`);
  }
};

ui.accept.onclick = async () => {
  const call = pendingCall;
  if (call === undefined) return;
  hideIncoming();
  await media();
  const address: Address = { user: call.from };
  const peer = addPeer(address, call.from, undefined);
  peer.answered = true;
  const early = earlyIce.get(peer.key) ?? [];
  earlyIce.delete(peer.key);
  try {
    await peer.answer(call.sdp);
    for (const c of early) await peer.addIce(c);
    log(`Accepted the call from ${call.from}.`);
  } catch (e) {
    showError(`Could not accept: ${words(e)}`);
  }
};

ui.decline.onclick = () => {
  const call = pendingCall;
  if (call === undefined) return;
  hideIncoming();
  earlyIce.delete(addressKey({ user: call.from }));
  client.hangUp({ user: call.from });
  log(`Declined the call from ${call.from}.`);
};

// ------------------------------------------------------------------ start

const params = new URLSearchParams(location.search);
ui.room.value = params.get("room") ?? "";
if (params.get("mode") === "mesh") ui.mode.value = "mesh";
ui.displayName.value = params.get("name") ?? "";
showCapacity();
ui.loginName.value = params.get("name") ?? "";
updateButtons();

client.connect(wsUrl).catch((e: unknown) => showError(`Cannot reach the server: ${words(e)}`));
