//! The Lua scripts that change the shared directory. Each runs atomically
//! inside Redis, so room capacity, name uniqueness, node ids and the clean-up
//! of a dead node are decided there, never by a read-then-write from a node.
//!
//! Every script takes the cluster's key prefix as `ARGV[1]` and builds its
//! keys from it (the keys depend on what it reads, e.g. a dead node's
//! peers), which is why the cluster needs a standalone Redis (or one
//! primary), not Redis Cluster. The keys, with `P` the prefix:
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:node-ids` | set | node ids claimed and not yet cleaned up |
//! | `P:next-node` | counter | where the next claim starts looking |
//! | `P:lease:N` | string, PX | node N's lease (its random token) |
//! | `P:epoch:N` | counter | node N's starts |
//! | `P:boot` | string | a random mark of this Redis' keyspace: gone after a restart without persistence |
//! | `P:rooms` | set | room ids with members |
//! | `P:room:R` | hash | room R's `mode`, `cap` and join counter `seq` |
//! | `P:members:R` | sorted set | room R's peers, scored by join order |
//! | `P:minfo:R` | hash | peer → its member record (JSON) in room R |
//! | `P:prooms:PEER` | set | the rooms a peer is in |
//! | `P:npeers:N` | set | node N's peers with a room or a name |
//! | `P:names` | hash | user name → `PEER:CAPS` |
//! | `P:pname:PEER` | string | the name a peer holds |
//! | `P:calls:NAME` | set | the names NAME is in a call with |
//! | `P:stats` | hash | `pair_rooms`, `mesh_rooms`, `members`: counts kept by the scripts, so `/metrics` costs one read |
//! | `P:moved` | hash | peer → the node it is on, for peers whose session moved off the node their id names |
//! | `P:dead:N` | string | node N was found dead and its clean-up began (announced once) |
//!
//! Peers are written as 16 hexadecimal digits, so a script finds a peer's
//! node in its first four (Lua numbers cannot hold 64 bits), unless the
//! peer's session moved to another node (`P:moved`). Scripts publish
//! room events on the channel `P:ch:N` of every node with a member in the
//! room (the member list before a leave, after a join), so every notice about
//! a room reaches a node in the order Redis made the changes.

use std::sync::LazyLock;

use redis::Script;

/// Functions every script may use.
const COMMON: &str = r#"
local P = ARGV[1]
local any_moved = nil
local function node_of(peer)
  if any_moved == nil then any_moved = redis.call('EXISTS', P .. ':moved') == 1 end
  if any_moved then
    local n = redis.call('HGET', P .. ':moved', peer)
    if n then return tonumber(n) end
  end
  return tonumber(string.sub(peer, 1, 4), 16)
end
local function live_nodes()
  local ids = {}
  for _, id in ipairs(redis.call('SMEMBERS', P .. ':node-ids')) do
    if redis.call('EXISTS', P .. ':lease:' .. id) == 1 then table.insert(ids, tonumber(id)) end
  end
  return ids
end
-- Forgets where PEER moved, telling every node.
local function forget_moved(peer)
  if redis.call('HDEL', P .. ':moved', peer) == 1 then
    any_moved = nil
    local msg = cjson.encode({k = 'm', p = peer, n = 0})
    for _, id in ipairs(live_nodes()) do redis.call('PUBLISH', P .. ':ch:' .. id, msg) end
  end
end
local function publish_to(peers, msg)
  local seen = {}
  for _, p in ipairs(peers) do
    local n = node_of(p)
    if not seen[n] then
      seen[n] = true
      redis.call('PUBLISH', P .. ':ch:' .. n, msg)
    end
  end
end
-- Removes PEER from ROOM and tells every node that had a member in it.
-- Returns false if PEER was not a member, else whether the room emptied.
local function room_leave(room, peer, why)
  local mk = P .. ':members:' .. room
  if not redis.call('ZSCORE', mk, peer) then return nil end
  local before = redis.call('ZRANGE', mk, 0, -1)
  redis.call('ZREM', mk, peer)
  redis.call('HDEL', P .. ':minfo:' .. room, peer)
  redis.call('SREM', P .. ':prooms:' .. peer, room)
  local emptied = redis.call('ZCARD', mk) == 0
  redis.call('HINCRBY', P .. ':stats', 'members', -1)
  if emptied then
    local mode = redis.call('HGET', P .. ':room:' .. room, 'mode') or 'pair'
    redis.call('HINCRBY', P .. ':stats', mode .. '_rooms', -1)
    redis.call('DEL', P .. ':room:' .. room, mk, P .. ':minfo:' .. room)
    redis.call('SREM', P .. ':rooms', room)
  end
  publish_to(before, cjson.encode({k = 'l', r = room, p = peer, why = why}))
  return emptied
end
-- Frees NAME if PEER holds it and ends its calls on the partners' side;
-- with ANNOUNCE, tells each partner's node to send it HangUp.
local function name_logout(name, peer, announce)
  local v = redis.call('HGET', P .. ':names', name)
  if not v or string.sub(v, 1, 16) ~= peer then return {} end
  redis.call('HDEL', P .. ':names', name)
  redis.call('DEL', P .. ':pname:' .. peer)
  local partners = redis.call('SMEMBERS', P .. ':calls:' .. name)
  redis.call('DEL', P .. ':calls:' .. name)
  for _, partner in ipairs(partners) do
    redis.call('SREM', P .. ':calls:' .. partner, name)
    if announce then
      local pv = redis.call('HGET', P .. ':names', partner)
      if pv then
        local to = string.sub(pv, 1, 16)
        publish_to({to}, cjson.encode({k = 'h', to = to, from = name}))
      end
    end
  end
  return partners
end
"#;

/// A script: its source (the writer sends it with `EVAL` inside a
/// pipeline, which Redis compiles once and caches by its hash) and the
/// redis-rs [`Script`] for direct calls (`EVALSHA`, falling back to `EVAL`).
pub struct Lua {
    code: String,
    script: Script,
}

impl Lua {
    /// The script's source.
    pub fn code(&self) -> &str {
        &self.code
    }
}

impl std::ops::Deref for Lua {
    type Target = Script;

    fn deref(&self) -> &Script {
        &self.script
    }
}

fn script(body: &str) -> Lua {
    let code = format!("{COMMON}\n{body}");
    Lua {
        script: Script::new(&code),
        code,
    }
}

/// Claims a free node id and the first lease on it.
/// ARGV: prefix, token, lease ms. Returns `{id, epoch, boot}`.
pub static CLAIM: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local token, lease = ARGV[2], ARGV[3]
redis.call('SET', P .. ':boot', token, 'NX')
local boot = redis.call('GET', P .. ':boot')
local start = redis.call('INCR', P .. ':next-node')
for i = 0, 65534 do
  local id = ((start + i - 1) % 65535) + 1
  if redis.call('SISMEMBER', P .. ':node-ids', id) == 0
     and redis.call('EXISTS', P .. ':lease:' .. id) == 0 then
    redis.call('SADD', P .. ':node-ids', id)
    redis.call('SET', P .. ':lease:' .. id, token, 'PX', lease)
    local epoch = redis.call('INCR', P .. ':epoch:' .. id) % 65536
    return {id, epoch, boot}
  end
end
return redis.error_reply('no free node id')
"#,
    )
});

/// Renews a lease. ARGV: prefix, id, token, lease ms, epoch, boot mark,
/// a fresh mark. Returns `{answer, mark}`, the answer being `ok`
/// (renewed), `late` (it had lapsed but the node was not yet cleaned up:
/// taken again), `restored` (Redis lost its keyspace, so its mark changed:
/// the node is registered again and must write its state back; the mark
/// returned is the new keyspace's), `reaped` (the others cleaned the node
/// up and announced its peers as gone: it is registered again, and must
/// close its connections) or `taken` (another node holds the id).
pub static RENEW: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local id, token, lease, epoch, boot, fresh = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local lk = P .. ':lease:' .. id
local cur = redis.call('GET', lk)
if cur == token then
  redis.call('PEXPIRE', lk, lease)
  return {'ok', boot}
end
if cur then return {'taken', boot} end
local known = redis.call('SISMEMBER', P .. ':node-ids', id) == 1
local mark = redis.call('GET', P .. ':boot')
redis.call('SET', lk, token, 'PX', lease)
if mark == boot and not known then
  -- Cleaned up by the others: registered again, with no peers.
  redis.call('SADD', P .. ':node-ids', id)
  return {'reaped', boot}
end
if known then return {'late', boot} end
-- A new keyspace: the first node back marks it, the others adopt the mark.
if not mark then
  redis.call('SET', P .. ':boot', fresh)
  mark = fresh
end
redis.call('SADD', P .. ':node-ids', id)
local e = tonumber(redis.call('GET', P .. ':epoch:' .. id) or '0')
if e < tonumber(epoch) then redis.call('SET', P .. ':epoch:' .. id, epoch) end
return {'restored', mark}
"#,
    )
});

/// Removes a node that is leaving cleanly from the set of node ids (its
/// peers have left already). ARGV: prefix, id, token.
pub static RELEASE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local id, token = ARGV[2], ARGV[3]
if redis.call('GET', P .. ':lease:' .. id) == token then
  redis.call('DEL', P .. ':lease:' .. id)
  redis.call('SREM', P .. ':node-ids', id)
  redis.call('DEL', P .. ':npeers:' .. id)
end
return 1
"#,
    )
});

/// Cleans up nodes whose lease has expired: their peers leave every room
/// (the remaining members are told, reason DISCONNECTED), their names are
/// freed (call partners are sent HangUp), and, once a node has no peer
/// left, it is forgotten. At most ARGV[3] peers per call, so a node that
/// held thousands of peers does not hold Redis for seconds (the lease
/// keeper calls again while more remain); each peer is removed in one
/// atomic step, so however many nodes clean up at once, every departure
/// is announced exactly once. ARGV: prefix, own id, most peers.
/// Returns `{more, id...}`: 1 if peers remain, and the ids forgotten.
pub static REAP: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local me, budget = ARGV[2], tonumber(ARGV[3])
local out = {0}
for _, id in ipairs(redis.call('SMEMBERS', P .. ':node-ids')) do
  if id ~= me and redis.call('EXISTS', P .. ':lease:' .. id) == 0 then
    local nk = P .. ':npeers:' .. id
    -- Once per dead node: every live node hears it died (and tells the
    -- senders of what it sent there lately).
    if redis.call('SET', P .. ':dead:' .. id, 1, 'NX') then
      local msg = cjson.encode({k = 'd', n = tonumber(id)})
      for _, n in ipairs(live_nodes()) do redis.call('PUBLISH', P .. ':ch:' .. n, msg) end
    end
    while budget > 0 do
      local peer = redis.call('SPOP', nk)
      if not peer then break end
      budget = budget - 1
      for _, room in ipairs(redis.call('SMEMBERS', P .. ':prooms:' .. peer)) do
        room_leave(room, peer, 2)
      end
      redis.call('DEL', P .. ':prooms:' .. peer)
      local name = redis.call('GET', P .. ':pname:' .. peer)
      if name then name_logout(name, peer, true) end
      forget_moved(peer)
    end
    if redis.call('SCARD', nk) == 0 then
      redis.call('DEL', nk, P .. ':dead:' .. id)
      redis.call('SREM', P .. ':node-ids', id)
      table.insert(out, tonumber(id))
    else
      out[1] = 1
    end
    if budget == 0 then break end
  end
end
return out
"#,
    )
});

/// Joins a room, creating it if allowed, within its capacity.
/// ARGV: prefix, room, mode (`pair`/`mesh`), capacity for a new room, peer,
/// member record, may create (`1`/`0`). Returns JSON: `{ok, cap, created}`
/// or `{e = create|mode|member|full, ...}`.
pub static JOIN: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local room, mode, cap, peer, info, may = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local rk = P .. ':room:' .. room
local meta = redis.call('HMGET', rk, 'mode', 'cap')
local created = false
if not meta[1] then
  if may ~= '1' then return cjson.encode({e = 'create'}) end
  redis.call('HSET', rk, 'mode', mode, 'cap', cap, 'seq', 0)
  redis.call('SADD', P .. ':rooms', room)
  redis.call('HINCRBY', P .. ':stats', mode .. '_rooms', 1)
  created = true
else
  if meta[1] ~= mode then return cjson.encode({e = 'mode', mode = meta[1]}) end
  cap = tonumber(meta[2])
end
local mk = P .. ':members:' .. room
if redis.call('ZSCORE', mk, peer) then return cjson.encode({e = 'member'}) end
if redis.call('ZCARD', mk) >= cap then return cjson.encode({e = 'full', cap = cap}) end
local seq = redis.call('HINCRBY', rk, 'seq', 1)
redis.call('ZADD', mk, seq, peer)
redis.call('HINCRBY', P .. ':stats', 'members', 1)
redis.call('HSET', P .. ':minfo:' .. room, peer, info)
redis.call('SADD', P .. ':prooms:' .. peer, room)
redis.call('SADD', P .. ':npeers:' .. node_of(peer), peer)
local ids = redis.call('ZRANGE', mk, 0, -1)
local infos = redis.call('HMGET', P .. ':minfo:' .. room, unpack(ids))
publish_to(ids, cjson.encode({k = 'j', r = room, p = peer, mode = mode, cap = cap, m = infos}))
return cjson.encode({ok = 1, cap = cap, created = created})
"#,
    )
});

/// Leaves a room. ARGV: prefix, room, peer, reason (LeaveReason number).
/// Returns JSON `{left, emptied}`.
pub static LEAVE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local emptied = room_leave(ARGV[2], ARGV[3], tonumber(ARGV[4]))
if emptied == nil then return cjson.encode({left = false, emptied = false}) end
return cjson.encode({left = true, emptied = emptied})
"#,
    )
});

/// An operator removes a peer from a room: like LEAVE with reason KICKED,
/// and the peer's node is told to tell it. ARGV: prefix, room, peer.
/// Returns 1 if it was a member.
pub static KICK: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local room, peer = ARGV[2], ARGV[3]
if room_leave(room, peer, 5) == nil then return 0 end
publish_to({peer}, cjson.encode({k = 'k', r = room, p = peer, why = 'an operator removed you from the room'}))
return 1
"#,
    )
});

/// An operator closes a room: every member is removed, and each node with
/// a member drops its copy of the room and tells its members. ARGV: prefix, room. Returns the number of members, -1
/// without such a room.
pub static CLOSE_ROOM: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local room = ARGV[2]
local mk = P .. ':members:' .. room
if redis.call('EXISTS', P .. ':room:' .. room) == 0 then return -1 end
local members = redis.call('ZRANGE', mk, 0, -1)
for _, peer in ipairs(members) do
  redis.call('SREM', P .. ':prooms:' .. peer, room)
end
local mode = redis.call('HGET', P .. ':room:' .. room, 'mode') or 'pair'
redis.call('HINCRBY', P .. ':stats', mode .. '_rooms', -1)
redis.call('HINCRBY', P .. ':stats', 'members', -#members)
redis.call('DEL', P .. ':room:' .. room, mk, P .. ':minfo:' .. room)
redis.call('SREM', P .. ':rooms', room)
publish_to(members, cjson.encode({k = 'c', r = room}))
return #members
"#,
    )
});

/// Claims a user name. ARGV: prefix, name, peer, capabilities.
/// Returns `new`, `same` (already held by the peer) or `taken`.
pub static LOGIN: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local name, peer, caps = ARGV[2], ARGV[3], ARGV[4]
local v = redis.call('HGET', P .. ':names', name)
if v and string.sub(v, 1, 16) ~= peer then return 'taken' end
redis.call('HSET', P .. ':names', name, peer .. ':' .. caps)
redis.call('SET', P .. ':pname:' .. peer, name)
redis.call('SADD', P .. ':npeers:' .. node_of(peer), peer)
if v then return 'same' end
return 'new'
"#,
    )
});

/// Frees a name held by a peer and ends its calls. ARGV: prefix, name,
/// peer. Returns the call partners' names.
pub static LOGOUT: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
return name_logout(ARGV[2], ARGV[3], false)
"#,
    )
});

/// Records a named call on both names, each only while its peer still
/// holds it. ARGV: prefix, a, a's peer, b, b's peer, most calls per name.
pub static OPEN_CALL: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local a, ap, b, bp, most = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local function held(name, peer)
  local v = redis.call('HGET', P .. ':names', name)
  return v and string.sub(v, 1, 16) == peer
end
if held(a, ap) and redis.call('SCARD', P .. ':calls:' .. a) < most then
  redis.call('SADD', P .. ':calls:' .. a, b)
  if held(b, bp) then redis.call('SADD', P .. ':calls:' .. b, a) end
end
return 1
"#,
    )
});

/// Updates the user name a peer is listed with in its rooms and tells the
/// members' nodes. ARGV: prefix, peer, name ('' for none), rooms...
pub static SET_USER: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local peer, user = ARGV[2], ARGV[3]
for i = 4, #ARGV do
  local room = ARGV[i]
  local ik = P .. ':minfo:' .. room
  local info = redis.call('HGET', ik, peer)
  if info then
    local m = cjson.decode(info)
    m.u = user
    redis.call('HSET', ik, peer, cjson.encode(m))
    publish_to(redis.call('ZRANGE', P .. ':members:' .. room, 0, -1),
      cjson.encode({k = 'u', r = room, p = peer, u = user}))
  end
end
return 1
"#,
    )
});

/// Writes a node's rooms and names back after Redis lost them (restarted
/// without persistence). ARGV: prefix, the node's id, a count `m` and `m`
/// peers that moved to the node, then `room, mode, cap, n` followed by
/// `n` triples `score, peer, record`, repeated; then `-` and pairs
/// `name, PEER:CAPS`. Returns the names another peer holds meanwhile.
pub static RESTORE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local node, m = ARGV[2], tonumber(ARGV[3])
for j = 1, m do redis.call('HSET', P .. ':moved', ARGV[3 + j], node) end
any_moved = nil
local i = 4 + m
while ARGV[i] ~= '-' do
  local room, mode, cap, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  local rk = P .. ':room:' .. room
  if redis.call('EXISTS', rk) == 0 then
    redis.call('HSET', rk, 'mode', mode, 'cap', cap, 'seq', 0)
    redis.call('SADD', P .. ':rooms', room)
    redis.call('HINCRBY', P .. ':stats', mode .. '_rooms', 1)
  end
  for _ = 1, n do
    local score, peer, info = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
    i = i + 3
    if redis.call('ZADD', P .. ':members:' .. room, 'NX', score, peer) == 1 then
      redis.call('HINCRBY', P .. ':stats', 'members', 1)
    end
    redis.call('HSET', P .. ':minfo:' .. room, peer, info)
    redis.call('SADD', P .. ':prooms:' .. peer, room)
    redis.call('SADD', P .. ':npeers:' .. node_of(peer), peer)
    if tonumber(redis.call('HGET', rk, 'seq')) < score then redis.call('HSET', rk, 'seq', score) end
  end
end
i = i + 1
local clashes = {}
while i < #ARGV do
  local name, value = ARGV[i], ARGV[i + 1]
  i = i + 2
  local peer = string.sub(value, 1, 16)
  if redis.call('HSETNX', P .. ':names', name, value) == 1
     or string.sub(redis.call('HGET', P .. ':names', name), 1, 16) == peer then
    redis.call('SET', P .. ':pname:' .. peer, name)
    redis.call('SADD', P .. ':npeers:' .. node_of(peer), peer)
  else
    table.insert(clashes, name)
  end
end
return clashes
"#,
    )
});

/// Moves a peer whose session a node handed to another (its client
/// resumed there): the peer goes to the new node's set, `P:moved` routes
/// it there, and every live node is told (`m`, with the peer's rooms
/// whole, for the new node's copy; each node then sends the old one a
/// fence). Refused when the old node's lease is gone (its clean-up
/// announces the peer's departure) or the peer is no longer on it.
/// ARGV: prefix, peer, old node, new node. Returns `ok`, `gone` or `moved`.
pub static MOVE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local peer, from, to = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', P .. ':lease:' .. from) == 0 then return 'gone' end
if node_of(peer) ~= from then return 'moved' end
if redis.call('SREM', P .. ':npeers:' .. from, peer) == 1 then
  redis.call('SADD', P .. ':npeers:' .. to, peer)
end
if tonumber(string.sub(peer, 1, 4), 16) == to then
  redis.call('HDEL', P .. ':moved', peer)
else
  redis.call('HSET', P .. ':moved', peer, to)
end
any_moved = nil
local rooms = {}
for _, room in ipairs(redis.call('SMEMBERS', P .. ':prooms:' .. peer)) do
  local meta = redis.call('HMGET', P .. ':room:' .. room, 'mode', 'cap')
  if meta[1] then
    local members = redis.call('ZRANGE', P .. ':members:' .. room, 0, -1)
    local infos = {}
    if #members > 0 then infos = redis.call('HMGET', P .. ':minfo:' .. room, unpack(members)) end
    table.insert(rooms, {r = room, mode = meta[1], cap = tonumber(meta[2]), m = infos})
  end
end
local ids = live_nodes()
local msg = cjson.encode({k = 'm', p = peer, n = to, f = from, ns = ids, rooms = rooms})
for _, id in ipairs(ids) do redis.call('PUBLISH', P .. ':ch:' .. id, msg) end
return 'ok'
"#,
    )
});

/// Forgets where a peer that moved is (its session ended). ARGV: prefix,
/// peer.
pub static UNMOVE: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
forget_moved(ARGV[2])
return 1
"#,
    )
});

/// Every room with its members (admin API, metrics), or only one.
/// ARGV: prefix, [room]. Returns JSON `[{r, mode, cap, m = [records]}]`.
pub static ROOMS: LazyLock<Lua> = LazyLock::new(|| {
    script(
        r#"
local ids
if ARGV[2] then ids = {ARGV[2]} else ids = redis.call('SMEMBERS', P .. ':rooms') end
local out = {}
for _, room in ipairs(ids) do
  local meta = redis.call('HMGET', P .. ':room:' .. room, 'mode', 'cap')
  if meta[1] then
    local members = redis.call('ZRANGE', P .. ':members:' .. room, 0, -1)
    local infos = {}
    if #members > 0 then infos = redis.call('HMGET', P .. ':minfo:' .. room, unpack(members)) end
    table.insert(out, cjson.encode({r = room, mode = meta[1], cap = tonumber(meta[2]), m = infos}))
  end
end
return out
"#,
    )
});
