package workers

import (
	"context"
	"errors"
	"io"
	"sync/atomic"

	"github.com/childproc/dispatcher/ipc"
)

// Function is a named function's current pool. A reload swaps in a new
// pool while requests keep flowing: a request that reaches the old pool
// after it began draining is sent to the new one.
type Function struct {
	name string
	pool atomic.Pointer[Pool]
}

// NewFunction returns a Function served by p.
func NewFunction(name string, p *Pool) *Function {
	f := &Function{name: name}
	f.pool.Store(p)
	return f
}

// Name returns the function's name.
func (f *Function) Name() string { return f.name }

// Pool returns the function's current pool.
func (f *Function) Pool() *Pool { return f.pool.Load() }

// Swap makes p the function's pool and returns the previous one, which
// the caller drains.
func (f *Function) Swap(p *Pool) *Pool { return f.pool.Swap(p) }

// RoundTrip is Pool.RoundTrip on the current pool. A streamed body is
// wrapped in one *ipc.Replay for all pools: a retry in the old pool may
// have read some of it before the pool refused it.
func (f *Function) RoundTrip(ctx context.Context, req *ipc.Request, body io.Reader) (*Response, error) {
	rp, own := replayOf(req, body)
	if own {
		body = rp
	}
	for {
		p := f.pool.Load()
		resp, err := p.RoundTrip(ctx, req, body)
		if errors.Is(err, ErrClosed) && f.pool.Load() != p {
			continue // refused before it reached a worker: a reload replaced p
		}
		if err != nil && own {
			rp.Close()
		}
		return resp, err
	}
}
