//go:build !agent

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// agentBinary is the agent's own build of tcptrace (go build -tags agent):
// the exporters' libraries (client_golang, the OpenTelemetry SDK, gRPC)
// stay out of this binary, whose every page that package initialisation
// touches counts in the RSS of every command (14 MiB of file-backed pages
// at idle without them, 24 with).
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
