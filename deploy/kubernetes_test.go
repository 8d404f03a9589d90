package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The Kubernetes manifests in kubernetes/base/, and the sandbox overlay in
// kubernetes/sandbox/ applied to them. (kubernetes/kustomize_test.go, a
// module of its own, builds every kustomization with kustomize itself.)

type intOrString = any // a YAML int or string, as Kubernetes' IntOrString

type objectMeta struct {
	Name        string            `yaml:"name"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type deployment struct {
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     podSpec    `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int64           `yaml:"terminationGracePeriodSeconds"`
	AutomountServiceAccountToken  *bool            `yaml:"automountServiceAccountToken"`
	SecurityContext               *securityContext `yaml:"securityContext"`
	Containers                    []container      `yaml:"containers"`
	Volumes                       []volume         `yaml:"volumes"`
}

type volume struct {
	Name string `yaml:"name"`
}

type container struct {
	Name           string          `yaml:"name"`
	Command        []string        `yaml:"command"`
	Args           []string        `yaml:"args"`
	Ports          []containerPort `yaml:"ports"`
	StartupProbe   *probe          `yaml:"startupProbe"`
	ReadinessProbe *probe          `yaml:"readinessProbe"`
	LivenessProbe  *probe          `yaml:"livenessProbe"`
	Lifecycle      *struct {
		PreStop *struct {
			Exec *struct {
				Command []string `yaml:"command"`
			} `yaml:"exec"`
			Sleep *struct {
				Seconds int64 `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext *securityContext `yaml:"securityContext"`
	VolumeMounts    []volumeMount    `yaml:"volumeMounts"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
}

type volumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
}

type probe struct {
	HTTPGet *struct {
		Path   string      `yaml:"path"`
		Port   intOrString `yaml:"port"`
		Scheme string      `yaml:"scheme"`
	} `yaml:"httpGet"`
}

// securityContext has the fields of both the pod's and a container's.
type securityContext struct {
	RunAsUser                *int64 `yaml:"runAsUser"`
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	Privileged               *bool  `yaml:"privileged"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	Capabilities             *struct {
		Add  []string `yaml:"add"`
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile *struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
	AppArmorProfile *struct {
		Type string `yaml:"type"`
	} `yaml:"appArmorProfile"`
}

type service struct {
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string      `yaml:"name"`
			Port       int         `yaml:"port"`
			TargetPort intOrString `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type labelSelectorObject struct {
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
	} `yaml:"spec"`
}

type kustomization struct {
	Resources []string `yaml:"resources"`
	Patches   []struct {
		Path   string `yaml:"path"`
		Target struct {
			Kind string `yaml:"kind"`
			Name string `yaml:"name"`
		} `yaml:"target"`
	} `yaml:"patches"`
}

// manifests is what a directory of manifests holds, each document both
// generic (for patches) and by file.
type manifests struct {
	docs  []map[string]any
	files map[string][]map[string]any
}

func loadManifests(t *testing.T, dir string) manifests {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests in %s (%v)", dir, err)
	}
	m := manifests{files: map[string][]map[string]any{}}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			obj, ok := doc.(map[string]any)
			if !ok {
				continue // a patch (a list) or an empty document
			}
			m.docs = append(m.docs, obj)
			m.files[filepath.Base(p)] = append(m.files[filepath.Base(p)], obj)
		}
	}
	return m
}

// convert re-decodes a generic document into a typed one.
func convert(t *testing.T, doc any, into any) {
	t.Helper()
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatal(err)
	}
}

func (m manifests) ofKind(kind string) []map[string]any {
	var out []map[string]any
	for _, d := range m.docs {
		if d["kind"] == kind {
			out = append(out, d)
		}
	}
	return out
}

// A check collects the problems of one manifest set.
type check struct {
	t    *testing.T
	name string
}

func (c check) errorf(format string, args ...any) {
	c.t.Helper()
	c.t.Errorf("%s: %s", c.name, fmt.Sprintf(format, args...))
}

// resolvePort returns the container port number that port (a number or
// the name of one of ctr's ports) designates.
func resolvePort(ctr container, port intOrString) (int, error) {
	switch p := port.(type) {
	case int:
		return p, nil
	case string:
		if n, err := strconv.Atoi(p); err == nil {
			return n, nil
		}
		for _, cp := range ctr.Ports {
			if cp.Name == p {
				return cp.ContainerPort, nil
			}
		}
		return 0, fmt.Errorf("no container port is named %q", p)
	case nil:
		return 0, errors.New("no port")
	}
	return 0, fmt.Errorf("port %v: want a number or a name", port)
}

// dispatcherContainer returns the container that runs the dispatcher (the
// one with --workers) and its command line.
func dispatcherContainer(c check, d deployment) (container, cmdline, bool) {
	for _, ctr := range d.Spec.Template.Spec.Containers {
		args := ctr.Args
		if len(ctr.Command) > 0 {
			args = append(slices.Clone(ctr.Command[1:]), ctr.Args...)
		}
		cl := parseCmdline(args)
		if cl.has("workers") {
			for _, e := range cl.errors {
				c.errorf("container %s: %s", ctr.Name, e)
			}
			return ctr, cl, true
		}
	}
	c.errorf("no container runs the dispatcher (none has --workers)")
	return container{}, cmdline{}, false
}

// preStopSleep returns the preStop hook's sleep.
func preStopSleep(ctr container) (time.Duration, error) {
	if ctr.Lifecycle == nil || ctr.Lifecycle.PreStop == nil {
		return 0, errors.New("no preStop hook")
	}
	ps := ctr.Lifecycle.PreStop
	switch {
	case ps.Sleep != nil:
		return time.Duration(ps.Sleep.Seconds) * time.Second, nil
	case ps.Exec != nil && len(ps.Exec.Command) == 2 && filepath.Base(ps.Exec.Command[0]) == "sleep":
		s, err := strconv.ParseFloat(ps.Exec.Command[1], 64)
		if err != nil {
			return 0, fmt.Errorf("preStop %v: %v", ps.Exec.Command, err)
		}
		return time.Duration(s * float64(time.Second)), nil
	}
	return 0, errors.New("the preStop hook is neither sleep nor exec sleep N")
}

// parseQuantity parses a Kubernetes quantity: 384Mi, 1G, 4, 500m.
func parseQuantity(s string) (float64, error) {
	orig := s
	suffixes := []struct {
		s string
		m float64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
		{"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"m", 1e-3}}
	mult := 1.0
	for _, x := range suffixes {
		if strings.HasSuffix(s, x.s) {
			s, mult = strings.TrimSuffix(s, x.s), x.m
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("quantity %q: %v", orig, err)
	}
	return f * mult, nil
}

func isSubset(sub, of map[string]string) bool {
	if len(sub) == 0 {
		return false // an empty selector selects everything: not what any of these means
	}
	for k, v := range sub {
		if of[k] != v {
			return false
		}
	}
	return true
}

// checkDeployment checks one Deployment (base or patched) and returns the
// dispatcher's command line and its ports, for the Service checks.
func checkDeployment(c check, d deployment) (ctr container, cl cmdline, listenPort, adminPort int) {
	c.t.Helper()
	pod := d.Spec.Template.Spec
	podLabels := d.Spec.Template.Metadata.Labels
	if !isSubset(d.Spec.Selector.MatchLabels, podLabels) {
		c.errorf("the selector %v does not select the pod template's labels %v", d.Spec.Selector.MatchLabels, podLabels)
	}
	ctr, cl, ok := dispatcherContainer(c, d)
	if !ok {
		return
	}

	// Ports: --listen and --admin-listen, each a container port.
	var err error
	if _, listenPort, err = cl.port("listen"); err != nil {
		c.errorf("%v", err)
	}
	var adminHost string
	if adminHost, adminPort, err = cl.port("admin-listen"); err != nil {
		c.errorf("%v", err)
	}
	if ip := net.ParseIP(adminHost); adminHost == "localhost" || ip != nil && ip.IsLoopback() {
		c.errorf("--admin-listen %s: on loopback, the kubelet cannot probe it", cl.flags["admin-listen"])
	}
	if listenPort == adminPort {
		c.errorf("--listen and --admin-listen share port %d: the admin endpoints would be public", listenPort)
	}
	for _, want := range []int{listenPort, adminPort} {
		if !slices.ContainsFunc(ctr.Ports, func(p containerPort) bool { return p.ContainerPort == want }) {
			c.errorf("no containerPort %d (from --listen/--admin-listen) is declared", want)
		}
	}

	// Probes: on the admin port, /healthz for liveness (and startup),
	// /readyz for readiness.
	probes := []struct {
		kind  string
		p     *probe
		paths []string
	}{
		{"readinessProbe", ctr.ReadinessProbe, []string{"/readyz"}},
		{"livenessProbe", ctr.LivenessProbe, []string{"/healthz"}},
		{"startupProbe", ctr.StartupProbe, []string{"/healthz", "/readyz"}},
	}
	for _, pr := range probes {
		if pr.p == nil {
			if pr.kind != "startupProbe" {
				c.errorf("no %s", pr.kind)
			}
			continue
		}
		if pr.p.HTTPGet == nil {
			c.errorf("%s: want an httpGet probe", pr.kind)
			continue
		}
		g := pr.p.HTTPGet
		if !slices.Contains(pr.paths, g.Path) {
			c.errorf("%s: path %q, want %s", pr.kind, g.Path, strings.Join(pr.paths, " or "))
		}
		port, err := resolvePort(ctr, g.Port)
		switch {
		case err != nil:
			c.errorf("%s: port %v: %v", pr.kind, g.Port, err)
		case port != adminPort:
			c.errorf("%s: port %v is %d, not the --admin-listen port %d", pr.kind, g.Port, port, adminPort)
		}
		if g.Scheme != "" && g.Scheme != "HTTP" {
			c.errorf("%s: scheme %s: the admin listener serves plain HTTP", pr.kind, g.Scheme)
		}
	}

	// Metrics scraping, if annotated, on the admin port.
	ann := d.Spec.Template.Metadata.Annotations
	if p, ok := ann["prometheus.io/port"]; ok && p != strconv.Itoa(adminPort) {
		c.errorf("prometheus.io/port %s is not the --admin-listen port %d", p, adminPort)
	}
	if p, ok := ann["prometheus.io/path"]; ok && p != "/metrics" {
		c.errorf("prometheus.io/path %s, want /metrics", p)
	}

	// Termination: preStop sleep + drain + worker stop within the grace.
	shutdown, err := cl.duration("shutdown-timeout", 10*time.Second)
	if err != nil {
		c.errorf("%v", err)
	}
	sleep, err := preStopSleep(ctr)
	if err != nil {
		c.errorf("%v", err)
	} else if sleep <= 0 {
		c.errorf("the preStop sleep is %s: endpoints would still route to a draining pod", sleep)
	}
	grace := 30 * time.Second // Kubernetes' default
	if pod.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	}
	if need := sleep + shutdown + workerStopGrace; grace < need {
		c.errorf("terminationGracePeriodSeconds %s < preStop sleep %s + --shutdown-timeout %s + worker stop %s",
			grace, sleep, shutdown, workerStopGrace)
	}
	timeout, err1 := cl.duration("timeout", defaultTimeout)
	queueTimeout, err2 := cl.duration("queue-timeout", defaultQueueTimeout)
	if err := errors.Join(err1, err2); err != nil {
		c.errorf("%v", err)
	} else if shutdown < queueTimeout+timeout {
		c.errorf("--shutdown-timeout %s < --queue-timeout %s + --timeout %s: a request admitted before SIGTERM may be cut",
			shutdown, queueTimeout, timeout)
	}
	if cl.flags["log-format"] != "json" {
		c.errorf("--log-format %q, want json for the cluster's log collector", cl.flags["log-format"])
	}

	// Resources: the pool, plus one replacement starting for a recycled
	// worker, each at its bound, plus the dispatcher.
	pool, err := cl.poolSize()
	if err != nil {
		c.errorf("%v", err)
	}
	perWorker := int64(workerMemory)
	for _, f := range []string{"max-rss", "memory-limit"} {
		if v, ok := cl.flags[f]; ok {
			if perWorker, err = parseSize(v); err != nil {
				c.errorf("--%s: %v", f, err)
			}
			break
		}
	}
	needMem := float64(dispatcherMemory + int64(pool+1)*perWorker)
	req, lim := ctr.Resources.Requests, ctr.Resources.Limits
	if mem, err := parseQuantity(req["memory"]); err != nil {
		c.errorf("resources.requests.memory: %v", err)
	} else if mem < needMem {
		c.errorf("resources.requests.memory %s < %d MiB (dispatcher %d MiB + (pool %d + 1) x %d MiB per worker)",
			req["memory"], int64(needMem)>>20, dispatcherMemory>>20, pool, perWorker>>20)
	} else if l, ok := lim["memory"]; ok {
		if lm, err := parseQuantity(l); err != nil || lm < mem {
			c.errorf("resources.limits.memory %s is below the request %s", l, req["memory"])
		}
	}
	if cpu, err := parseQuantity(req["cpu"]); err != nil {
		c.errorf("resources.requests.cpu: %v", err)
	} else if cpu < float64(pool) {
		c.errorf("resources.requests.cpu %s < %d, one core per worker of the pool", req["cpu"], pool)
	}

	checkSecurity(c, pod, ctr, cl)
	return ctr, cl, listenPort, adminPort
}

// checkSecurity checks that the security context lets the flags work, and
// is the restricted one when they need no privilege.
func checkSecurity(c check, pod podSpec, ctr container, cl cmdline) {
	if a := pod.AutomountServiceAccountToken; a == nil || *a {
		c.errorf("automountServiceAccountToken must be false: workers could read the token")
	}
	psc, csc := pod.SecurityContext, ctr.SecurityContext
	if psc == nil {
		psc = &securityContext{}
	}
	if csc == nil {
		csc = &securityContext{}
	}
	// Container settings override the pod's.
	runAsUser := override(csc.RunAsUser, psc.RunAsUser)
	runAsNonRoot := override(csc.RunAsNonRoot, psc.RunAsNonRoot)
	seccomp := ""
	if p := override(csc.SeccompProfile, psc.SeccompProfile); p != nil {
		seccomp = p.Type
	}
	privileged := csc.Privileged != nil && *csc.Privileged
	var added, dropped []string
	if csc.Capabilities != nil {
		added, dropped = normCaps(csc.Capabilities.Add), normCaps(csc.Capabilities.Drop)
	}
	readOnlyRoot := csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem

	if caps := requiredCaps(cl); caps != nil {
		if runAsUser == nil || *runAsUser != 0 || runAsNonRoot != nil && *runAsNonRoot {
			c.errorf("--sandbox and --user need the dispatcher to run as root: want runAsUser 0 and runAsNonRoot false")
		}
		if !privileged {
			for _, cp := range caps {
				if !slices.Contains(added, cp) {
					c.errorf("--sandbox/--user need CAP_%s: add it to capabilities.add", cp)
				}
			}
			if cl.on("sandbox") && (seccomp == "" || seccomp == "RuntimeDefault") {
				c.errorf("--sandbox: the runtime's default seccomp profile denies mount(2): want seccompProfile Unconfined or Localhost")
			}
			if cl.on("sandbox") && (csc.AppArmorProfile == nil || csc.AppArmorProfile.Type == "RuntimeDefault") {
				c.errorf("--sandbox: the runtime's default AppArmor profile denies mount(2): want appArmorProfile Unconfined or Localhost")
			}
			if a := csc.AllowPrivilegeEscalation; a != nil && !*a && slices.Contains(added, "SYS_ADMIN") {
				c.errorf("Kubernetes refuses CAP_SYS_ADMIN with allowPrivilegeEscalation false")
			}
		}
	} else {
		if runAsNonRoot == nil || !*runAsNonRoot {
			c.errorf("without --sandbox or --user, run as non-root: want runAsNonRoot true")
		}
		if a := csc.AllowPrivilegeEscalation; a == nil || *a {
			c.errorf("without --sandbox or --user, want allowPrivilegeEscalation false")
		}
		if !slices.Contains(dropped, "ALL") || len(added) > 0 || privileged {
			c.errorf("without --sandbox or --user, want capabilities drop ALL, none added, not privileged")
		}
		if !readOnlyRoot {
			c.errorf("without --sandbox or --user, want readOnlyRootFilesystem true")
		}
		if seccomp != "RuntimeDefault" {
			c.errorf("without --sandbox or --user, want seccompProfile RuntimeDefault, not %q", seccomp)
		}
	}
	for _, f := range cgroupLimitFlags {
		if cl.has(f) && !privileged {
			c.errorf("--%s needs a writable cgroup file system, which only a privileged container has: the dispatcher would exit 2", f)
		}
	}
	if readOnlyRoot && !slices.ContainsFunc(ctr.VolumeMounts, func(m volumeMount) bool { return m.MountPath == "/tmp" }) {
		c.errorf("readOnlyRootFilesystem without a volume on /tmp: the workers' sockets cannot be created")
	}
	for _, m := range ctr.VolumeMounts {
		if !slices.ContainsFunc(pod.Volumes, func(v volume) bool { return v.Name == m.Name }) {
			c.errorf("volumeMount %s: the pod has no volume %q", m.MountPath, m.Name)
		}
	}
}

// override returns a if set, else b (a container's setting over the pod's).
func override[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}

func normCaps(caps []string) []string {
	out := make([]string, len(caps))
	for i, c := range caps {
		out[i] = strings.TrimPrefix(strings.ToUpper(c), "CAP_")
	}
	return out
}

func checkServices(c check, m manifests, podLabels map[string]string, ctr container, listenPort, adminPort int) {
	svcs := m.ofKind("Service")
	if len(svcs) == 0 {
		c.errorf("no Service")
	}
	for _, doc := range svcs {
		var s service
		convert(c.t, doc, &s)
		sc := check{c.t, c.name + ": Service " + s.Metadata.Name}
		if !isSubset(s.Spec.Selector, podLabels) {
			sc.errorf("selector %v does not select the pods (labels %v)", s.Spec.Selector, podLabels)
		}
		if len(s.Spec.Ports) == 0 {
			sc.errorf("no ports")
		}
		for _, p := range s.Spec.Ports {
			tp := p.TargetPort
			if tp == nil {
				tp = p.Port
			}
			n, err := resolvePort(ctr, tp)
			switch {
			case err != nil:
				sc.errorf("port %d: targetPort %v: %v", p.Port, tp, err)
			case n == adminPort:
				sc.errorf("port %d exposes the admin port %d", p.Port, adminPort)
			case n != listenPort:
				sc.errorf("port %d targets %d, not the --listen port %d", p.Port, n, listenPort)
			}
		}
	}
	for _, doc := range m.ofKind("PodDisruptionBudget") {
		var p labelSelectorObject
		convert(c.t, doc, &p)
		if !isSubset(p.Spec.Selector.MatchLabels, podLabels) {
			c.errorf("PodDisruptionBudget %s: selector %v does not select the pods", p.Metadata.Name, p.Spec.Selector.MatchLabels)
		}
	}
}

// A JSON patch (RFC 6902), as kustomize applies it: add, replace and
// remove are enough here.

type patchOp struct {
	Op    string `yaml:"op"`
	Path  string `yaml:"path"`
	Value any    `yaml:"value"`
}

func applyPatch(doc any, ops []patchOp) (any, error) {
	for _, op := range ops {
		if !strings.HasPrefix(op.Path, "/") {
			return nil, fmt.Errorf("%s %s: the path must start with /", op.Op, op.Path)
		}
		var toks []string
		for _, s := range strings.Split(op.Path[1:], "/") {
			toks = append(toks, strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~"))
		}
		var err error
		if doc, err = patchAt(doc, toks, op); err != nil {
			return nil, fmt.Errorf("%s %s: %w", op.Op, op.Path, err)
		}
	}
	return doc, nil
}

func patchAt(node any, toks []string, op patchOp) (any, error) {
	tok, last := toks[0], len(toks) == 1
	switch n := node.(type) {
	case map[string]any:
		child, ok := n[tok]
		if last {
			switch {
			case op.Op == "add":
				n[tok] = op.Value
			case !ok:
				return nil, fmt.Errorf("no %q", tok)
			case op.Op == "replace":
				n[tok] = op.Value
			case op.Op == "remove":
				delete(n, tok)
			default:
				return nil, fmt.Errorf("unsupported op")
			}
			return n, nil
		}
		if !ok {
			return nil, fmt.Errorf("no %q", tok)
		}
		c, err := patchAt(child, toks[1:], op)
		n[tok] = c
		return n, err
	case []any:
		i := len(n)
		if tok != "-" {
			var err error
			if i, err = strconv.Atoi(tok); err != nil || i < 0 || i > len(n) {
				return nil, fmt.Errorf("bad index %q", tok)
			}
		}
		if last {
			switch {
			case op.Op == "add":
				return slices.Insert(n, i, op.Value), nil
			case i == len(n):
				return nil, fmt.Errorf("index %q out of range", tok)
			case op.Op == "replace":
				n[i] = op.Value
				return n, nil
			case op.Op == "remove":
				return slices.Delete(n, i, i+1), nil
			}
			return nil, fmt.Errorf("unsupported op")
		}
		if i == len(n) {
			return nil, fmt.Errorf("index %q out of range", tok)
		}
		c, err := patchAt(n[i], toks[1:], op)
		n[i] = c
		return n, err
	}
	return nil, fmt.Errorf("cannot descend into %T at %q", node, tok)
}

// deepCopy copies a generic document.
func deepCopy(t *testing.T, doc any) any {
	t.Helper()
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := yaml.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// sandboxDeployment returns the Deployment of the sandbox overlay: the
// base's, through the overlay's patches.
func sandboxDeployment(t *testing.T, base map[string]any) any {
	t.Helper()
	var k kustomization
	readYAML(t, "kubernetes/sandbox/kustomization.yaml", &k)
	if !slices.Contains(k.Resources, "../base") {
		t.Errorf("sandbox/kustomization.yaml does not build on the base (resources %v)", k.Resources)
	}
	doc := deepCopy(t, base)
	name, _ := base["metadata"].(map[string]any)["name"].(string)
	patched := false
	for _, p := range k.Patches {
		if p.Target.Kind != "Deployment" {
			continue
		}
		if p.Target.Name != name {
			t.Errorf("sandbox/kustomization.yaml patches Deployment %q, not the base's %q", p.Target.Name, name)
			continue
		}
		patched = true
		var ops []patchOp
		readYAML(t, filepath.Join("kubernetes/sandbox", p.Path), &ops)
		var err error
		if doc, err = applyPatch(doc, ops); err != nil {
			t.Fatalf("sandbox/%s: %v", p.Path, err)
		}
	}
	if !patched {
		t.Errorf("sandbox/kustomization.yaml does not patch the Deployment")
	}
	return doc
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// kubernetesArgs returns the dispatcher's arguments in the base and
// sandbox Deployments.
func kubernetesArgs(t *testing.T) map[string][]string {
	t.Helper()
	m := loadManifests(t, "kubernetes/base")
	deps := m.ofKind("Deployment")
	if len(deps) != 1 {
		t.Fatalf("kubernetes/base/: %d Deployments, want 1", len(deps))
	}
	out := map[string][]string{}
	for name, doc := range map[string]any{"kubernetes/base/deployment.yaml": deps[0], "kubernetes/sandbox": sandboxDeployment(t, deps[0])} {
		var d deployment
		convert(t, doc, &d)
		for _, ctr := range d.Spec.Template.Spec.Containers {
			out[name+" ("+ctr.Name+")"] = append(slices.Clone(ctr.Command), ctr.Args...)
		}
	}
	return out
}

func TestKubernetes(t *testing.T) {
	m := loadManifests(t, "kubernetes/base")
	deps := m.ofKind("Deployment")
	if len(deps) != 1 {
		t.Fatalf("kubernetes/base/: %d Deployments, want 1", len(deps))
	}

	// kubectl apply -k applies what kustomization.yaml lists: all of it.
	var k kustomization
	readYAML(t, "kubernetes/base/kustomization.yaml", &k)
	for file, docs := range m.files {
		if docs[0]["kind"] != "Kustomization" && !slices.Contains(k.Resources, file) {
			t.Errorf("kubernetes/base/kustomization.yaml does not list %s", file)
		}
	}

	variants := []struct {
		name string
		doc  any
	}{
		{"deployment.yaml", deps[0]},
		{"sandbox overlay", sandboxDeployment(t, deps[0])},
	}
	for _, v := range variants {
		var d deployment
		convert(t, v.doc, &d)
		c := check{t, v.name}
		ctr, cl, listenPort, adminPort := checkDeployment(c, d)
		checkServices(c, m, d.Spec.Template.Metadata.Labels, ctr, listenPort, adminPort)
		if v.name == "sandbox overlay" && !cl.on("sandbox") {
			c.errorf("the sandbox overlay does not pass --sandbox")
		}
	}
}
