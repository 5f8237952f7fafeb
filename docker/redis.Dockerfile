# Redis from Debian's package, on the local base image (no registry needed). Like the
# upstream `redis:*` image, the command is `redis-server [options]`.
ARG BASE_IMAGE=celery-chaos/base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
