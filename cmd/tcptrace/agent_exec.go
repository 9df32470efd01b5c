package main

import (
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
)

// agentBinary is the agent (cmd/tcptrace-agent): the exporters' libraries
// (client_golang, the OpenTelemetry SDK, gRPC) stay out of this binary,
// whose every page that package initialisation touches counts in the RSS
// of every command (14 MiB of file-backed pages at idle without them, 24
// with).
const agentBinary = "tcptrace-agent"

// runAgent runs the agent binary in this process's place: same pid, same
// signals, as systemd and the tests expect. It looks next to this binary,
// then in PATH.
func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	path := ""
	// /proc/self/exe is not readable once a process changed its user
	// (setpriv, systemd's User=): the path it was started by says too
	var dirs []string
	if self, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(self))
	}
	if strings.Contains(os.Args[0], "/") {
		dirs = append(dirs, filepath.Dir(os.Args[0]))
	}
	for _, d := range dirs {
		if p := filepath.Join(d, agentBinary); isExecutable(p) {
			path = p
			break
		}
	}
	if path == "" {
		p, err := exec.LookPath(agentBinary)
		if err != nil {
			return errors.New("tcptrace agent needs the tcptrace-agent binary next to tcptrace or in PATH: make build builds both")
		}
		path = p
	}
	if err := sameBuild(path); err != nil {
		return err
	}
	argv := append([]string{path, "agent"}, args...)
	if err := syscall.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("run %s: %w", path, err)
	}
	return nil // not reached
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// sameBuild says whether the agent binary at path comes from this
// binary's build: the same module version, commit, tree state and Go
// release, read from the build info both carry. Two builds would take
// different flags and different records.
func sameBuild(path string) error {
	self, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	other, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: not a Go binary of tcptrace's (%v): install tcptrace and tcptrace-agent from one build", path, err)
	}
	if a, b := buildID(self), buildID(other); a != b {
		return fmt.Errorf("%s is another build (%s) than this tcptrace (%s): install both from one build (make build, or go install ./cmd/...)", path, b, a)
	}
	return nil
}

// buildID names a build: module version, commit and whether the tree was
// modified, Go release.
func buildID(bi *debug.BuildInfo) string {
	id := bi.Main.Version
	for _, st := range bi.Settings {
		if st.Key == "vcs.revision" || st.Key == "vcs.modified" {
			id += " " + st.Key + "=" + st.Value
		}
	}
	return id + " " + bi.GoVersion
}
