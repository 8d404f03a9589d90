package main

// The listeners: the admin listener's unix socket, and accepting on
// through descriptor exhaustion.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// unixPrefix marks an --admin-listen that is a unix socket's path.
const unixPrefix = "unix:"

// listenAdmin listens on --admin-listen's address: host:port, or
// unix:PATH, a socket of mode 0600 that Close removes.
func listenAdmin(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, unixPrefix)
	if !ok {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, listenError("admin-listen", addr, err)
		}
		return ln, nil
	}
	ln, err := listenUnix(path)
	if errors.Is(err, syscall.EADDRINUSE) {
		// A socket left by a dispatcher that did not close (SIGKILL) is
		// removed; one that answers, or anything but a socket, is not.
		var fi os.FileInfo
		if fi, err = os.Lstat(path); err == nil {
			switch {
			case fi.Mode().Type() != os.ModeSocket:
				return nil, usageErrorf("--admin-listen %s: %s exists and is not a socket; not replacing it", addr, path)
			case socketAnswers(path):
				return nil, listenError("admin-listen", addr, syscall.EADDRINUSE)
			}
			if err = os.Remove(path); err == nil {
				ln, err = listenUnix(path)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("--admin-listen %s: %w", addr, err)
	}
	return ln, nil
}

// listenUnix listens on a new unix socket at path, of mode 0600 from the
// start: the socket's mode is set before bind creates the file.
func listenUnix(path string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = unix.Fchmod(int(fd), 0o600) }); cerr != nil {
			return cerr
		}
		return err
	}}
	ln, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil { // whatever the kernel did with the fchmod
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// socketAnswers reports whether a process accepts connections on the unix
// socket at path.
func socketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// shedListener accepts on when the process is out of descriptors (EMFILE,
// ENFILE). net/http's Serve backs off on such errors, doubling its pause
// up to a second, so that a listener would stay deaf for up to a second
// after descriptors are free again. Here Accept returns no such error: it
// tries again every shedPause, so a connection is accepted within that of
// a descriptor coming free; and connections still pending after shedGrace
// are closed, each accepted with a descriptor held in reserve for that and
// closed at once, so that their clients learn at once rather than hang in
// the backlog. Each episode is logged when it starts and when it ends; one
// that starts again within shedRelog of the last one's end (a descriptor
// came free for a moment) is logged at debug level only.
type shedListener struct {
	net.Listener
	name string // the flag, for the log
	log  *logrus.Entry

	mu      sync.Mutex
	reserve *os.File
	episode atomic.Bool               // descriptors ran out, and have not been available since
	shed    atomic.Int64              // connections closed in the current episode
	ended   atomic.Pointer[time.Time] // when the last episode ended
}

// shedPause is the wait between accepts while descriptors are exhausted;
// shedGrace, how long pending connections may wait for one.
const (
	shedPause = 5 * time.Millisecond
	shedGrace = 100 * time.Millisecond
	shedRelog = time.Second
)

func newShedListener(ln net.Listener, name string, log *logrus.Entry) *shedListener {
	l := &shedListener{Listener: ln, name: name, log: log}
	l.reserve, _ = os.Open(os.DevNull)
	return l
}

func (l *shedListener) Accept() (net.Conn, error) {
	var graceEnd time.Time
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			l.endEpisode()
			return c, nil
		}
		if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) {
			return nil, err
		}
		if !l.episode.Swap(true) {
			e := l.log.WithError(err).WithField("listener", l.name)
			if end := l.ended.Load(); end != nil && time.Since(*end) < shedRelog {
				e.Debug("out of file descriptors again")
			} else {
				e.Error("out of file descriptors: closing new connections at accept until some are free")
			}
		}
		switch {
		case graceEnd.IsZero():
			graceEnd = time.Now().Add(shedGrace)
		case time.Now().After(graceEnd):
			for {
				c, ok := l.shedOne()
				if c != nil {
					l.endEpisode()
					return c, nil
				}
				if !ok {
					break
				}
			}
			graceEnd = time.Time{} // a fresh grace for new arrivals
			continue
		}
		time.Sleep(shedPause)
	}
}

// endEpisode logs the end of an episode of exhaustion, if one was on.
func (l *shedListener) endEpisode() {
	if l.episode.Swap(false) {
		now := time.Now()
		l.ended.Store(&now)
		l.log.WithFields(logrus.Fields{"listener": l.name, "shed": l.shed.Swap(0)}).Warn("file descriptors available again")
	}
}

// shedOne accepts one pending connection with the reserve descriptor and
// closes it, unless descriptors came free meanwhile (the reserve opens
// again): then it returns the connection, to be served. ok reports
// whether a connection was accepted (false when none is pending, or the
// reserve could not be had).
func (l *shedListener) shedOne() (keep net.Conn, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reserve == nil {
		l.reserve, _ = os.Open(os.DevNull)
		return nil, false
	}
	l.reserve.Close()
	l.reserve = nil
	// The pending connection may be gone: wait for another no longer
	// than a pause.
	dl, _ := l.Listener.(interface{ SetDeadline(time.Time) error })
	if dl != nil {
		_ = dl.SetDeadline(time.Now().Add(shedPause))
	}
	c, err := l.Listener.Accept()
	if dl != nil {
		_ = dl.SetDeadline(time.Time{})
	}
	l.reserve, _ = os.Open(os.DevNull)
	switch {
	case err != nil:
		return nil, false
	case l.reserve != nil:
		return c, true
	}
	c.Close()
	l.shed.Add(1)
	l.reserve, _ = os.Open(os.DevNull) // the descriptor c held
	return nil, true
}

func (l *shedListener) Close() error {
	err := l.Listener.Close() // first: it ends an Accept of shedOne
	l.mu.Lock()
	if l.reserve != nil {
		l.reserve.Close()
		l.reserve = nil
	}
	l.mu.Unlock()
	return err
}
