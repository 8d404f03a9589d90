package main

import (
	"flag"
	"strings"
	"testing"
)

// Every flag has one place in --help, and every place is a flag: a flag
// added without a group fails here.
func TestHelpGroupsEveryFlag(t *testing.T) {
	fs := newFlagSet(&options{})
	placed := map[string]string{}
	for _, g := range flagGroups {
		for _, name := range g.flags {
			if other, ok := placed[name]; ok {
				t.Errorf("--%s is in %q and in %q", name, other, g.title)
			}
			placed[name] = g.title
			if fs.Lookup(name) == nil {
				t.Errorf("flagGroups names --%s, which is not a flag", name)
			}
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := placed[f.Name]; !ok {
			t.Errorf("--%s has no group in --help: add it to flagGroups (flags.go)", f.Name)
		}
	})
}

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		rest []string
		err  string
	}{
		{[]string{"--timeout", "2s", "-pool-size=3", "--watch"}, nil, ""},
		{[]string{"--watch=false", "--", "-x", "y"}, []string{"-x", "y"}, ""},
		{[]string{"--", "--timeout"}, []string{"--timeout"}, ""},
		{[]string{"--user", "--", "--"}, []string{}, ""}, // --user's value is "--"
		{[]string{"---timeout", "2s"}, nil, `"---timeout": want --name or --name=value`},
		{[]string{"-"}, nil, `unexpected argument "-"`},
		{[]string{"--timeout=5"}, nil, `--timeout "5": a duration needs a unit`},
		{[]string{"--tiemout", "5s"}, nil, "unknown flag --tiemout (did you mean --timeout?)"},
		{[]string{"--zzzzzzzz"}, nil, "unknown flag --zzzzzzzz; see"},
	} {
		o := &options{}
		rest, err := parseArgs(newFlagSet(o), tc.args)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.err)
		case tc.err == "" && len(rest) != len(tc.rest):
			t.Errorf("%q: rest %q, want %q", tc.args, rest, tc.rest)
		}
	}
}
