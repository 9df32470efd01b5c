// Package filter says which events a trace keeps. Every subcommand shares
// it. The BPF program applies the part that holds for every transition of
// a socket (family, namespace, ports: Kernel), so that records nobody
// wants never reach the ring; the rest (states, owner) is known only per
// record, once user space has resolved the owner, and Match applies the
// whole filter there.
package filter

import (
	"errors"
	"fmt"
	"slices"

	"github.com/tcptrace/tcptrace/events"
)

// MaxValues bounds each list the kernel matches (MAX_FILTER in
// bpf/tcptrace.c).
const MaxValues = 64

// Filter keeps an event when it passes every field set; the zero Filter
// keeps everything.
type Filter struct {
	Family uint8  // 4 or 6; dual-stack sockets talking IPv4 count as 4
	Netns  uint32 // network namespace inode
	States []events.State
	PIDs   []uint32 // owning process
	Comm   string   // owning process's command name, exact
	LPorts []uint16
	RPorts []uint16
	// Ports keeps a socket whose local or remote port is one of them,
	// as ss's "sport = :P or dport = :P"
	Ports []uint16
	// Cgroups, if set, keeps what an owner in one of its cgroups has
	// (cgroups.Subtree: a unit and the cgroups under it)
	Cgroups CgroupSet
	// NotPIDs drops what these processes own (the agent's own scrapes)
	NotPIDs []uint32
}

// CgroupSet is a set of cgroup v2 ids.
type CgroupSet interface {
	Contains(id uint64) bool
}

// Check says what is wrong with f, if anything.
func (f *Filter) Check() error {
	if f.Family != 0 && f.Family != 4 && f.Family != 6 {
		return fmt.Errorf("address family %d: want 4 or 6", f.Family)
	}
	if len(f.Comm) >= events.CommLen {
		return fmt.Errorf("command name %q: the kernel keeps at most %d bytes of a command name", f.Comm, events.CommLen-1)
	}
	if len(f.PIDs) > MaxValues || len(f.LPorts) > MaxValues || len(f.RPorts) > MaxValues || len(f.Ports) > MaxValues {
		return errors.New("at most 64 values per filter")
	}
	return nil
}

// Kernel is the part of f that the BPF program applies: what holds for
// every transition of a socket. Ports, either side, is applied in user
// space only: the program matches one side per list.
type Kernel struct {
	Family uint8
	Netns  uint32
	LPorts []uint16
	RPorts []uint16
}

// Kernel returns the part of f the BPF program applies.
func (f *Filter) Kernel() Kernel {
	return Kernel{Family: f.Family, Netns: f.Netns, LPorts: f.LPorts, RPorts: f.RPorts}
}

// Match says whether e passes f; e's owner must be known.
func (f *Filter) Match(e *events.Event) bool {
	if f.Family != 0 && uint8(e.Family) != f.Family {
		return false
	}
	if f.Netns != 0 && e.Netns != f.Netns {
		return false
	}
	if len(f.States) > 0 && !slices.Contains(f.States, e.Old) && !slices.Contains(f.States, e.New) {
		return false
	}
	if len(f.PIDs) > 0 && !slices.Contains(f.PIDs, e.PID) {
		return false
	}
	if len(f.NotPIDs) > 0 && slices.Contains(f.NotPIDs, e.PID) {
		return false
	}
	if !f.PortsMatch(e.LPort, e.RPort) {
		return false
	}
	if f.Cgroups != nil && !f.Cgroups.Contains(e.Cgroup) {
		return false
	}
	return f.Comm == "" || string(e.CommBytes()) == f.Comm // compared without a copy
}

// PortsMatch says whether a socket with these ports passes the port
// filters (LPorts, RPorts, Ports): what a socket dump can apply too.
func (f *Filter) PortsMatch(lport, rport uint16) bool {
	return (len(f.LPorts) == 0 || slices.Contains(f.LPorts, lport)) &&
		(len(f.RPorts) == 0 || slices.Contains(f.RPorts, rport)) &&
		(len(f.Ports) == 0 || slices.Contains(f.Ports, lport) || slices.Contains(f.Ports, rport))
}

// All says whether f keeps everything.
func (f *Filter) All() bool {
	return f.Family == 0 && f.Netns == 0 && len(f.States) == 0 && len(f.PIDs) == 0 &&
		f.Comm == "" && len(f.LPorts) == 0 && len(f.RPorts) == 0 && len(f.Ports) == 0 && f.Cgroups == nil && len(f.NotPIDs) == 0
}
