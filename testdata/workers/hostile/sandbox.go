package main

// Attacks on the sandbox's file system, devices, sockets and limits.
//
//	/open?path=P        opens P read-write (a device node), else read-only
//	/unix?path=P        connects to the unix socket P
//	/vsock?port=N       binds a vsock port (any CID) and holds it until the next /vsock
//	/cwd                the working directory and what it lists, and what / lists
//	/fill?path=P&mb=N   writes up to N MiB to P, then removes it
//	/bomb?token=T       a fork bomb: every child starts more, forever

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	// A bomb child ("hostile bomb T"): start more, forever.
	if len(os.Args) > 2 && os.Args[1] == "bomb" {
		for {
			if exec.Command("/proc/self/exe", "bomb", os.Args[2]).Start() != nil {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
}

func sandboxAttacks(mux *http.ServeMux) {
	mux.HandleFunc("/open", func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("path")
		fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		mode := "rw"
		if err != nil && !os.IsNotExist(err) {
			fd, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
			mode = "ro"
		}
		if err == nil {
			unix.Close(fd)
		}
		fmt.Fprintf(w, "open %s %s: %s\n", p, mode, result(err))
	})
	mux.HandleFunc("/unix", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.DialTimeout("unix", r.URL.Query().Get("path"), 2*time.Second)
		if err == nil {
			c.Close()
		}
		fmt.Fprintf(w, "unix: %s\n", result(err))
	})
	mux.HandleFunc("/vsock", vsock)
	mux.HandleFunc("/cwd", func(w http.ResponseWriter, r *http.Request) {
		wd, err := os.Getwd()
		fmt.Fprintf(w, "cwd=%s %s\n", wd, result(err))
		for _, d := range []string{".", "/"} {
			es, err := os.ReadDir(d)
			var names []string
			for _, e := range es {
				names = append(names, e.Name())
			}
			fmt.Fprintf(w, "ls %s=%s %s\n", d, strings.Join(names, ","), result(err))
		}
	})
	mux.HandleFunc("/fill", func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("path")
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		f, err := os.Create(p)
		written := 0
		if err == nil {
			chunk := make([]byte, 1<<20)
			for range mb {
				n, werr := f.Write(chunk)
				written += n
				if werr != nil {
					err = werr
					break
				}
			}
			f.Close()
			os.Remove(p)
		}
		fmt.Fprintf(w, "fill: wrote %d bytes: %s\n", written, result(err))
	})
	mux.HandleFunc("/bomb", func(w http.ResponseWriter, r *http.Request) {
		token := r.URL.Query().Get("token")
		started := 0
		var err error
		for started < 100000 {
			if err = exec.Command("/proc/self/exe", "bomb", token).Start(); err != nil {
				break
			}
			started++
		}
		fmt.Fprintf(w, "bomb: started %d: %s\n", started, result(err))
	})
}

var held struct {
	sync.Mutex
	fd int
}

func vsock(w http.ResponseWriter, r *http.Request) {
	port, _ := strconv.Atoi(r.URL.Query().Get("port"))
	held.Lock()
	defer held.Unlock()
	if held.fd > 0 {
		unix.Close(held.fd)
		held.fd = 0
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		if err = unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: uint32(port)}); err != nil {
			unix.Close(fd)
		} else {
			held.fd = fd
		}
	}
	fmt.Fprintf(w, "vsock: %s\n", result(err))
}
