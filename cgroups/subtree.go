package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Subtree is a cgroup and every cgroup under it, by id: what --cgroup
// keeps. A cgroup made under it later is learnt by walking it again, at
// most once a second, when an id it does not know turns up.
type Subtree struct {
	dir    string // in the cgroup file system
	ids    map[uint64]bool
	walked time.Time
}

// Find returns the subtree arg names: a path in the cgroup tree
// (/system.slice/nginx.service, as /proc/PID/cgroup shows it), or the name
// of a systemd unit anywhere in it (nginx.service; nginx for
// nginx.service).
func (n *Names) Find(arg string) (*Subtree, error) {
	if n.root == "" {
		return nil, errors.New("no cgroup v2 file system is mounted")
	}
	if strings.HasPrefix(arg, "/") {
		dir := filepath.Join(n.root, filepath.Clean(arg))
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("cgroup %q: no such cgroup under %s (want a path as /proc/PID/cgroup shows it, such as /system.slice/nginx.service, or a unit such as nginx.service)", arg, n.root)
		}
		return newSubtree(dir), nil
	}
	unit := arg
	if !strings.Contains(unit, ".") {
		unit += ".service"
	}
	var found []string
	filepath.WalkDir(n.root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == unit {
			found = append(found, path)
			return filepath.SkipDir
		}
		return nil
	})
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("cgroup %q: no unit %s in %s (systemctl list-units lists them; or give a path such as /system.slice/nginx.service)", arg, unit, n.root)
	case 1:
		return newSubtree(found[0]), nil
	}
	for i, f := range found {
		found[i] = "/" + strings.TrimPrefix(strings.TrimPrefix(f, n.root), "/")
	}
	return nil, fmt.Errorf("cgroup %q: %d cgroups are named %s (%s): give the path", arg, len(found), unit, strings.Join(found, ", "))
}

func newSubtree(dir string) *Subtree {
	s := &Subtree{dir: dir}
	s.walk()
	return s
}

// Contains says whether cgroup id is the subtree's top or under it.
func (s *Subtree) Contains(id uint64) bool {
	if s.ids[id] {
		return true
	}
	if id == 0 || time.Since(s.walked) < time.Second {
		return false
	}
	s.walk()
	return s.ids[id]
}

func (s *Subtree) walk() {
	s.walked = time.Now()
	s.ids = map[uint64]bool{}
	filepath.WalkDir(s.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if len(s.ids) >= MaxCached {
			return filepath.SkipAll
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				s.ids[st.Ino] = true
			}
		}
		return nil
	})
}
