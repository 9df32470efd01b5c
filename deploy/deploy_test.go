// Package deploy holds the files that deploy the agent; its tests check
// them.
package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The unit's capabilities, as the test of the agent runs with them.
func unitCapabilities(t *testing.T) []string {
	b, err := os.ReadFile("tcptrace-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "AmbientCapabilities="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatal("no AmbientCapabilities")
	return nil
}

// The DaemonSet decodes strictly into Kubernetes' own apps/v1 types (an
// unknown or misplaced field is an error), and asks for what the unit
// grants and no more: the same capabilities, all others dropped, no
// privilege escalation, a read-only root, a readiness probe on /healthz.
func TestDaemonSet(t *testing.T) {
	b, err := os.ReadFile("daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		t.Fatalf("daemonset.yaml: %v", err)
	}
	if ds.APIVersion != "apps/v1" || ds.Kind != "DaemonSet" || ds.Name == "" {
		t.Errorf("kind %s/%s name %q", ds.APIVersion, ds.Kind, ds.Name)
	}
	sel, labels := ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels
	for k, v := range sel {
		if labels[k] != v {
			t.Errorf("the selector's %s=%s does not match the template's labels %v", k, v, labels)
		}
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || !spec.HostPID || spec.HostIPC {
		t.Errorf("hostNetwork %v hostPID %v hostIPC %v", spec.HostNetwork, spec.HostPID, spec.HostIPC)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext capabilities")
	}
	var want []corev1.Capability
	for _, cp := range unitCapabilities(t) {
		want = append(want, corev1.Capability(strings.TrimPrefix(cp, "CAP_")))
	}
	got := slices.Clone(sc.Capabilities.Add)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities add %v drop %v, want add %v (the unit's) drop [ALL]", sc.Capabilities.Add, sc.Capabilities.Drop, want)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		(sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("securityContext %+v", sc)
	}
	p := c.ReadinessProbe
	if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "metrics" {
		t.Errorf("readiness probe %+v", p)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9464 {
		t.Errorf("ports %+v", c.Ports)
	}
	if !slices.Contains(c.Args, "agent") || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("args %v, limits %v", c.Args, c.Resources.Limits)
	}
	for _, m := range c.VolumeMounts {
		if !m.ReadOnly {
			t.Errorf("volume %s is writable", m.Name)
		}
	}
}

// The alerting rules load in Prometheus's own checker, and each alert
// fires on the series of alerts_test.yml that should fire it, not before
// its time, with its annotations as written (promtool test rules).
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("TCPTRACE_REQUIRE_BPF") == "1" {
			t.Fatal("promtool is not installed (CI installs Debian's prometheus)")
		}
		t.Skip("no promtool")
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		if out, err := exec.Command(promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Every series a dashboard panel reads is narrowed by its job and node
// variables, which the dashboard defines, so that a panel shows the
// nodes picked rather than the sum of the fleet.
func TestDashboardVariables(t *testing.T) {
	b, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct{ Name, Query string }
		}
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
	}
	if !vars["job"] || !vars["instance"] {
		t.Errorf("variables %v, want job and instance", vars)
	}
	series := regexp.MustCompile(`tcptrace_[a-z0-9_]+(\{[^}]*\})?`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range series.FindAllStringSubmatch(tg.Expr, -1) {
				if !strings.Contains(m[1], `job=~"$job"`) || !strings.Contains(m[1], `instance=~"$instance"`) {
					t.Errorf("panel %q: %s is not narrowed by $job and $instance", p.Title, m[0])
				}
			}
		}
	}
}
