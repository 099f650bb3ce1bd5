# pgsluice container image: built in a Rust image, run from a slim Debian as a non-root user.
#   docker build -t pgsluice .
#   docker run -p 6432:6432 -p 9930:9930 -v ./pgsluice.toml:/etc/pgsluice/pgsluice.toml pgsluice

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin pgsluice \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin pgsluice

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin pgsluice
COPY --from=build /src/target/release/pgsluice /usr/local/bin/pgsluice
# A configuration to start from: listens on every address, database "app" on host "postgres".
# Mount or bake your own at the same path.
COPY deploy/docker/pgsluice.toml /etc/pgsluice/pgsluice.toml
USER pgsluice
EXPOSE 6432 9930
# /health answers 200 while the process serves; bash's /dev/tcp needs no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9930 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
# SIGTERM drains (see shutdown_timeout); the orchestrator's grace period should exceed it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgsluice"]
CMD ["run", "--config", "/etc/pgsluice/pgsluice.toml"]
