package main

// The identity workers run as (README, "Security model"): never root by
// default.

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"syscall"

	"github.com/childproc/dispatcher/workers/sandbox"
	"github.com/sirupsen/logrus"
)

// defaultUser is whom workers of a dispatcher running as root run as when
// no --user is given (NGINX Unit and PHP-FPM do the same): the system's
// nobody, or 65534:65534 where it has no entry.
const defaultUser = "nobody"

// workerUser returns the --user workers get: the flag, or, for a dispatcher
// running as root, defaultUser's numbers (defaulted is then true). Empty
// means the dispatcher's own identity.
func (f *isolationFlags) workerUser() (spec string, defaulted bool) {
	if f.user != "" || os.Geteuid() != 0 {
		return f.user, false
	}
	if u, err := user.Lookup(defaultUser); err == nil {
		gid := u.Gid
		if gid == "" {
			gid = u.Uid
		}
		return u.Uid + ":" + gid, true
	}
	return "65534:65534", true
}

// logWorkerUsers says once, at start, whom the workers run as when that was
// not asked for, and warns of workers running as root on purpose.
func logWorkerUsers(fns []*options, log *logrus.Entry) {
	var defaulted, root bool
	for _, fo := range fns {
		spec, d := fo.isolation.workerUser()
		if d && !defaulted {
			defaulted = true
			log.WithField("user", defaultUser+" ("+spec+")").Info("workers run as an unprivileged user: the dispatcher runs as root and no --user was given (--user root runs them as root)")
		}
		if !d && spec != "" && !root {
			if cred, err := sandbox.LookupUser(spec); err == nil && cred.Uid == 0 {
				root = true
				log.WithField("user", spec).Warn("workers run as root (--user): a worker can leave its cell, signal, trace and read the dispatcher, and do anything root can")
			}
		}
	}
}

// checkUserCanExecute reports, as a usage error naming the path and the
// user, a worker binary that the workers' user cannot execute: a file or a
// directory above it that the user may not execute or search (a binary
// built into a private directory, for example).
func checkUserCanExecute(path, spec string, defaulted bool) error {
	cred, err := sandbox.LookupUser(spec)
	if err != nil || cred.Uid == 0 {
		return nil // sandbox.New says what is wrong with it
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil // checkExecutable said it exists: a race, which the start reports
	}
	who := "user " + spec
	if defaulted {
		who = fmt.Sprintf("user %s (%s), whom workers run as when the dispatcher runs as root (choose another with --user)", defaultUser, spec)
	}
	for p := real; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		m := uint32(fi.Mode().Perm())
		var bit uint32 = 0o001
		switch {
		case st.Uid == cred.Uid:
			bit = 0o100
		case st.Gid == cred.Gid:
			bit = 0o010
		}
		if m&bit == 0 {
			what := "cannot search directory " + p
			if p == real {
				what = "cannot execute it"
			}
			return usageErrorf("worker binary %s: %s %s (owner %d, group %d, mode %#o): make it and its directories executable by that user", path, who, what, st.Uid, st.Gid, m)
		}
		if p == "/" {
			return nil
		}
	}
}
