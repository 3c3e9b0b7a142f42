"""asyncio clients of a switchboard server.

`Connection` is one WebSocket: Hello and Welcome, sequence numbers, Pings
answered, frames turned into typed events (SDP inflated; a frame it cannot
read becomes `Skipped`). `Client` is a long-lived session on top of it, like
the Rust crate's `Client`: it batches trickled ICE candidates (PROTOCOL.md
section 8) on an asyncio timer, compresses SDP for receivers that can
inflate it, and after a lost connection reconnects with exponential backoff
and jitter, logs in again and rejoins its rooms.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Tuple, Union

import websockets
from google.protobuf.message import DecodeError

from . import events as ev
from . import frame, sdp
from . import signal_pb2 as pb
from .events import Address, Candidate, ErrorCode, Event, RoomMode
from .ice import IceBatcher

USER_AGENT = "switchboard-python/0.1"


class SignalingError(Exception):
    """A refusal or an Error frame as an exception: `code` (an `ErrorCode`),
    `message`, `request_seq` (0 when it answers no frame)."""

    def __init__(self, code: int, message: str, request_seq: int = 0):
        self.code = ErrorCode(code)
        self.message = message
        self.request_seq = request_seq
        super().__init__(f"{self.code.name}: {message}")

    @classmethod
    def from_event(cls, e: ev.Error) -> "SignalingError":
        return cls(e.code, e.message, e.request_seq)


class ConnectionClosed(SignalingError):
    """The connection (or the `Client` session) has ended. `close_code` is
    the WebSocket close code when one was received; a protocol reason
    (4000 + an error code) also sets `code`, else it is UNSPECIFIED."""

    def __init__(self, reason: str, close_code: Optional[int] = None):
        code = close_code - 4000 if close_code is not None and 4000 < close_code < 4100 else 0
        super().__init__(code, reason)
        self.close_code = close_code


def _closed(e: websockets.ConnectionClosed) -> ConnectionClosed:
    rcvd = e.rcvd
    if rcvd is None:
        return ConnectionClosed("the connection was lost without a close frame")
    return ConnectionClosed(f"closed by the server: {rcvd.code} {rcvd.reason}".rstrip(), rcvd.code)


class Connection:
    """One connection to a switchboard server. Use `await Connection.connect(url)`."""

    def __init__(self, ws: Any, welcome: pb.Welcome):
        self.ws = ws
        self.welcome = welcome
        self.peer_id: int = welcome.peer_id
        self.max_sdp: int = welcome.limits.max_sdp_bytes or 65_536
        self.server_capabilities = frozenset(map(ev.Capability, welcome.capabilities))
        self._seq = 1  # the Hello was frame 1
        # Frames received and not yet handed out, and Skipped for the part
        # of a message the frame layer refused.
        self._pending: List[Union[frame.Frame, Event]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        deflate: bool = True,
        access_token: str = "",
        user_agent: str = USER_AGENT,
        open_timeout: float = 10,
    ) -> "Connection":
        """Opens the WebSocket and says Hello; the refusal of a Hello (a bad
        token, an unsupported version) raises `SignalingError` with its code."""
        ws = await websockets.connect(url, max_size=None, open_timeout=open_timeout)
        try:
            caps = [pb.CAPABILITY_ICE_BATCH] + ([pb.CAPABILITY_DEFLATE_SDP] if deflate else [])
            hello = pb.Hello(protocol_version=1, capabilities=caps, user_agent=user_agent, access_token=access_token)
            await ws.send(frame.encode(pb.MESSAGE_TYPE_HELLO, 0, 1, hello.SerializeToString()))
            while True:
                data = await asyncio.wait_for(ws.recv(), open_timeout)
                if not isinstance(data, bytes):
                    continue
                frames = list(frame.split(data, 1 << 20, 1 << 10))
                for i, f in enumerate(frames):
                    if f.type == pb.MESSAGE_TYPE_ERROR:
                        e = pb.Error.FromString(f.payload)
                        raise SignalingError(e.code, e.message, e.request_seq)
                    if f.type == pb.MESSAGE_TYPE_WELCOME:
                        c = cls(ws, pb.Welcome.FromString(f.payload))
                        c._pending = frames[i + 1 :]
                        return c
        except websockets.ConnectionClosed as e:
            raise _closed(e) from None
        except BaseException:
            await ws.close()
            raise

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1  # skips 0 when it wraps
        return self._seq

    def _encode(self, type_: int, message: Any, flags: int = 0) -> Tuple[int, bytes]:
        seq = self._next_seq()
        return seq, frame.encode(type_, flags, seq, message.SerializeToString())

    async def send(self, type_: int, message: Any, flags: int = 0) -> int:
        """Sends one frame (a `pb.MESSAGE_TYPE_*`, its protobuf message);
        returns its seq, which an `Error` answering it names."""
        seq, data = self._encode(type_, message, flags)
        try:
            await self.ws.send(data)
        except websockets.ConnectionClosed as e:
            raise _closed(e) from None
        return seq

    async def send_many(self, frames: Iterable[Tuple[int, Any]]) -> List[int]:
        """Sends several frames in one WebSocket message; returns their seqs."""
        encoded = [self._encode(t, m) for t, m in frames]
        try:
            await self.ws.send(b"".join(data for _, data in encoded))
        except websockets.ConnectionClosed as e:
            raise _closed(e) from None
        return [seq for seq, _ in encoded]

    async def join(self, room: str, mode: RoomMode = RoomMode.PAIR, capacity: int = 0, display_name: str = "") -> int:
        return await self.send(pb.MESSAGE_TYPE_JOIN, _join(room, mode, capacity, display_name))

    async def leave(self, room: str) -> int:
        return await self.send(pb.MESSAGE_TYPE_LEAVE, pb.Leave(room=room))

    async def login(self, name: str) -> int:
        return await self.send(pb.MESSAGE_TYPE_LOGIN, pb.Login(name=name))

    async def logout(self) -> int:
        return await self.send(pb.MESSAGE_TYPE_LOGOUT, pb.Logout())

    async def ping(self, nonce: int = 0) -> int:
        return await self.send(pb.MESSAGE_TYPE_PING, pb.Ping(nonce=nonce))

    async def hang_up(self, to: Address) -> int:
        return await self.send(pb.MESSAGE_TYPE_HANG_UP, pb.HangUp(peer=ev.to_address(to)))

    async def offer(
        self, to: Address, text: str, *, answer: bool = False, compress: bool = True, room: Optional[str] = None
    ) -> int:
        """An Offer (or Answer), compressed when it is smaller and `compress`:
        pass whether the receiver has CAPABILITY_DEFLATE_SDP (its `Member`
        says so); the server inflates for receivers without it."""
        data, packed = sdp.deflate_if_smaller(text) if compress else (text.encode(), False)
        d = pb.SessionDescription(peer=ev.to_address(to), sdp=data, room=room or "")
        type_ = pb.MESSAGE_TYPE_ANSWER if answer else pb.MESSAGE_TYPE_OFFER
        return await self.send(type_, d, frame.DEFLATE_SDP if packed else 0)

    async def answer(self, to: Address, text: str, *, compress: bool = True, room: Optional[str] = None) -> int:
        return await self.offer(to, text, answer=True, compress=compress, room=room)

    async def ice(
        self, to: Address, candidates: Iterable[Candidate], end_of_candidates: bool = False, room: Optional[str] = None
    ) -> int:
        """One IceCandidates frame as it is (no batching: `Client` batches)."""
        batch = pb.IceCandidates(candidates=[c.to_proto() for c in candidates], end_of_candidates=end_of_candidates)
        return await self.send_batch(to, batch, room)

    async def send_batch(self, to: Address, batch: pb.IceCandidates, room: Optional[str] = None) -> int:
        batch.peer.CopyFrom(ev.to_address(to))
        batch.room = room or ""
        return await self.send(pb.MESSAGE_TYPE_ICE, batch)

    async def recv(self) -> Event:
        """The next event. Pings are answered here; a frame this client
        cannot read is `Skipped`. Raises `ConnectionClosed` at the end."""
        while True:
            if self._pending:
                f = self._pending.pop(0)
                if isinstance(f, Event):
                    return f
                if f.type == pb.MESSAGE_TYPE_PING:
                    await self.send(pb.MESSAGE_TYPE_PONG, pb.Pong(nonce=pb.Ping.FromString(f.payload).nonce))
                    continue
                try:
                    return ev.decode(f, self.max_sdp)
                except (KeyError, ValueError, DecodeError) as e:
                    return ev.Skipped(f"{type(e).__name__}: {e}", f.type)
            try:
                data = await self.ws.recv()
            except websockets.ConnectionClosed as e:
                raise _closed(e) from None
            if not isinstance(data, bytes):
                continue
            try:
                for f in frame.split(data, 1 << 20, 1 << 10):
                    self._pending.append(f)
            except frame.FrameError as e:
                # The rest of this message is untrustworthy; the frames before it stand.
                self._pending.append(ev.Skipped(f"the rest of a message: {e}"))

    async def close(self) -> None:
        await self.ws.close()


def _join(room: str, mode: RoomMode, capacity: int, display_name: str) -> pb.Join:
    return pb.Join(room=room, mode=int(mode), capacity=capacity, display_name=display_name)


# Errors answering a Join that leave the client outside the room for good
# (INVALID_ARGUMENT is not one: "already in room" is one of its reasons).
_JOIN_REFUSED = frozenset(
    {
        ErrorCode.FORBIDDEN,
        ErrorCode.MODE_MISMATCH,
        ErrorCode.TOO_MANY_ROOMS,
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.TOO_LARGE,
    }
)


def backoff(
    attempt: int, initial: float = 0.1, maximum: float = 10.0, rng: Callable[[], float] = random.random
) -> float:
    """Seconds before reconnect attempt `attempt` (0-based): exponential from
    `initial`, capped at `maximum`, with "equal jitter" (a random point in
    the upper half), so clients cut off together do not return together."""
    base = min(initial * (1 << min(attempt, 16)), maximum)
    return base / 2 + base / 2 * rng()


AccessToken = Union[str, Callable[[], Union[str, Awaitable[str]]]]


class Client:
    """A signaling session that survives lost connections. Use
    `await Client.connect(url)`, then read events with `await client.recv()`
    or `async for event in client`.

    - `login` and `join` are remembered: after a reconnect (`Disconnected`,
      then `Reconnected`) the name is claimed again and the rooms rejoined,
      and their `LoginResult` and `Joined` arrive as events. A refused
      LoginResult, a `Left` and a refused join forget them.
    - Signaling (`offer`, `answer`, `send_candidate`, `hang_up`) while
      disconnected is dropped and returns None: peer ids do not survive a
      reconnect.
    - `send_candidate` queues a candidate per target in an `IceBatcher`; a
      batch goes 20 ms after its first candidate or at once with 8, and
      `end_of_candidates` sends the rest with the end marker.
    - When the application stops reading events, the queue fills, the
      client stops reading the socket, and the server eventually cuts it off
      as a slow consumer: nothing is buffered without bound.

    `access_token` may be a function (plain or async) that returns a fresh
    token, called for every connection.
    """

    def __init__(self) -> None:
        raise TypeError("use await Client.connect(url)")

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        deflate: bool = True,
        access_token: AccessToken = "",
        user_agent: str = USER_AGENT,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        max_reconnect_attempts: Optional[int] = None,
        ice_window: float = 0.020,
        ice_max_batch: int = 8,
        event_capacity: int = 256,
    ) -> "Client":
        """Connects and completes Hello/Welcome; a failure here raises (as
        `Connection.connect` does). Later losses are repaired in the
        background: `backoff_initial` and `backoff_max` (seconds) bound the
        delays (see `backoff`), `max_reconnect_attempts` in a row ends the
        session (None: never). `ice_window` and `ice_max_batch` are the
        batching rule; `event_capacity` bounds the events not yet read."""
        self = object.__new__(cls)
        self._url = url
        self._deflate = deflate
        self._access_token = access_token
        self._user_agent = user_agent
        self._backoff = (backoff_initial, backoff_max)
        self._max_attempts = max_reconnect_attempts
        self._ice = (ice_window, ice_max_batch)
        self._events: asyncio.Queue = asyncio.Queue(max(1, event_capacity))
        self._user: Optional[str] = None
        self._rooms: Dict[str, pb.Join] = {}
        self._join_seqs: Dict[int, str] = {}
        self._capabilities: Dict[int, frozenset] = {}
        self._batchers: Dict[Tuple[Address, Optional[str]], IceBatcher] = {}
        self._flushers: Dict[Tuple[Address, Optional[str]], asyncio.Task] = {}
        self._closing = False
        self._ended: Optional[ConnectionClosed] = None
        self._done = asyncio.Event()
        self._conn: Optional[Connection] = await self._open()
        self.welcome: pb.Welcome = self._conn.welcome
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _open(self) -> Connection:
        token = self._access_token
        if callable(token):
            token = token()
            if inspect.isawaitable(token):
                token = await token
        return await Connection.connect(
            self._url, deflate=self._deflate, access_token=token, user_agent=self._user_agent
        )

    @property
    def peer_id(self) -> int:
        """The peer id of the current connection (it changes on reconnect)."""
        return self.welcome.peer_id

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # Events.

    async def recv(self) -> Event:
        """The next event; raises `ConnectionClosed` once the session has
        ended (closed, or reconnect attempts used up) and every event before
        that was read."""
        if self._events.empty() and self._done.is_set():
            raise self._ended or ConnectionClosed("closed")
        get = asyncio.ensure_future(self._events.get())
        done = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({get, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        raise self._ended or ConnectionClosed("closed")

    def __aiter__(self) -> "Client":
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    # Requests. Each returns the frame's seq (which an Error answering it
    # names), or None when it was not sent because the client is
    # reconnecting; login, logout, join and leave are remembered anyway.

    async def login(self, name: str) -> Optional[int]:
        self._user = name
        return await self._send(lambda c: c.login(name))

    async def logout(self) -> Optional[int]:
        self._user = None
        return await self._send(lambda c: c.logout())

    async def join(
        self, room: str, mode: RoomMode = RoomMode.PAIR, *, capacity: int = 0, display_name: str = ""
    ) -> Optional[int]:
        join = _join(room, mode, capacity, display_name)
        self._remember(join)
        seq = await self._send(lambda c: c.send(pb.MESSAGE_TYPE_JOIN, join))
        if seq is not None:
            self._join_seqs[seq] = room
        return seq

    async def leave(self, room: str) -> Optional[int]:
        self._rooms.pop(room, None)
        return await self._send(lambda c: c.leave(room))

    async def ping(self, nonce: int = 0) -> Optional[int]:
        return await self._send(lambda c: c.ping(nonce))

    async def offer(self, to: Address, text: str, *, room: Optional[str] = None) -> Optional[int]:
        """Sends an offer, compressed when `to` can inflate it and that is smaller."""
        compress = self._can_inflate(to)
        return await self._send(lambda c: c.offer(to, text, compress=compress, room=room))

    async def answer(self, to: Address, text: str, *, room: Optional[str] = None) -> Optional[int]:
        compress = self._can_inflate(to)
        return await self._send(lambda c: c.answer(to, text, compress=compress, room=room))

    async def hang_up(self, to: Address) -> Optional[int]:
        return await self._send(lambda c: c.hang_up(to))

    async def send_candidate(
        self, to: Address, candidate: Union[Candidate, str], *, room: Optional[str] = None
    ) -> Optional[int]:
        """Queues a trickled candidate for `to`; it leaves in a batch (see the
        class notes). Returns the seq when this call sent a full batch."""
        if self._conn is None:
            return None
        if isinstance(candidate, str):
            candidate = Candidate(candidate)
        key = (to, room)
        batcher = self._batchers.get(key)
        if batcher is None:
            window, most = self._ice
            # A receiver that did not announce ICE_BATCH gets one at a time.
            if isinstance(to, int) and ev.Capability.ICE_BATCH not in self._capabilities.get(
                to, {ev.Capability.ICE_BATCH}
            ):
                most = 1
            batcher = self._batchers[key] = IceBatcher(window, most)
        batch = batcher.add(candidate.to_proto(), asyncio.get_running_loop().time())
        if batch is not None:
            return await self._send(lambda c: c.send_batch(to, batch, room))
        self._schedule_flush(key)
        return None

    async def end_of_candidates(self, to: Address, *, room: Optional[str] = None) -> Optional[int]:
        """Gathering for `to` is complete: the pending candidates go at once
        with `end_of_candidates` (alone, the bare end marker)."""
        batcher = self._batchers.pop((to, room), None)
        flusher = self._flushers.pop((to, room), None)
        if flusher is not None:
            flusher.cancel()
        batch = (batcher or IceBatcher()).finish()
        return await self._send(lambda c: c.send_batch(to, batch, room))

    async def close(self) -> None:
        """Closes the connection politely and ends the session."""
        self._closing = True
        for f in self._flushers.values():
            f.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    # The machinery.

    async def _send(self, op: Callable[[Connection], Awaitable[int]]) -> Optional[int]:
        conn = self._conn
        if conn is None:
            return None
        try:
            return await op(conn)
        except ConnectionClosed:
            return None  # the reader sees the loss too, and reconnects

    def _remember(self, join: pb.Join) -> None:
        # Kept in the order joined, so a replay ends in the same pair room.
        # A previous pair room is forgotten when its Left comes (the server
        # leaves it only once the new join has succeeded).
        self._rooms.pop(join.room, None)
        self._rooms[join.room] = join

    def _can_inflate(self, to: Address) -> bool:
        """A room member that announced DEFLATE_SDP, or a user behind a
        server that inflates for receivers that cannot."""
        if isinstance(to, str):
            return ev.Capability.DEFLATE_SDP in (self._conn.server_capabilities if self._conn else ())
        return ev.Capability.DEFLATE_SDP in self._capabilities.get(to, ())

    def _schedule_flush(self, key) -> None:
        task = self._flushers.get(key)
        if task is None or task.done():
            self._flushers[key] = asyncio.get_running_loop().create_task(self._flush_when_due(key))

    async def _flush_when_due(self, key) -> None:
        """Sends `key`'s batch when its window ends, for as long as it has one."""
        loop = asyncio.get_running_loop()
        while True:
            batcher = self._batchers.get(key)
            deadline = batcher.deadline() if batcher else None
            if deadline is None:
                # Nothing pending: the next candidate starts afresh.
                self._batchers.pop(key, None)
                self._flushers.pop(key, None)
                return
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            batcher = self._batchers.get(key)
            batch = batcher.poll(loop.time()) if batcher else None
            if batch is not None:
                to, room = key
                await self._send(lambda c: c.send_batch(to, batch, room))

    def _on_event(self, e: Event) -> None:
        """Updates the session's state from an event before it is handed on."""
        if isinstance(e, (ev.Joined, ev.RoomFull)):
            self._join_seqs = {s: r for s, r in self._join_seqs.items() if r != e.room}
        if isinstance(e, ev.Joined):
            for m in e.members:
                self._capabilities[m.peer_id] = m.capabilities
        elif isinstance(e, ev.PeerJoined):
            self._capabilities[e.member.peer_id] = e.member.capabilities
        elif isinstance(e, ev.PeerLeft):
            self._capabilities.pop(e.peer_id, None)
            for key in [k for k in self._batchers if k[0] == e.peer_id]:
                del self._batchers[key]
                flusher = self._flushers.pop(key, None)
                if flusher is not None:
                    flusher.cancel()
        elif isinstance(e, (ev.Left, ev.RoomFull)):
            self._rooms.pop(e.room, None)
        elif isinstance(e, ev.LoginResult):
            if not e.success and self._user == e.name:
                self._user = None
        elif isinstance(e, ev.Error):
            room = self._join_seqs.pop(e.request_seq, None)
            if room is not None and e.code in _JOIN_REFUSED:
                self._rooms.pop(room, None)

    async def _run(self) -> None:
        try:
            while True:
                reason = await self._read(self._conn)
                if self._closing:
                    return
                self._conn = None
                await self._events.put(ev.Disconnected(reason.message, reason.close_code))
                self._capabilities.clear()
                self._batchers.clear()
                for f in self._flushers.values():
                    f.cancel()
                self._flushers.clear()
                self._join_seqs.clear()
                conn = await self._reconnect(reason)
                if conn is None:
                    return
        except asyncio.CancelledError:
            pass
        finally:
            if self._ended is None:
                self._ended = ConnectionClosed("the client was closed")
            self._done.set()

    async def _read(self, conn: Connection) -> ConnectionClosed:
        """Reads events until the connection ends; returns why."""
        while True:
            try:
                e = await conn.recv()
            except ConnectionClosed as closed:
                return closed
            except OSError as lost:
                return ConnectionClosed(f"the connection failed: {lost}")
            self._on_event(e)
            await self._events.put(e)

    async def _reconnect(self, reason: ConnectionClosed) -> Optional[Connection]:
        """Connects again with backoff, then replays the login and the joins
        in one message. None when the attempts ran out."""
        attempt = 0
        last: Exception = reason
        while True:
            if self._max_attempts is not None and attempt >= self._max_attempts:
                self._ended = ConnectionClosed(f"gave up after {attempt} reconnect attempts: {last}")
                return None
            await asyncio.sleep(backoff(attempt, *self._backoff))
            attempt += 1
            try:
                conn = await self._open()
            except (OSError, asyncio.TimeoutError, SignalingError, websockets.InvalidHandshake) as e:
                last = e
                continue
            replay: List[Tuple[int, Any]] = []
            if self._user is not None:
                replay.append((pb.MESSAGE_TYPE_LOGIN, pb.Login(name=self._user)))
            joins = list(self._rooms.values())
            replay += [(pb.MESSAGE_TYPE_JOIN, j) for j in joins]
            try:
                seqs = await conn.send_many(replay) if replay else []
            except ConnectionClosed as e:
                last = e
                continue
            self._join_seqs = {seq: j.room for seq, j in zip(seqs[len(seqs) - len(joins) :], joins)}
            self._conn = conn
            self.welcome = conn.welcome
            await self._events.put(ev.Reconnected(conn.peer_id))
            return conn
