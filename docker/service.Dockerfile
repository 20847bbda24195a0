# One image per shoal binary, FROM scratch: the static binary, the `shoal`
# CLI for the HEALTHCHECK, a non-root user. scripts/build-images fills in
# @HEALTH_PORT@ (Docker does not expand variables in HEALTHCHECK).
FROM scratch
ARG BINARY
ARG PORT
ARG VERSION=dev
LABEL org.opencontainers.image.title="shoal ${BINARY}" \
      org.opencontainers.image.description="shoal: microservices on Docker Swarm with no registry (${BINARY})" \
      org.opencontainers.image.source="https://github.com/shoal-rs/shoal" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"
COPY passwd /etc/passwd
COPY group /etc/group
COPY --chown=10001:10001 data /data
COPY ${BINARY} /app
COPY shoal /shoal
ENV SHOAL_LISTEN=0.0.0.0
USER 10001:10001
WORKDIR /data
EXPOSE ${PORT} 7950/udp
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["/shoal", "healthcheck", "http://127.0.0.1:@HEALTH_PORT@/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app"]
