package main

// The command line as a person meets it: --help grouped by topic, and
// one-line errors that say what a valid value looks like.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// flagGroups are the topics of --help, each with its flags in the order
// shown. Every flag is in exactly one: a flag registered without a place
// here fails TestHelpGroupsEveryFlag.
var flagGroups = []struct {
	title string
	flags []string
}{
	{"Serving: what to serve, and where", []string{
		"workers",
		"config",
		"listen",
		"tls-cert",
		"tls-key",
		"h2c",
		"trusted-proxies",
	}},
	{"Modes: how workers run and are replaced", []string{
		"mode",
		"pool-size",
		"max-workers",
		"spares",
		"idle-timeout",
		"concurrency",
		"pipeline",
		"max-requests",
		"max-rss",
	}},
	{"Limits: time, size, queueing and health", []string{
		"timeout",
		"start-timeout",
		"queue",
		"queue-timeout",
		"max-body",
		"max-response",
		"max-header-bytes",
		"max-headers",
		"read-header-timeout",
		"read-timeout",
		"write-timeout",
		"keepalive-timeout",
		"ping-interval",
		"ping-timeout",
		"breaker-start-failures",
		"breaker-crash-ratio",
		"breaker-min-requests",
		"breaker-window",
		"worker-log-lines",
		"worker-log-bytes",
	}},
	{"Isolation: what confines each worker (see the README's security model)", []string{
		"env",
		"env-file",
		"pass-env",
		"user",
		"memory-limit",
		"pids-limit",
		"cpu-limit",
		"nofile",
		"sandbox",
		"sandbox-bind",
		"tmp-size",
		"allow-network",
		"checksum",
	}},
	{"Operations: admin listener, logs, reloads, shutdown", []string{
		"admin-listen",
		"admin-show-query",
		"admin-pprof",
		"log-format",
		"log-level",
		"access-log",
		"access-log-query",
		"access-log-flush",
		"check-config",
		"watch",
		"shutdown-timeout",
		"version",
	}},
}

// machineDefaults are what --help says of the defaults that depend on the
// machine, instead of this machine's figure.
var machineDefaults = map[string]string{
	"pool-size":   "the number of CPUs",
	"max-workers": "the number of CPUs; oneshot: twice that",
	"spares":      "the number of CPUs",
}

// synopsis is the first part of --help, and what a bare `dispatcher` prints.
const synopsis = `Usage:
  dispatcher --workers BINARY [flags] [-- worker arguments...]
  dispatcher --config FILE [flags]
  dispatcher --check-config FILE
  dispatcher --version
`

// printHelp writes --help: the synopsis, then every flag by topic.
func printHelp(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, synopsis)
	fmt.Fprint(w, `
Serves HTTP requests by running each in a worker process built with the
sdk. A config file (--config) may set every flag but the Operations ones
by its name, for all functions or for one: see examples/dispatcher.yaml.
Durations take a unit (30s, 500ms, 2m); sizes a binary one (512K, 32M, 1G).
`)
	for _, g := range flagGroups {
		fmt.Fprintf(w, "\n%s\n", g.title)
		for _, name := range g.flags {
			if f := fs.Lookup(name); f != nil {
				printFlag(w, f)
			}
		}
	}
}

// printFlag writes one flag as flag.PrintDefaults does, with two dashes and
// the usage text wrapped to the terminal's usual width.
func printFlag(w io.Writer, f *flag.Flag) {
	arg, usage := flag.UnquoteUsage(f)
	switch {
	case isBool(f.Value):
		arg = ""
	case strings.Contains(f.Usage, "`"):
		arg = " " + arg
	default:
		arg = " " + argName(f.Value)
	}
	fmt.Fprintf(w, "  --%s%s\n", f.Name, arg)
	words := strings.Fields(usage)
	if d, ok := machineDefaults[f.Name]; ok {
		words = append(words, "(default: "+d+")")
	} else if !isZeroDefault(f) {
		words = append(words, "(default "+f.DefValue+")") // kept on one line
	}
	line := "       "
	for _, word := range words {
		if len(line)+1+len(word) > 79 && len(line) > 7 {
			fmt.Fprintln(w, line)
			line = "       "
		}
		line += " " + word
	}
	fmt.Fprintln(w, line)
}

// argName names a flag's value in --help by its type, when its usage names
// none in backquotes.
func argName(v flag.Value) string {
	g, ok := v.(flag.Getter)
	if !ok {
		return "VALUE"
	}
	switch g.Get().(type) {
	case time.Duration:
		return "DURATION"
	case int, int64, uint, uint64:
		return "N"
	case float64:
		return "NUMBER"
	}
	return "VALUE"
}

func isZeroDefault(f *flag.Flag) bool {
	switch f.DefValue {
	case "", "0", "0s", "false", "[]":
		return true
	}
	return false
}

func isBool(v flag.Value) bool {
	b, ok := v.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// hinted wraps a flag's value so that a value of the wrong form is refused
// with an example of the right one (the flag package says "parse error"),
// and records the values set, which flags made with FlagSet.Func do not
// show in String.
type hinted struct {
	flag.Value
	sets *[]string
}

// String returns the value, and the values set if the value's own String
// does not show them.
func (h hinted) String() string {
	if h.Value == nil { // the zero value, made by flag.isZeroValue
		return ""
	}
	v := h.Value.String()
	if v == "" && len(*h.sets) > 0 {
		return strings.Join(*h.sets, "\x00")
	}
	return v
}

func (h hinted) Set(s string) error {
	err := h.Value.Set(s)
	if err == nil {
		*h.sets = append(*h.sets, s)
		return nil
	}
	g, ok := h.Value.(flag.Getter)
	if !ok {
		return err // the value's own message
	}
	switch g.Get().(type) {
	case time.Duration:
		if _, numErr := strconv.ParseFloat(s, 64); numErr == nil {
			return fmt.Errorf("a duration needs a unit, such as %ss, %sms or %sm", s, s, s)
		}
		return errors.New("want a duration with a unit, such as 30s, 500ms or 1m30s")
	case int, int64:
		return errors.New("want a whole number, such as 4")
	case uint, uint64:
		return errors.New("want a whole number, 0 or more, such as 256")
	case float64:
		return errors.New("want a number, such as 0.5 or 2")
	case bool:
		return errors.New("want true or false")
	}
	return err
}

func (h hinted) Get() any {
	if g, ok := h.Value.(flag.Getter); ok {
		return g.Get()
	}
	return nil
}

// hintedBool is hinted for a flag given without a value.
type hintedBool struct{ hinted }

func (hintedBool) IsBoolFlag() bool { return true }

// addHints wraps every flag of fs in hinted.
func addHints(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		h := hinted{f.Value, new([]string)}
		if isBool(f.Value) {
			f.Value = hintedBool{h}
		} else {
			f.Value = h
		}
	})
}

// seeHelp ends the errors about the command line's form.
const seeHelp = "; see dispatcher --help"

// parseArgs sets the flags of fs from args, with the flag package's syntax
// (-name, --name, --name=value, --name value; a boolean flag takes its
// value only as --name=value; -- ends the flags). It returns the
// arguments after --, or flag.ErrHelp for -h and --help. Any other
// argument is an error: the worker binary is --workers', and its own
// arguments follow --.
func parseArgs(fs *flag.FlagSet, args []string) (rest []string, err error) {
	var lastBool string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return args[i+1:], nil
		}
		if len(a) < 2 || a[0] != '-' {
			hint := "the worker binary goes after --workers, and its own arguments after --"
			if lastBool != "" && (a == "true" || a == "false") {
				hint = fmt.Sprintf("a boolean flag takes its value as --%s=%s", lastBool, a)
			}
			return nil, usageErrorf("unexpected argument %q: %s%s", a, hint, seeHelp)
		}
		name := strings.TrimPrefix(a[1:], "-")
		name, value, hasValue := strings.Cut(name, "=")
		if name == "" || name[0] == '-' {
			return nil, usageErrorf("%q: want --name or --name=value%s", a, seeHelp)
		}
		if name == "h" || name == "help" {
			return nil, flag.ErrHelp
		}
		f := fs.Lookup(name)
		if f == nil {
			return nil, usageErrorf("unknown flag --%s%s%s", name, suggestFlag(fs, name), seeHelp)
		}
		lastBool = ""
		switch {
		case isBool(f.Value) && !hasValue:
			value, lastBool = "true", name
		case !hasValue:
			if i+1 == len(args) {
				return nil, usageErrorf("--%s needs a value%s", name, seeHelp)
			}
			i++
			value = args[i]
		}
		if err := fs.Set(name, value); err != nil {
			return nil, usageErrorf("--%s %q: %v%s", name, value, err, seeHelp)
		}
	}
	return nil, nil
}

// flagSynonyms are flags of other servers that people try first, with
// this dispatcher's closest one.
var flagSynonyms = map[string]string{
	"bind":             "listen",
	"port":             "listen",
	"addr":             "listen",
	"address":          "listen",
	"processes":        "pool-size",
	"num-workers":      "pool-size",
	"threads":          "concurrency",
	"graceful-timeout": "shutdown-timeout",
	"max-request-body": "max-body",
	"user-group":       "user",
	"v":                "version",
}

// flagsReplaced are flags of earlier versions, with what replaced them.
var flagsReplaced = map[string]string{
	"breaker-failures": "replaced: crashes caused by requests no longer count one by one; see --breaker-start-failures (failed starts, crash loops) and --breaker-crash-ratio (the share of requests that kill their worker)",
}

// suggestFlag names the flag a mistyped name probably meant, if any.
func suggestFlag(fs *flag.FlagSet, name string) string {
	if s, ok := flagsReplaced[name]; ok {
		return " (" + s + ")"
	}
	if s, ok := flagSynonyms[name]; ok {
		return " (did you mean --" + s + "?)"
	}
	best, bestDist := "", 3
	fs.VisitAll(func(f *flag.Flag) {
		if d := editDistance(strings.ReplaceAll(name, "_", "-"), f.Name); d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	if best == "" {
		return ""
	}
	return " (did you mean --" + best + "?)"
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
