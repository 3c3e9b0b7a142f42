# syntax=docker/dockerfile:1
# Multi-stage build of the switchboard server. No protoc is needed: the
# protocol crate's build.rs compiles proto/ with protox. The demo page is embedded in the binary.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The slim image has gcc; jemalloc's build also needs make.
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY proto proto
COPY src src
COPY benches benches
COPY examples examples
COPY tests/data tests/data
COPY web/demo-dist web/demo-dist
RUN cargo build --release --locked --bin switchboard

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home switchboard
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
USER switchboard
EXPOSE 8080
# Listen on all interfaces inside the container; put TLS and tokens in front
# or pass --tls-cert/--tls-key and --auth token (see SECURITY.md).
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["--listen", "0.0.0.0:8080"]
