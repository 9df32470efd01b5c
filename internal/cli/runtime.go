package cli

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
)

// gcPercent is the heap growth over what survived the last collection
// that starts the next one (GOGC; Go's default is 100).
const gcPercent = 25

// TightHeap lowers GOGC unless the environment sets it. tcptrace's live heap
// is mostly its tables (the connections followed through TIME_WAIT: 13 MB
// for 48,000), and its hot paths allocate almost nothing, so collections
// are rare either way: under a storm of 800 connections a second, one
// every 40 s. With the default, the heap, and so the RSS an agent's memory
// limit sees, would grow to twice the tables before each.
func TightHeap() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

// timerSlack is how late the kernel may end this process's sleeps, to
// batch their wake-ups with others.
const timerSlack = 1_000_000 // ns

// CoarseSleeps sets the timer slack of every thread of the process; threads
// made later inherit it from their maker. The Go runtime's monitor thread
// (sysmon) sleeps 20 us at a time whenever a goroutine runs, and with the
// default slack of 50 us each sleep is a context switch: on a
// paravirtualized 2-CPU guest they were a quarter of tcptrace's CPU under
// a steady 8,000 events a second. A millisecond of slack makes them a
// twentieth as many; tcptrace's own timers (50 ms and up) do not notice.
// Best effort: a kernel without /proc/PID/timerslack_ns (before 4.6)
// keeps the default.
func CoarseSleeps() {
	// the file is in /proc/TID, which exists for every thread though
	// only processes are listed, not in /proc/self/task/TID
	tasks, _ := filepath.Glob("/proc/self/task/*")
	for _, t := range tasks {
		os.WriteFile(filepath.Join("/proc", filepath.Base(t), "timerslack_ns"), []byte(strconv.Itoa(timerSlack)), 0)
	}
}
