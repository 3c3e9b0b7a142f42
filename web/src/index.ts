/**
 * `@switchboard/sdk`: the browser SDK for the switchboard signaling server.
 *
 * - `client`: `SignalingClient`, what an application uses.
 * - `codec`, `frame`, `message`: the wire protocol, sans-IO.
 * - `sdp`: SDP deflate with the server's preset dictionary.
 * - `ice`: ICE candidate batching.
 * - `outbox`: pacing and packing of what the client sends, within the server's limits.
 * - `resume`: session resume's bookkeeping (held frames, acknowledgements).
 * - `backoff`: reconnect delays.
 */
export * from "./backoff.js";
export * from "./client.js";
export * from "./codec.js";
export * from "./errors.js";
export * from "./frame.js";
export * from "./ice.js";
export * from "./message.js";
export * from "./outbox.js";
export * from "./resume.js";
export { DICTIONARY_ID, dictionary } from "./dictionary.js";
export { deflate, deflateIfSmaller, inflate } from "./sdp.js";
export { Capability } from "./gen/switchboard/v1/signal_pb.js";
