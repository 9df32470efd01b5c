package timewait

import (
	"testing"
	"time"
)

// A 60 s timer fires on the next multiple of the level's granularity
// (512 jiffies at HZ 250), never before its expiry; HZ is learnt from
// samples a second apart.
func TestWheelFires(t *testing.T) {
	var w wheel
	w.sync(10*uint64(time.Second), 1000)
	if _, ok := w.fires(10*uint64(time.Second), TimeWaitLen); ok {
		t.Fatal("fires known before HZ")
	}
	w.sync(11*uint64(time.Second), 1250)
	if w.hz != 250 {
		t.Fatalf("hz %d, want 250", w.hz)
	}
	// armed at jiffy 1000: expires at 16000, fires at 16384
	got, ok := w.fires(10*uint64(time.Second), TimeWaitLen)
	want := 10*uint64(time.Second) + uint64((16384-1000)*int64(time.Second)/250)
	if !ok || got != want {
		t.Errorf("fires at %d (%v), want %d", got, ok, want)
	}
	// a timer armed on a boundary still fires a whole granule later
	got, _ = w.fires(10*uint64(time.Second)+uint64((16384-15000-1000)*int64(time.Second)/250), TimeWaitLen)
	if want := 10*uint64(time.Second) + uint64((16896-1000)*int64(time.Second)/250); got != want {
		t.Errorf("armed on a boundary: fires at %d, want %d", got, want)
	}
	// HZ 1000: a 60 s timer lands a level up, 4096 jiffies
	var k wheel
	k.sync(uint64(time.Second), 0+5000)
	k.sync(2*uint64(time.Second), 6000)
	got, _ = k.fires(uint64(time.Second), TimeWaitLen)
	if want := uint64(time.Second) + uint64((65536-5000)*int64(time.Second)/1000); got != want {
		t.Errorf("HZ 1000: fires at %d, want %d", got, want)
	}
}
