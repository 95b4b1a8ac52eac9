# syntax=docker/dockerfile:1
# mpu-sweeper image: `docker build -t mpu-sweeper .` builds the binary from source (stage
# `builder`) and puts it on distroless cc (the last stage, the default target); the entrypoint
# runs the controller.
#
# Without a registry (how hack/image.sh builds it for the tests), two switches:
#   --build-arg RUNTIME_BASE=IMAGE   the runtime stage's base instead of distroless cc-debian12
#                                    (hack/image.sh assembles an equivalent from Debian packages)
#   --target prebuilt                the same runtime image around a binary built outside, taken
#                                    from the build context (--build-arg BINARY=PATH in it, default
#                                    `mpu-sweeper`); the Rust builder stage is skipped. E.g.
#     mkdir ctx && cp target/release/mpu-sweeper ctx/ && docker build --target prebuilt -f Dockerfile ctx
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

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
FROM ${RUNTIME_BASE} AS runtime
LABEL org.opencontainers.image.title="mpu-sweeper" \
      org.opencontainers.image.description="Kubernetes operator that aborts stale S3 multipart uploads" \
      org.opencontainers.image.licenses="Apache-2.0"
# The image's nonroot user; the chart's securityContext runs as the same uid.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mpu-sweeper", "controller"]

# The runtime image around a binary built outside this file (`--target prebuilt`).
FROM runtime AS prebuilt
ARG BINARY=mpu-sweeper
COPY ${BINARY} /usr/local/bin/mpu-sweeper

# The default target: the runtime image around the binary built from source above.
FROM runtime
COPY --from=builder /src/target/release/mpu-sweeper /usr/local/bin/mpu-sweeper
