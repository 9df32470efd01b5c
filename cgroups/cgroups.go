// Package cgroups names a cgroup v2 id as a person knows it: the systemd
// unit, or the container's id, else its path. A cgroup v2 id is the inode
// number of its directory in the cgroup file system, so the names come
// from walking that tree; the walk's result is cached, and walked again
// at most once a second, for an id not seen before.
package cgroups

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// MaxCached bounds the ids remembered.
const MaxCached = 4096

// Unknown names id 0 (no owner) and an id that cannot be found.
const Unknown = "unknown"

// Names maps cgroup ids to names.
type Names struct {
	root    string
	names   map[uint64]Identity
	walked  time.Time
	minWalk time.Duration
}

// New finds the cgroup v2 mount; with none, every id is Unknown.
func New() *Names {
	return &Names{root: mountPoint(), names: map[uint64]Identity{}, minWalk: time.Second}
}

// NewAt names the cgroups of a tree at root (for tests).
func NewAt(root string) *Names {
	return &Names{root: root, names: map[uint64]Identity{}}
}

// mountPoint reads /proc/self/mountinfo for the cgroup2 file system.
func mountPoint() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mount-point ... - fstype source options
		l := sc.Text()
		sep := strings.Index(l, " - ")
		if sep < 0 {
			continue
		}
		fields, tail := strings.Fields(l[:sep]), strings.Fields(l[sep+3:])
		if len(fields) >= 5 && len(tail) >= 1 && tail[0] == "cgroup2" {
			return fields[4]
		}
	}
	return ""
}

// Name names id.
func (n *Names) Name(id uint64) string { return n.Identity(id).Name }

// Identity says who runs in cgroup id, as its path tells.
func (n *Names) Identity(id uint64) Identity {
	if id == 0 || n.root == "" {
		return Identity{Name: Unknown}
	}
	if ident, ok := n.names[id]; ok {
		return ident
	}
	if time.Since(n.walked) < n.minWalk {
		return Identity{Name: Unknown}
	}
	n.walk()
	if ident, ok := n.names[id]; ok {
		return ident
	}
	return Identity{Name: Unknown}
}

// walk indexes the tree, at most MaxCached directories.
func (n *Names) walk() {
	n.walked = time.Now()
	clear(n.names)
	filepath.WalkDir(n.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if len(n.names) >= MaxCached {
			return filepath.SkipAll
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			rel, _ := filepath.Rel(n.root, path)
			n.names[st.Ino] = Identify("/" + strings.TrimPrefix(rel, "."))
		}
		return nil
	})
}

// a container runtime's 64-hex id, in a path component such as
// docker-<id>.scope, cri-containerd-<id>.scope or a bare <id>
var containerID = regexp.MustCompile(`(?:^|[-/])([0-9a-f]{64})(?:\.scope)?$`)

// Identity is what a cgroup's path says of who runs in it.
type Identity struct {
	// Name is Describe's
	Name string
	// ContainerID is a container's id, its first 12 hex digits, as
	// docker ps, crictl ps and podman ps show it
	ContainerID string
	// PodUID and QoS (guaranteed, burstable or besteffort) are a
	// Kubernetes pod's, where kubelet's path says so: for its systemd
	// driver kubepods.slice/kubepods-burstable.slice/
	// kubepods-burstable-pod<UID>.slice/..., with the UID's dashes as
	// underscores; for cgroupfs kubepods/burstable/pod<UID>/...; a
	// guaranteed pod's sits under kubepods directly
	PodUID, QoS string
}

// a pod's cgroup, in either of kubelet's layouts
var podCgroup = regexp.MustCompile(`^(?:kubepods-(?:(burstable|besteffort)-)?)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$`)

// Identify reads a cgroup path: its container, its pod, its name.
func Identify(path string) Identity {
	ident := Identity{Name: Describe(path)}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if m := containerID.FindStringSubmatch(parts[i]); m != nil && ident.ContainerID == "" {
			ident.ContainerID = m[1][:12]
		}
	}
	if !strings.HasPrefix(strings.Trim(path, "/"), "kubepods") {
		return ident
	}
	for i, part := range parts {
		m := podCgroup.FindStringSubmatch(part)
		if m == nil {
			continue
		}
		ident.PodUID = strings.ReplaceAll(m[2], "_", "-")
		if ident.ContainerID == "" {
			// the pod's own cgroup (its pause process, under some
			// runtimes)
			ident.Name = "pod:" + ident.PodUID
		}
		switch {
		case m[1] != "":
			ident.QoS = m[1]
		case i > 0 && (parts[i-1] == "burstable" || parts[i-1] == "besteffort"):
			ident.QoS = parts[i-1]
		default:
			ident.QoS = "guaranteed"
		}
		break
	}
	return ident
}

// Describe names a cgroup path: "container:" and the id's first 12 hex
// digits for a container, else the innermost systemd unit (a .service or
// .scope), else the path itself.
func Describe(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if m := containerID.FindStringSubmatch(parts[i]); m != nil {
			return "container:" + m[1][:12]
		}
	}
	for i := len(parts) - 1; i >= 0; i-- {
		if strings.HasSuffix(parts[i], ".service") || strings.HasSuffix(parts[i], ".scope") {
			return parts[i]
		}
	}
	if path == "" || path == "/." {
		return "/"
	}
	return path
}
