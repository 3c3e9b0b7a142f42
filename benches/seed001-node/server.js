// Seed 001's signaling server (1:1 rooms over the `ws` package), as the
// tutorial in ../shared/seeds/001 describes it: rooms are a Map<roomId,
// Set<ws>>, at most two members; join -> joined (and full, ready with the
// later joiner as initiator), offer/answer/ice relayed to the other member,
// leave -> left and peer-left. Written here so that benches/compare.sh can
// run the same load against it and against switchboard's /compat/pair.
//
//   node server.js [port]
"use strict";
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] || 3000);
const wss = new WebSocketServer({ port });
const rooms = new Map();

function send(ws, msg) {
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg));
}

function leave(ws) {
  const roomId = ws.roomId;
  if (!roomId) return;
  const room = rooms.get(roomId);
  ws.roomId = null;
  if (!room) return;
  room.delete(ws);
  for (const other of room) send(other, { type: "peer-left" });
  if (room.size === 0) rooms.delete(roomId);
}

wss.on("connection", (ws) => {
  ws.roomId = null;
  ws.on("message", (data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    switch (msg.type) {
      case "join": {
        const roomId = String(msg.roomId || "").trim();
        if (!roomId) return send(ws, { type: "error", message: "roomId is required" });
        leave(ws);
        let room = rooms.get(roomId);
        if (!room) rooms.set(roomId, (room = new Set()));
        if (room.size >= 2) return send(ws, { type: "full", roomId });
        room.add(ws);
        ws.roomId = roomId;
        send(ws, { type: "joined", roomId, peers: room.size - 1 });
        if (room.size === 2) {
          for (const member of room) send(member, { type: "ready", isInitiator: member === ws });
        }
        return;
      }
      case "offer":
      case "answer":
      case "ice": {
        const room = ws.roomId && rooms.get(ws.roomId);
        if (!room) return send(ws, { type: "error", message: "join a room first" });
        for (const other of room) if (other !== ws) other.send(data.toString());
        return;
      }
      case "leave":
        leave(ws);
        return send(ws, { type: "left" });
    }
  });
  ws.on("close", () => leave(ws));
});

console.log(`seed 001 signaling server on ws://127.0.0.1:${port}`);
