// Package launch is the dispatcher's side of starting a worker process:
// through go-plugin, it starts the process (in its own process group, with
// the parent-death signal, with exactly the environment it is given), passes
// it one socketpair per slot, completes go-plugin's handshake (without
// connecting to the worker's control socket, unless Config.Control) and
// pings every slot (Start); it relays the worker's standard output and error
// to logrus line by line, without go-plugin's parser (Child, workerLog); it
// stops the worker gracefully by closing its slots, or kills its process
// group (Child.Stop, Child.Kill). Of the handshake it accepts only an
// address in the socket directory made for that worker (ErrHandshakeAddress). The wire protocol on the slots is package ipc's; the
// worker's side of the handshake is ipc.ServeWorker, which does not link
// go-plugin.
package launch
