# syntax=docker/dockerfile:1
# Build: Pingora's zlib-ng needs cmake and a C compiler, which rust:bookworm has but for cmake.
FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin tokengate

# Run: glibc and nothing else, as the distroless nonroot user (65532).
# The default configuration names no secret (conf/ carries the public development one): an
# image started without a mounted secrets file or TOKENGATE_SECRET says so and exits.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tokengate /usr/local/bin/tokengate
COPY k8s/base/tokengate.yaml /etc/tokengate/tokengate.yaml
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/tokengate"]
CMD ["-c", "/etc/tokengate/tokengate.yaml"]
