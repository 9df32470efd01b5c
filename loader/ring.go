package loader

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
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

	epfd   int
	wakefd int // eventfd: Close wakes a waiting reader
	closed atomic.Bool
	events [2]unix.EpollEvent
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
	r := &ring{epfd: -1, wakefd: -1, mask: uint64(size - 1)}
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

	if r.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		r.close()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	if r.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		r.close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	// edge-triggered: the ring's poll says "readable" while any byte is
	// pending, which would wake the reader for every record; the program's
	// forced wakeups (once a batch is pending) are the edges wanted
	for _, ev := range []unix.EpollEvent{
		{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(fd)},
		{Events: unix.EPOLLIN, Fd: int32(r.wakefd)},
	} {
		if err := unix.EpollCtl(r.epfd, unix.EPOLL_CTL_ADD, int(ev.Fd), &ev); err != nil {
			r.close()
			return nil, fmt.Errorf("epoll add: %w", err)
		}
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
	n, err := unix.EpollWait(r.epfd, r.events[:], int(timeout/time.Millisecond))
	if err != nil && err != unix.EINTR {
		return fmt.Errorf("wait for ring buffer: %w", err)
	}
	for _, ev := range r.events[:max(n, 0)] {
		if ev.Fd == int32(r.wakefd) {
			var buf [8]byte
			unix.Read(r.wakefd, buf[:]) // reset the eventfd
		}
	}
	if r.closed.Load() {
		return errRingClosed
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
	var one = [8]byte{1}
	unix.Write(r.wakefd, one[:])
}

func (r *ring) close() error {
	r.closed.Store(true)
	if r.wakefd >= 0 {
		r.wake()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, m := range [][]byte{r.consMap, r.prodMap} {
		if m != nil {
			errs = append(errs, unix.Munmap(m))
		}
	}
	r.consMap, r.prodMap, r.data = nil, nil, nil
	// the waiter, if any, was woken above and sees closed
	for _, fd := range []int{r.epfd, r.wakefd} {
		if fd >= 0 {
			errs = append(errs, unix.Close(fd))
		}
	}
	r.epfd, r.wakefd = -1, -1
	return errors.Join(errs...)
}
