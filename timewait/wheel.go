package timewait

import "time"

// wheel says when the kernel's timer wheel fires a timer, so that a
// TIME_WAIT mini-socket is checked just after the kernel ends it rather
// than again and again while the wheel is late. The wheel rounds a
// timer's expiry up to the granularity of the level the timer lands in
// (kernel/time/timer.c, calc_wheel_index and calc_index): a 60 s timer
// fires on the next multiple of 512 jiffies (2.048 s at HZ 250, 4.096 s
// at HZ 1000 with 4096). Placing those multiples in time takes the
// kernel's jiffies at a known time, which every mark from flush_staging
// carries, and HZ, estimated from two marks a second or more apart.
type wheel struct {
	mono0, j0 uint64 // the first sample
	mono, j   uint64 // the latest
	hz        uint64 // 0 until known
}

// sync takes a sample: the kernel's jiffies at mono.
func (w *wheel) sync(mono, jiffies uint64) {
	if jiffies == 0 || mono <= w.mono {
		return
	}
	if w.mono0 == 0 {
		w.mono0, w.j0 = mono, jiffies
	}
	w.mono, w.j = mono, jiffies
	if w.hz != 0 || mono-w.mono0 < uint64(time.Second) {
		return
	}
	est := float64(jiffies-w.j0) / (float64(mono-w.mono0) / 1e9)
	for _, hz := range []uint64{100, 250, 300, 1000} {
		if d := est - float64(hz); d > -0.02*float64(hz) && d < 0.02*float64(hz) {
			w.hz = hz
		}
	}
}

// levelBits and levelStart are the wheel's LVL_CLK_SHIFT and the first
// delta, in jiffies, that lands in each level (LVL_START).
const levelBits = 3

func levelStart(lvl uint) uint64 { return 63 << ((lvl - 1) * levelBits) }

// fires returns when a timer of timeout, armed at mono at, fires; false
// until HZ is known.
func (w *wheel) fires(at uint64, timeout time.Duration) (uint64, bool) {
	if w.hz == 0 {
		return 0, false
	}
	armed := w.j + uint64((int64(at)-int64(w.mono))*int64(w.hz)/1e9)
	delta := uint64(timeout) * w.hz / uint64(time.Second)
	expires := armed + delta
	var lvl uint
	for lvl = 0; lvl < 8 && delta >= levelStart(lvl+1); lvl++ {
	}
	shift := lvl * levelBits
	fire := (expires>>shift + 1) << shift
	return w.mono + uint64(int64(fire-w.j)*1e9/int64(w.hz)), true
}
