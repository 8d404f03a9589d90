package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
)

// StatusClientClosed is the status logged (never sent) for a request whose
// client went away before the answer, after nginx's convention.
const StatusClientClosed = 499

// statusFor maps a request failure to the status the client gets.
func statusFor(err error) int {
	var (
		maxBytes *http.MaxBytesError
		bodyErr  *ipc.BodyError
		exitErr  *workers.ExitError
		startErr *ipc.StartError
		protoErr *ipc.ProtocolError
		abortErr *ipc.AbortError
		badResp  *BadResponseError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return StatusClientClosed
	case errors.As(err, &maxBytes):
		return http.StatusRequestEntityTooLarge
	case errors.As(err, &bodyErr):
		return http.StatusBadRequest
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case errors.Is(err, workers.ErrClosed):
		return http.StatusServiceUnavailable
	case errors.As(err, &exitErr), errors.As(err, &startErr), errors.As(err, &protoErr),
		errors.As(err, &abortErr), errors.As(err, &badResp), errors.Is(err, workers.ErrNoWorker):
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}

// fail answers a request that failed before a response head was relayed.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, in *info, err error) {
	in.status = statusFor(err)
	s.onError(w, r, err)
}

// defaultErrorHandler logs the failure once and writes a short plain-text
// answer marked with HeaderError.
func (s *Server) defaultErrorHandler(w http.ResponseWriter, r *http.Request, err error) {
	status := statusFor(err)
	e := s.log.WithError(err).WithField("req_id", w.Header().Get(HeaderRequestID))
	var msg string
	var exitErr *workers.ExitError
	var te *workers.TimeoutError
	switch {
	case status == StatusClientClosed:
		e.Debug("client went away before the response")
		return
	case errors.As(err, &exitErr):
		e.WithFields(logrus.Fields{"pid": exitErr.PID, "exit": exitErr.How(), "stderr": exitErr.Stderr}).Error("worker failed during the request")
		msg = "the worker handling this request failed"
	case errors.As(err, &te):
		e.WithFields(logrus.Fields{"pid": te.PID, "timeout": te.Timeout.String()}).Error("request timed out; worker killed")
		msg = fmt.Sprintf("the worker did not answer within %s", te.Timeout)
	case status == http.StatusBadRequest || status == http.StatusRequestEntityTooLarge:
		e.Info("bad request body")
		msg = "the request body could not be read"
		if status == http.StatusRequestEntityTooLarge {
			msg = "the request body is too large"
		}
	case status == http.StatusServiceUnavailable:
		e.Warn("no worker available")
		msg = "no worker is available"
		w.Header().Set("Retry-After", "1")
	case status == http.StatusBadGateway:
		e.Error("worker failed")
		msg = "the worker failed to answer"
	default:
		e.Error("request failed")
		msg = "internal error"
	}
	h := w.Header()
	for k := range h {
		if k != HeaderRequestID && k != "Retry-After" {
			delete(h, k)
		}
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderError, "true")
	w.WriteHeader(status)
	fmt.Fprintf(w, "%d %s: %s\n", status, http.StatusText(status), msg)
}
