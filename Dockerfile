# oomtrace daemon image: `docker build -t REGISTRY/oomtrace:TAG .` from the repository root.
#
# Build stage: Debian bookworm with the Rust toolchain. `cargo xtask setup` installs what the
# eBPF programs need (the nightly toolchain with rust-src, and bpf-linker built against LLVM 22
# from Debian's llvm-22-dev, which comes from the bookworm-security suite; the bookworm images
# already list it in /etc/apt/sources.list.d/debian.sources), then the daemon is built; its
# build script compiles and embeds the eBPF programs.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN apt-get update -qq \
 && cargo xtask setup \
 && rm -rf /var/lib/apt/lists/*
RUN cargo build --release --locked -p oomtrace \
 && cp target/release/oomtrace /oomtrace

# Final stage: glibc and libgcc (all the binary links against, besides the kernel) and nothing
# else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /oomtrace /oomtrace
# Root, so that the capabilities the DaemonSet adds (BPF, PERFMON) are effective after exec;
# the DaemonSet drops every other capability.
USER 0
ENTRYPOINT ["/oomtrace", "daemon"]
