# syntax=docker/dockerfile:1
# Multi-stage build: compile with the pinned toolchain, ship a slim non-root image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built with OpenSSL (TLS, SASL).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
# Dependencies first, so source edits do not rebuild librdkafka.
COPY Cargo.toml Cargo.lock rust-toolchain.toml build.rs ./
# (Cargo.toml names benches/hot_path.rs, so a stand-in is needed for the manifest to load.)
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/hot_path.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/deps/recaptcha_annotator* target/release/recaptcha-annotator*
COPY src ./src
COPY benches ./benches
# The git revision for --version and annotator_build_info (.git is not sent to the build):
#   docker build --build-arg ANNOTATOR_REVISION=$(git rev-parse --short=12 HEAD) .
ARG ANNOTATOR_REVISION=unknown
ENV ANNOTATOR_REVISION=${ANNOTATOR_REVISION}
RUN cargo build --release --locked && strip target/release/recaptcha-annotator

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/recaptcha-annotator --create-home annotator
COPY --from=build /src/target/release/recaptcha-annotator /usr/local/bin/recaptcha-annotator
COPY config/ /etc/recaptcha-annotator/
USER 10001:10001
WORKDIR /var/lib/recaptcha-annotator
# Every command finds its config without --config (`docker run IMAGE check`), and the admin
# port answers from outside the container; a local run without the image keeps loopback.
ENV ANNOTATOR_CONFIG=/etc/recaptcha-annotator/local.toml \
    ANNOTATOR__ADMIN__LISTEN=0.0.0.0:9464
EXPOSE 9464
ENTRYPOINT ["recaptcha-annotator"]
CMD ["run"]
