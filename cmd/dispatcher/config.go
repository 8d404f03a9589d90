package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// A config file (--config) declares the functions one dispatcher serves:
//
//	listen: ":8080"            # any global flag, by its name
//	timeout: 10s               # a per-function flag here: the default of every function
//	functions:
//	  - name: hello            # [a-z0-9_-]; default: the binary's name
//	    route: /hello          # path prefix (default /)
//	    strip-prefix: true     # the handler sees /x for /hello/x
//	    host: api.example.com  # optional
//	    workers: ./bin/hello   # relative to the file's directory
//	    args: [--greeting, hi]
//	    mode: ondemand         # any per-function flag, by its name
//	    env: {GREETING: hi}    # a map or a list of KEY=VALUE
//	    env-file: hello.env    # KEY=VALUE lines, relative to the file's directory
//
// Values are the flags' own: durations like 10s, sizes like 256M. The
// command line's flags override the file's top level; a function's own
// settings override both. Every error names the file, the line and the
// field.

// globalFlags are the settings of the dispatcher as a whole: they may not
// appear inside a function.
var globalFlags = map[string]bool{
	"listen": true, "admin-listen": true, "admin-pprof": true, "admin-show-query": true, "shutdown-timeout": true, "log-format": true, "log-level": true,
	"access-log": true, "access-log-query": true, "access-log-flush": true, "config": true, "check-config": true, "watch": true,
	"tls-cert": true, "tls-key": true, "h2c": true, "read-header-timeout": true, "read-timeout": true,
	"write-timeout": true, "keepalive-timeout": true, "max-header-bytes": true,
}

// functionKeys are the keys of a function that are not flags.
var functionKeys = map[string]bool{"name": true, "route": true, "host": true, "args": true, "strip-prefix": true}

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// configFile is a parsed config file.
type configFile struct {
	path      string
	dir       string
	top       []setting
	functions []configFunction
}

type configFunction struct {
	line        int
	index       int
	settings    []setting
	name        string
	route       string
	stripPrefix bool
	host        string
	args        []string
}

// setting is one flag set by the file.
type setting struct {
	key    string
	values []string // one per flag.Set call
	line   int
}

// configError is an error in a config file, at a line.
func configError(path string, line int, format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf("%s:%d: %s", path, line, fmt.Sprintf(format, args...))}
}

func loadConfig(path string) (*configFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErrorf("--config: %v", err)
	}
	abs, _ := filepath.Abs(path)
	cf := &configFile{path: path, dir: filepath.Dir(abs)}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, usageErrorf("%s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return nil, configError(path, 1, "empty file: want a mapping with a functions list")
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, configError(path, root.Line, "want a mapping at the top level")
	}
	var fnList *yaml.Node
	for i := 0; i < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value == "functions" {
			fnList = v
			continue
		}
		s, err := cf.setting(k, v, "")
		if err != nil {
			return nil, err
		}
		if s.key == "env-file" {
			for i := range s.values {
				s.values[i] = cf.resolve(s.values[i])
			}
		}
		cf.top = append(cf.top, s)
	}
	if fnList == nil || fnList.Kind != yaml.SequenceNode || len(fnList.Content) == 0 {
		line := root.Line
		if fnList != nil {
			line = fnList.Line
		}
		return nil, configError(path, line, "functions: want a list of at least one function")
	}
	names := map[string]int{}
	for i, fn := range fnList.Content {
		f, err := cf.function(i, fn)
		if err != nil {
			return nil, err
		}
		if prev, ok := names[f.name]; ok {
			return nil, configError(path, f.line, "functions[%d]: name %q already used by functions[%d]", i, f.name, prev)
		}
		names[f.name] = i
		cf.functions = append(cf.functions, f)
	}
	return cf, nil
}

func (cf *configFile) function(i int, n *yaml.Node) (configFunction, error) {
	f := configFunction{line: n.Line, index: i, route: "/"}
	where := fmt.Sprintf("functions[%d]", i)
	if n.Kind != yaml.MappingNode {
		return f, configError(cf.path, n.Line, "%s: want a mapping", where)
	}
	for j := 0; j < len(n.Content); j += 2 {
		k, v := n.Content[j], n.Content[j+1]
		switch k.Value {
		case "name", "route", "host":
			if v.Kind != yaml.ScalarNode {
				return f, configError(cf.path, v.Line, "%s.%s: want a string", where, k.Value)
			}
			switch k.Value {
			case "name":
				if !validName.MatchString(v.Value) {
					return f, configError(cf.path, v.Line, "%s.name %q: want 1-63 of a-z, 0-9, _ and -, starting with a letter or digit", where, v.Value)
				}
				f.name = v.Value
			case "route":
				if !strings.HasPrefix(v.Value, "/") {
					return f, configError(cf.path, v.Line, "%s.route %q: want a path prefix starting with /", where, v.Value)
				}
				f.route = v.Value
			case "host":
				if v.Value == "" || strings.ContainsAny(v.Value, "/ :") {
					return f, configError(cf.path, v.Line, "%s.host %q: want a host name without port", where, v.Value)
				}
				f.host = v.Value
			}
		case "strip-prefix":
			b, err := strconv.ParseBool(v.Value)
			if v.Kind != yaml.ScalarNode || err != nil {
				return f, configError(cf.path, v.Line, "%s.strip-prefix: want true or false", where)
			}
			f.stripPrefix = b
		case "args":
			if v.Kind != yaml.SequenceNode {
				return f, configError(cf.path, v.Line, "%s.args: want a list of strings", where)
			}
			for _, a := range v.Content {
				if a.Kind != yaml.ScalarNode {
					return f, configError(cf.path, a.Line, "%s.args: want a list of strings", where)
				}
				f.args = append(f.args, a.Value)
			}
		default:
			s, err := cf.setting(k, v, where+".")
			if err != nil {
				return f, err
			}
			if globalFlags[s.key] {
				return f, configError(cf.path, k.Line, "%s%s is a setting of the whole dispatcher: put it at the top level", where+".", s.key)
			}
			if s.key == "workers" || s.key == "env-file" {
				for i := range s.values {
					s.values[i] = cf.resolve(s.values[i])
				}
			}
			f.settings = append(f.settings, s)
		}
	}
	var workers string
	for _, s := range f.settings {
		if s.key == "workers" {
			workers = s.values[0]
		}
	}
	if workers == "" {
		return f, configError(cf.path, n.Line, "%s: workers (the worker binary) is required", where)
	}
	if f.stripPrefix && strings.TrimSuffix(f.route, "/") == "" {
		return f, configError(cf.path, n.Line, "%s.strip-prefix: the route / has no prefix to strip", where)
	}
	if f.name == "" {
		f.name = strings.ToLower(filepath.Base(workers))
		if !validName.MatchString(f.name) {
			return f, configError(cf.path, n.Line, "%s: give it a name (its binary's name %q is not one)", where, f.name)
		}
	}
	return f, nil
}

// setting checks one key: value pair naming a flag.
func (cf *configFile) setting(k, v *yaml.Node, where string) (setting, error) {
	s := setting{key: k.Value, line: k.Line}
	if functionKeys[s.key] {
		return s, configError(cf.path, k.Line, "%s%s: a setting of one function: put it in an entry of functions", where, s.key)
	}
	if commandLineOnly[s.key] {
		return s, configError(cf.path, k.Line, "%s%s: only on the command line", where, s.key)
	}
	if flagNames[s.key] == nil {
		hint := ""
		if alt := strings.ReplaceAll(s.key, "_", "-"); flagNames[alt] != nil {
			hint = fmt.Sprintf(" (did you mean %s?)", alt)
		} else if r, ok := flagsReplaced[s.key]; ok {
			hint = " (" + r + ")"
		}
		return s, configError(cf.path, k.Line, "%s%s: unknown setting%s", where, s.key, hint)
	}
	switch v.Kind {
	case yaml.ScalarNode:
		s.values = []string{v.Value}
	case yaml.SequenceNode:
		if !repeatable[s.key] {
			return s, configError(cf.path, v.Line, "%s%s: want a single value, not a list", where, s.key)
		}
		for _, e := range v.Content {
			if e.Kind != yaml.ScalarNode {
				return s, configError(cf.path, e.Line, "%s%s: want a list of values", where, s.key)
			}
			s.values = append(s.values, e.Value)
		}
	case yaml.MappingNode:
		if s.key != "env" {
			return s, configError(cf.path, v.Line, "%s%s: want a single value, not a mapping", where, s.key)
		}
		for i := 0; i < len(v.Content); i += 2 {
			s.values = append(s.values, v.Content[i].Value+"="+v.Content[i+1].Value)
		}
	default:
		return s, configError(cf.path, v.Line, "%s%s: want a value", where, s.key)
	}
	return s, nil
}

// resolve makes a worker path relative to the file's directory.
func (cf *configFile) resolve(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(cf.dir, p)
}

// repeatable are the flags that take a list.
var repeatable = map[string]bool{"env": true, "env-file": true, "pass-env": true, "trusted-proxies": true, "sandbox-bind": true}

// flagNames are the dispatcher's flags, by name (filled from a flag set).
var flagNames = func() map[string]*flag.Flag {
	fs := newFlagSet(&options{})
	m := map[string]*flag.Flag{}
	fs.VisitAll(func(f *flag.Flag) { m[f.Name] = f })
	return m
}()

// apply sets the settings on fs, naming the line of any bad value.
func (cf *configFile) apply(fs *flag.FlagSet, settings []setting, where string) error {
	for _, s := range settings {
		for _, v := range s.values {
			if err := fs.Set(s.key, v); err != nil {
				return configError(cf.path, s.line, "%s%s: invalid value %q: %v", where, s.key, v, err)
			}
		}
	}
	return nil
}

// locate turns a validation error about a flag (its message starts with
// --name) into one naming the line that set it.
func (cf *configFile) locate(err error, f *configFunction) error {
	var ue *UsageError
	if !errors.As(err, &ue) {
		return err
	}
	key, _, _ := strings.Cut(strings.TrimPrefix(ue.Msg, "--"), " ")
	key = strings.TrimSuffix(key, ":")
	where := ""
	if f != nil {
		where = fmt.Sprintf("functions[%d] (%s): ", f.index, f.name)
		for _, s := range f.settings {
			if s.key == key {
				return configError(cf.path, s.line, "%s%s", where, ue.Msg)
			}
		}
	}
	for _, s := range cf.top {
		if s.key == key {
			return configError(cf.path, s.line, "%s%s", where, ue.Msg)
		}
	}
	if f != nil {
		return configError(cf.path, f.line, "%s%s", where, ue.Msg)
	}
	return usageErrorf("%s: %s", cf.path, ue.Msg)
}
