# The Portcullis container image: a static gateway binary, the built-in policy plugins and
# CA certificates on an empty base; runs as a numeric non-root user with a read-only root
# filesystem. docs/deploy.md walks through running it.
#
#   docker build -t portcullis .            # from source: stages `build` → `rootfs` → final
#   podman build -t portcullis .            # the same
#
# The final stage copies its files from the stage named by ROOTFS. By default that is
# `build`, which compiles everything from this repository. `--build-arg ROOTFS=prebuilt`
# takes them instead from a directory `rootfs/` + `writable/` in the build context, made by
# deploy/container/assemble from binaries built elsewhere: that is how the test suite builds
# the image without pulling a base image (scripts/container-test).

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG ROOTFS=build

# ---- build: the static gateway and the built-in plugins, from source ---------------------
FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl wasm32-wasip2
WORKDIR /src
COPY . .
# The plugins first: the gateway's build script embeds authn and authz from the same
# target directory, so the second build finds them compiled.
RUN cargo build --locked --profile plugin --target wasm32-wasip2 \
      -p authn -p authz -p rate-limit -p redact -p route \
 && cargo build --locked --release --target x86_64-unknown-linux-musl --bin portcullis \
 && deploy/container/assemble target/x86_64-unknown-linux-musl/release/portcullis \
      target/wasm32-wasip2/plugin /etc/ssl/certs/ca-certificates.crt /image

# ---- prebuilt: the same tree, assembled outside (the test suite's path) -------------------
FROM scratch AS prebuilt
COPY rootfs/ /image/rootfs/
COPY writable/ /image/writable/

FROM ${ROOTFS} AS rootfs

# ---- the image ------------------------------------------------------------------------------
FROM scratch
COPY --from=rootfs /image/rootfs/ /
COPY --from=rootfs --chown=65532:65532 /image/writable/ /
# A numeric user (Kubernetes' runAsNonRoot can verify it without /etc/passwd).
USER 65532:65532
# The compile cache and the audit trail; temporary files. With --read-only (or
# readOnlyRootFilesystem) mount writable volumes here.
VOLUME ["/var/cache/portcullis", "/var/lib/portcullis", "/tmp"]
ENV XDG_CACHE_HOME=/var/cache \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# 8080: MCP (/mcp, legacy /sse + /message). 9090: the admin API, /healthz and /readyz.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
