package main

import (
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"
)

// watchFiles calls reload once the files have stopped changing for quiet
// after a change (a build writes a binary in several steps). It watches
// their directories, so that a file replaced by a rename (an atomic
// deploy) is seen too. files is called again after each reload (a reload
// may name other files). It returns a function that stops watching.
func watchFiles(files func() []string, quiet time.Duration, log *logrus.Entry, reload func()) func() {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.WithError(err).Error("--watch: cannot watch files; reload with SIGHUP")
		return func() {}
	}
	var dirs []string
	var watched []string
	update := func() {
		watched = files()
		for _, f := range watched {
			if d := filepath.Dir(f); !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
				if err := w.Add(d); err != nil {
					log.WithError(err).WithField("dir", d).Error("--watch: cannot watch a directory")
				}
			}
		}
	}
	update()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		defer timer.Stop()
		for {
			select {
			case <-done:
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if slices.Contains(watched, filepath.Clean(ev.Name)) && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename|fsnotify.Chmod) != 0 {
					log.WithFields(logrus.Fields{"file": ev.Name, "op": ev.Op.String()}).Debug("watched file changed")
					timer.Reset(quiet)
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.WithError(err).Warn("--watch: watcher error")
			case <-timer.C:
				log.Info("watched files changed: reloading")
				reload()
				update()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			w.Close()
			<-stopped
		})
	}
}
