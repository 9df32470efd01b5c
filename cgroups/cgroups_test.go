package cgroups

import (
	"os"
	"path/filepath"
	"strings"
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

// Container and pod by path: kubelet's systemd and cgroupfs layouts, for
// containerd, CRI-O and Docker, and podman's own, each QoS class.
func TestIdentify(t *testing.T) {
	const id = "4f9c3b6a1d2e8f7a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a"
	const uid = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
	under := strings.ReplaceAll(uid, "-", "_")
	for _, tc := range []struct {
		path string
		want Identity
	}{
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + under + ".slice/cri-containerd-" + id + ".scope",
			Identity{Name: "container:" + id[:12], ContainerID: id[:12], PodUID: uid, QoS: "burstable"}},
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + under + ".slice/crio-" + id + ".scope",
			Identity{Name: "container:" + id[:12], ContainerID: id[:12], PodUID: uid, QoS: "besteffort"}},
		{"/kubepods.slice/kubepods-pod" + under + ".slice/docker-" + id + ".scope",
			Identity{Name: "container:" + id[:12], ContainerID: id[:12], PodUID: uid, QoS: "guaranteed"}},
		{"/kubepods/burstable/pod" + uid + "/" + id,
			Identity{Name: "container:" + id[:12], ContainerID: id[:12], PodUID: uid, QoS: "burstable"}},
		{"/kubepods/pod" + uid + "/" + id,
			Identity{Name: "container:" + id[:12], ContainerID: id[:12], PodUID: uid, QoS: "guaranteed"}},
		{"/kubepods/besteffort/pod" + uid + "/crio-" + id,
			Identity{Name: "container:" + id[:12], ContainerID: id[:12], PodUID: uid, QoS: "besteffort"}},
		// a pod's own cgroup, no container yet
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + under + ".slice",
			Identity{Name: "pod:" + uid, PodUID: uid, QoS: "burstable"}},
		// outside Kubernetes: docker, podman (cgroupfs and systemd)
		{"/system.slice/docker-" + id + ".scope", Identity{Name: "container:" + id[:12], ContainerID: id[:12]}},
		{"/libpod_parent/libpod-" + id, Identity{Name: "container:" + id[:12], ContainerID: id[:12]}},
		{"/machine.slice/libpod-" + id + ".scope", Identity{Name: "container:" + id[:12], ContainerID: id[:12]}},
		{"/system.slice/nginx.service", Identity{Name: "nginx.service"}},
		// a path that only looks like a pod's, outside kubepods
		{"/user.slice/pod" + uid, Identity{Name: "/user.slice/pod" + uid}},
	} {
		if got := Identify(tc.path); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.path, got, tc.want)
		}
	}
}
