package cgroups

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestDescribe(t *testing.T) {
	for path, want := range map[string]string{
		"/system.slice/nginx.service":                 "nginx.service",
		"/user.slice/user-1000.slice/session-3.scope": "session-3.scope",
		"/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope":                                                                  "container:0123456789ab",
		"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-aaaaaaaaaaaabbbbbbbbbbbbccccccccccccddddddddddddeeeeeeeeeeeeffff.scope": "container:aaaaaaaaaaaa",
		"/kubepods/besteffort/pod1/bbbbbbbbbbbbccccccccccccddddddddddddeeeeeeeeeeeeffffffffffff0000":                                                                   "container:bbbbbbbbbbbb",
		"/":           "/",
		"/init.scope": "init.scope",
		"/my/group":   "/my/group",
	} {
		if got := Describe(path); got != want {
			t.Errorf("Describe(%q) = %q, want %q", path, got, want)
		}
	}
}

// Ids are inode numbers of the tree's directories.
func TestNames(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "system.slice", "web.service")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	n := NewAt(root)
	if got := n.Name(st.Ino); got != "web.service" {
		t.Errorf("got %q", got)
	}
	if got := n.Name(0); got != Unknown {
		t.Errorf("id 0: %q", got)
	}
	if got := n.Name(st.Ino + 1<<40); got != Unknown {
		t.Errorf("a missing id: %q", got)
	}
}
