# syntax=docker/dockerfile:1
# authd container image: built on Debian bookworm, run on bookworm-slim as an unprivileged user.
#
#   docker build -t authd:0.1.0 .
#   docker run --read-only --tmpfs /run/authd --tmpfs /tmp -v authd-data:/var/lib/authd \
#     -v ./docker/tls:/etc/authd/tls:ro -p 8443:8443 --stop-timeout 35 authd:0.1.0
#
# authd runs as PID 1: it handles SIGTERM (graceful drain, supervisor.drain_timeout = 30 s) and
# reaps orphans itself, so no init shim is needed. The root filesystem can be read-only: authd
# writes only /run/authd (PID file, control socket), /var/lib/authd (SQLite store, backups) and
# /tmp (the ephemeral signing key when tokens.signing_keys is empty). scripts/validate-deploy
# checks that the package lists below match what the binary links (readelf) and scripts/deps.

ARG DEBIAN_RELEASE=bookworm

# ---- build ----------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE} AS build
ENV DEBIAN_FRONTEND=noninteractive
# BUILD_PACKAGES (kept in sync with scripts/deps by scripts/validate-deploy; configure also
# checks for cmocka, which only the unit tests use)
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential autoconf automake libtool pkg-config \
        libssl-dev libevent-dev libhiredis-dev libmongoc-dev libbson-dev libconfig-dev \
        libargon2-dev libsqlite3-dev libjansson-dev libsystemd-dev libhttp-parser-dev \
        libunistring-dev libidn2-dev zlib1g-dev libcmocka-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN autoreconf -fi \
    && mkdir /build && cd /build \
    && /src/configure --prefix=/usr --sysconfdir=/etc --localstatedir=/var \
    && make -j"$(nproc)" authd \
    && install -D -m 0755 authd /out/usr/sbin/authd \
    && strip /out/usr/sbin/authd \
    && /out/usr/sbin/authd version

# ---- runtime --------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# RUNTIME_PACKAGES (the shared libraries authd links, the password blocklist, CA certificates)
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libssl3 libevent-2.1-7 libevent-openssl-2.1-7 libevent-pthreads-2.1-7 \
        libhiredis0.14 libmongoc-1.0-0 libbson-1.0-0 libconfig9 libargon2-1 libsqlite3-0 \
        libjansson4 libsystemd0 libhttp-parser2.9 libunistring2 libidn2-0 zlib1g \
        john-data ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 authd \
    && useradd --system --uid 10001 --gid authd --home-dir /var/lib/authd --no-create-home \
        --shell /usr/sbin/nologin authd \
    && install -d -o authd -g authd -m 0750 /var/lib/authd /var/lib/authd/backups /run/authd \
    && install -d -o root -g authd -m 0750 /etc/authd /etc/authd/tls /etc/authd/keys

COPY --from=build /out/usr/sbin/authd /usr/sbin/authd
COPY --chown=root:authd --chmod=0640 docker/authd.conf /etc/authd/authd.conf
COPY --chmod=0755 docker/healthcheck /usr/local/bin/authd-healthcheck

USER 10001:10001
WORKDIR /var/lib/authd
VOLUME ["/var/lib/authd"]
EXPOSE 8443 9100
STOPSIGNAL SIGTERM
# Liveness from inside the container: GET /healthz on the admin listener (no curl needed).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/authd-healthcheck"]
ENTRYPOINT ["/usr/sbin/authd", "--config", "/etc/authd/authd.conf"]
CMD ["serve"]
