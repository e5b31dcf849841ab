# oomtrace daemon image: `docker build -t REGISTRY/oomtrace:TAG .` from the repository root.
#
# build: Debian bookworm with the pinned stable Rust (Cargo.toml [workspace.metadata.toolchains]);
# `cargo xtask setup` adds its musl target, the eBPF programs' dated nightly with rust-src and
# bpf-linker built against Debian's llvm-22-dev (bookworm-security), and checks that their
# LLVM versions agree. The daemon is linked statically (musl), so the runtime stage needs no libc.
FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends musl-tools \
 && cargo xtask setup \
 && rm -rf /var/lib/apt/lists/*
RUN CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked -p oomtrace --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/oomtrace /oomtrace

# runtime: the one static binary and nothing else (no shell, no package manager). `cargo xtask
# image` builds this stage from a binary built on the machine (--build-context build=DIR).
FROM scratch AS runtime
COPY --from=build /oomtrace /oomtrace
# Root, so that the capabilities the DaemonSet adds (BPF, PERFMON) are effective after exec;
# the DaemonSet drops every other capability.
USER 0
ENTRYPOINT ["/oomtrace", "daemon"]
