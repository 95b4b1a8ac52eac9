# syntax=docker/dockerfile:1
# Build stage: Debian bookworm Rust toolchain; dependencies compile in their own cached layer.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Runtime: distroless with glibc and CA certificates, no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/mpu-sweeper /usr/local/bin/mpu-sweeper
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mpu-sweeper"]
