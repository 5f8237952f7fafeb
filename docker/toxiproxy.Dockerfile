# Stand-in for the Toxiproxy image where no registry can be reached: the harness's own
# Toxiproxy-compatible server, taking the real binary's flags (-host, -port, -config).
ARG APP_IMAGE=celery-chaos/app:dev
FROM ${APP_IMAGE}
COPY docker/toxiproxy-cli /toxiproxy-cli
EXPOSE 8474
ENTRYPOINT ["celery-chaos", "toxiproxy"]
CMD ["-host=0.0.0.0", "-port=8474"]
