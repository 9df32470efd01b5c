package cgroups

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func ino(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A unit found by its name, with or without .service, or by its path:
// it and what is under it, nothing else; a cgroup made under it later is
// found too; no such unit, or two of one name, is an error that says so.
func TestFind(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"system.slice/nginx.service/worker", "system.slice/cron.service", "user.slice/a/dup.scope", "user.slice/b/dup.scope"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n := NewAt(root)
	nginx, worker, cron := ino(t, root+"/system.slice/nginx.service"), ino(t, root+"/system.slice/nginx.service/worker"), ino(t, root+"/system.slice/cron.service")
	for _, arg := range []string{"nginx", "nginx.service", "/system.slice/nginx.service"} {
		s, err := n.Find(arg)
		if err != nil {
			t.Fatalf("%s: %v", arg, err)
		}
		if !s.Contains(nginx) || !s.Contains(worker) || s.Contains(cron) || s.Contains(0) {
			t.Errorf("%s: contains nginx %v, worker %v, cron %v", arg, s.Contains(nginx), s.Contains(worker), s.Contains(cron))
		}
	}
	s, _ := n.Find("/system.slice")
	if !s.Contains(cron) || !s.Contains(worker) {
		t.Error("/system.slice: not all under it")
	}
	if err := os.Mkdir(root+"/system.slice/cron.service/later", 0o755); err != nil {
		t.Fatal(err)
	}
	s.walked = s.walked.AddDate(0, 0, -1) // a second has passed
	if !s.Contains(ino(t, root+"/system.slice/cron.service/later")) {
		t.Error("a cgroup made later is not found")
	}
	for arg, want := range map[string]string{
		"nope":      "no unit nope.service",
		"/nope":     `cgroup "/nope": no such cgroup`,
		"dup.scope": "2 cgroups are named dup.scope (/user.slice/a/dup.scope, /user.slice/b/dup.scope): give the path",
	} {
		if _, err := n.Find(arg); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", arg, err, want)
		}
	}
}
