# gemma-server in a container: a Rust builder stage and a small Debian runtime stage running as a non-root
# user. The model is not baked in: mount a folder holding the GGUF at /models (GEMMA_MODELS).
#
#   docker build -t gemma-server .
#   docker run -p 8080:8080 -v ~/.cache/gemma-rs/models:/models:ro gemma-server
#
# The server listens on 0.0.0.0 inside the container only because the container's network is private; give
# it keys (--api-key-file from a mounted secret) before publishing the port beyond the host.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Only what the build needs (not target/ or models): the workspace manifest, the lock file and the crates.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN cargo build --release --locked -p gemma-server --bin gemma-server

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/gemma gemma \
    && mkdir -p /models && chown gemma:gemma /models
COPY --from=builder /src/target/release/gemma-server /usr/local/bin/gemma-server
ENV GEMMA_MODELS=/models
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/gemma-server", "--host", "0.0.0.0", "--port", "8080"]
CMD ["--model", "gemma-3-270m"]
