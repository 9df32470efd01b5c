package loader

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring reads the BPF ring buffer in batches. cilium/ebpf's reader loads the
// producer position and stores the consumer position after every record;
// the kernel reads that consumer position on every reserve, so under load
// the cache line moved between CPUs once per event. This reader publishes
// its position once per batch, and decodes records where they lie.
//
// The kernel lets a reader map the data pages twice in a row, so that a
// record that wraps around the end reads whole; cilium/ebpf does. Every
// page of the mapping counts in the reader's RSS, so that doubles the
// ring's share of it (16 MiB for the default 8 MiB ring) for pages that
// exist once. This reader maps them once and copies the few records that
// wrap.
type ring struct {
	consMap []byte  // consumer page, read-write
	prodMap []byte  // producer page, then the data pages
	data    []byte  // the data pages
	wrapped []byte  // a record that wraps, copied whole
	mask    uint64  // data size - 1
	cons    uint64  // our position, published at the end of each batch
	consPos *uint64 // in consMap
	prodPos *uint64 // in prodMap

	// poll is the ring's descriptor (a duplicate, non-blocking) in Go's
	// network poller. Waiting there parks the reader goroutine, where a
	// blocking epoll_wait would hold a thread in a system call: Go's
	// sysmon then wakes up to every 20 us to take the thread's processor
	// away, which on a busy host cost a thousand context switches a
	// second and a fifth of tcptrace's CPU.
	poll   *os.File
	raw    syscall.RawConn
	woken  atomic.Bool // wake was called: the next or current wait returns
	closed atomic.Bool
	mu     sync.Mutex // held while reading the mapping, so close cannot unmap it
}

// record header flags (include/uapi/linux/bpf.h)
const (
	ringBusy    = 1 << 31
	ringDiscard = 1 << 30
	ringHdrSize = 8
)

var errRingClosed = errors.New("ring buffer closed")

func newRing(fd int, size int) (*ring, error) {
	page := os.Getpagesize()
	r := &ring{mask: uint64(size - 1)}
	var err error
	if r.consMap, err = unix.Mmap(fd, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("map ring consumer page: %w", err)
	}
	if r.prodMap, err = unix.Mmap(fd, int64(page), page+size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		r.close()
		return nil, fmt.Errorf("map ring data: %w", err)
	}
	r.consPos = (*uint64)(unsafe.Pointer(&r.consMap[0]))
	r.prodPos = (*uint64)(unsafe.Pointer(&r.prodMap[0]))
	r.data = r.prodMap[page:]
	r.cons = atomic.LoadUint64(r.consPos)

	// the poller registers a descriptor edge-triggered: the ring's poll
	// says "readable" while any byte is pending, but its edges are the
	// program's wakeups (once WakeupBytes are pending), the ones wanted
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("duplicate ring descriptor: %w", err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		r.close()
		return nil, fmt.Errorf("ring descriptor: %w", err)
	}
	r.poll = os.NewFile(uintptr(dup), "ringbuf")
	if r.raw, err = r.poll.SyscallConn(); err != nil {
		r.close()
		return nil, fmt.Errorf("ring descriptor: %w", err)
	}
	// a descriptor the poller refused would make every wait return at once
	if err := r.poll.SetReadDeadline(time.Time{}); err != nil {
		r.close()
		return nil, fmt.Errorf("poll ring buffer: %w", err)
	}
	return r, nil
}

// pending is the number of bytes not read yet; 0 once closed.
func (r *ring) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return 0
	}
	return int(atomic.LoadUint64(r.prodPos) - r.cons)
}

// wait blocks until the program wakes the reader, wake is called, or the
// timeout passes.
func (r *ring) wait(timeout time.Duration) error {
	if r.closed.Load() {
		return errRingClosed
	}
	if timeout <= 0 {
		return nil
	}
	if err := r.poll.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return errRingClosed // only a closed file refuses a deadline
	}
	// after the deadline is set, so that a wake either shows here or
	// moves the deadline this wait waits for
	if r.woken.Swap(false) {
		return nil
	}
	// the poller calls the function, and waits for the next edge each
	// time it says false: the first call only starts the wait. An edge
	// that came since the last wait ends it at once, as it should: the
	// program woke the reader meanwhile.
	calls := 0
	err := r.raw.Read(func(uintptr) bool {
		calls++
		return calls > 1
	})
	r.woken.Store(false)
	switch {
	case r.closed.Load():
		return errRingClosed
	case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("wait for ring buffer: %w", err)
	}
	return nil
}

// read calls fn for committed records, in order, as long as their lengths
// add up to at most budget bytes, then publishes the consumer position
// once. It returns the bytes it passed to fn and whether it stopped for
// the budget, with more perhaps waiting. fn must not keep the slice.
func (r *ring) read(budget int, fn func([]byte)) (used int, full bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return 0, false
	}
	prod := atomic.LoadUint64(r.prodPos)
	for r.cons < prod {
		hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.data[r.cons&r.mask])))
		if hdr&ringBusy != 0 {
			break // reserved but not committed yet: the records after it wait too
		}
		length := uint64(hdr &^ (ringBusy | ringDiscard))
		if hdr&ringDiscard == 0 {
			if used+int(length) > budget {
				full = true
				break
			}
			fn(r.record(r.cons+ringHdrSize, length))
			used += int(length)
		}
		r.cons += (length + ringHdrSize + 7) &^ 7
	}
	atomic.StoreUint64(r.consPos, r.cons)
	return used, full
}

// record returns the length bytes at position pos, copied if they wrap
// around the end of the data.
func (r *ring) record(pos, length uint64) []byte {
	start := pos & r.mask
	end := start + length
	if end <= uint64(len(r.data)) {
		return r.data[start:end]
	}
	r.wrapped = append(r.wrapped[:0], r.data[start:]...)
	r.wrapped = append(r.wrapped, r.data[:end-uint64(len(r.data))]...)
	return r.wrapped
}

// wake makes a waiting reader return.
func (r *ring) wake() {
	r.woken.Store(true)
	if r.poll != nil {
		// a deadline in the past ends the current wait
		r.poll.SetReadDeadline(time.Unix(1, 0))
	}
}

func (r *ring) close() error {
	r.closed.Store(true)
	var errs []error
	if r.poll != nil {
		// ends a waiting reader, which then sees closed
		errs = append(errs, r.poll.Close())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range [][]byte{r.consMap, r.prodMap} {
		if m != nil {
			errs = append(errs, unix.Munmap(m))
		}
	}
	r.consMap, r.prodMap, r.data = nil, nil, nil
	return errors.Join(errs...)
}
