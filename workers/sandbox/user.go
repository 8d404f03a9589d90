package sandbox

import "syscall"

// LookupUser resolves an Options.User, "USER[:GROUP]" (names or numbers),
// to the identity workers get: without GROUP, the user's primary group;
// never supplementary groups.
func LookupUser(spec string) (*syscall.Credential, error) { return lookupUser(spec) }
