# syntax=docker/dockerfile:1
#
# A handler built elsewhere, on the dispatcher image (the target
# "dispatcher" of deploy/Dockerfile). Copy this file into your handler's
# module, then:
#
#   CGO_ENABLED=0 go build -trimpath -o handler .
#   docker build -f handler.Dockerfile -t my-handler .
#   docker run --rm -p 8080:8080 my-handler
#
# DISPATCHER_IMAGE names the dispatcher image to build on; HANDLER_BINARY
# is the worker binary's path in the build context. Build it static
# (CGO_ENABLED=0): the image has no libc.

ARG DISPATCHER_IMAGE=dispatcher
FROM ${DISPATCHER_IMAGE}
ARG HANDLER_BINARY=handler
# Owned by root and read-only: a worker cannot replace the binary that the
# next worker will run.
COPY --chown=0:0 --chmod=0555 ${HANDLER_BINARY} /app/bin/handler
