package workers

import (
	"errors"
	"fmt"
	"time"
)

// Mode is how a pool runs its worker processes.
type Mode int

const (
	// ModePool keeps Config.Size workers running (the default).
	ModePool Mode = iota
	// ModeOnDemand runs no worker until a request needs one, starts workers
	// as load needs them up to Config.MaxWorkers, and stops a worker that
	// stayed idle for Config.IdleTimeout.
	ModeOnDemand
	// ModeOneShot runs every request in a fresh worker that is discarded
	// afterwards: nothing (memory, files, globals) survives from one request
	// to the next. Config.Spares workers are started and handshaken ahead of
	// time so the spawn is not on the request's path.
	ModeOneShot
)

func (m Mode) String() string {
	switch m {
	case ModePool:
		return "pool"
	case ModeOnDemand:
		return "ondemand"
	case ModeOneShot:
		return "oneshot"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses "pool", "ondemand" or "oneshot".
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{ModePool, ModeOnDemand, ModeOneShot} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q (want pool, ondemand or oneshot)", s)
}

// Defaults of the mode and admission settings.
const (
	DefaultIdleTimeout    = 60 * time.Second
	DefaultQueuePerWorker = 100
	DefaultQueueTimeout   = 10 * time.Second
)

// ErrOverloaded matches an *OverloadError.
var ErrOverloaded = errors.New("workers: overloaded")

// OverloadError reports a request refused by admission control: the wait
// queue was full, or the request waited longer than Config.QueueTimeout for
// a worker. The request reached no worker; the client may retry after
// RetryAfter.
type OverloadError struct {
	Reason     string
	RetryAfter time.Duration
}

func (e *OverloadError) Error() string { return "workers: request refused: " + e.Reason }

func (e *OverloadError) Is(target error) bool { return target == ErrOverloaded }
