//! Batching of trickled ICE candidates (filled in below).
