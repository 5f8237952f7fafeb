# RabbitMQ from Debian's package, on the local base image (no registry needed).
# Like the upstream `rabbitmq:*-management` image: AMQP on 5672, the management API on
# 15672, configured by RABBITMQ_* variables, guest/guest allowed from anywhere it listens.
ARG BASE_IMAGE=celery-chaos/base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server \
 && rabbitmq-plugins enable --offline rabbitmq_management \
 && printf 'loopback_users = none\n' > /etc/rabbitmq/rabbitmq.conf \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
# Debian's /usr/sbin/rabbitmq-server wrapper as PID 1 ignores SIGTERM (a 10 s stop, then
# SIGKILL); the script below execs the Erlang VM, which stops cleanly on SIGTERM.
ENV RUNNING_UNDER_SYSTEMD=true HOME=/var/lib/rabbitmq
USER rabbitmq
EXPOSE 5672 15672
CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
