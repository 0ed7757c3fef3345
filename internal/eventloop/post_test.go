//go:build linux

package eventloop

import (
	"testing"
	"time"
)

// run is a minimal loop: it runs what is posted until stop is posted.
func run(l *Loop, stop *bool) {
	defer l.Exit()
	for !*stop {
		if err := l.Wait(); err != nil {
			return
		}
		for _, ev := range l.Events() {
			if int(ev.Fd) == l.WakeFD() {
				l.RunPosted()
			}
		}
	}
}

// TestPostOrderAndCall: posted functions run on the loop in order; Call
// waits for its function; after the loop exits Post and Call report false.
func TestPostOrderAndCall(t *testing.T) {
	var l Loop
	if err := l.Open("test", 8); err != nil {
		t.Fatal(err)
	}
	stop := false
	go run(&l, &stop)
	var got []int
	for i := range 100 {
		if !l.Post(func() { got = append(got, i) }) {
			t.Fatal("Post to a running loop reported false")
		}
	}
	var n int
	if !l.Call(func() { n = len(got) }) {
		t.Fatal("Call to a running loop reported false")
	}
	if n != 100 {
		t.Fatalf("Call ran after %d of 100 earlier posts", n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("post %d ran as %d-th", v, i)
		}
	}
	l.Call(func() { stop = true })
	<-l.Exited()
	if l.Post(func() {}) || l.Call(func() {}) {
		t.Error("Post or Call to an exited loop reported true")
	}
}

// TestDeadline: Wait returns without events once the deadline passed, and
// Armed says so.
func TestDeadline(t *testing.T) {
	var p Poller
	if err := p.Open("test", 8); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.SetDeadline(time.Now().Add(time.Millisecond).UnixNano())
	for p.Armed() != -1 {
		if err := p.Wait(); err != nil {
			t.Fatal(err)
		}
		if len(p.Events()) != 0 {
			t.Fatalf("events without any descriptor but the eventfd: %v", p.Events())
		}
	}
	p.Wake()
	p.SetDeadline(0)
	if err := p.Wait(); err != nil || len(p.Events()) != 1 || int(p.Events()[0].Fd) != p.WakeFD() {
		t.Fatalf("after Wake: %v, %v", p.Events(), err)
	}
	p.Woken()
}

func TestZeroPollerCloses(t *testing.T) {
	var p Poller
	p.Wake()
	p.Close() // neither touches a descriptor it did not open
}
