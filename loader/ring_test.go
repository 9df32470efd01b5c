package loader

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fakeRing lays records out as the kernel does, in a data area of size
// bytes mapped once, starting at position start.
func fakeRing(size int, start uint64, records [][]byte) *ring {
	var prod, cons uint64 = start, start
	r := &ring{data: make([]byte, size), mask: uint64(size - 1), cons: start, prodPos: &prod, consPos: &cons}
	for _, rec := range records {
		binary.LittleEndian.PutUint32(r.data[prod&r.mask:], uint32(len(rec)))
		for i, b := range rec {
			r.data[(prod+ringHdrSize+uint64(i))&r.mask] = b
		}
		prod += (uint64(len(rec)) + ringHdrSize + 7) &^ 7
	}
	return r
}

func TestRingReadsWrappedRecords(t *testing.T) {
	var records [][]byte
	for i := range 7 {
		rec := bytes.Repeat([]byte{byte('a' + i)}, 5+6*i)
		records = append(records, rec)
	}
	// from 200, the third record wraps in its middle; from 232, the
	// second one's header fills the last bytes and its data starts over
	for _, start := range []uint64{200, 232} {
		readAll(t, fakeRing(256, start, records), records)
	}
}

func readAll(t *testing.T, r *ring, records [][]byte) {
	t.Helper()
	var got [][]byte
	used, full := r.read(1<<20, func(b []byte) { got = append(got, bytes.Clone(b)) })
	if full || len(got) != len(records) {
		t.Fatalf("read %d records (full %v), want %d", len(got), full, len(records))
	}
	total := 0
	for i := range records {
		total += len(records[i])
		if !bytes.Equal(got[i], records[i]) {
			t.Errorf("record %d = %q, want %q", i, got[i], records[i])
		}
	}
	if used != total || *r.consPos != *r.prodPos {
		t.Errorf("used %d, consumer at %d: want %d and %d", used, *r.consPos, total, *r.prodPos)
	}
}
