# syntax=docker/dockerfile:1
# mpu-sweeper image: `docker build -t mpu-sweeper .`; the entrypoint runs the controller.

# Build stage: Rust on Debian bookworm, the same glibc (2.36) as the runtime image.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or Cargo.lock
# change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# Newer mtimes than the placeholder build's, so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Runtime: distroless cc (glibc, libgcc, CA certificates, tzdata), no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mpu-sweeper" \
      org.opencontainers.image.description="Kubernetes operator that aborts stale S3 multipart uploads" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /src/target/release/mpu-sweeper /usr/local/bin/mpu-sweeper
# The image's nonroot user; the chart's securityContext runs as the same uid.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mpu-sweeper", "controller"]
