package proxy

import (
	"encoding/binary"
	"testing"
)

// dnsTestQuery is a query with id for name (a single label) of type A.
func dnsTestQuery(id uint16, name string) []byte {
	q := binary.BigEndian.AppendUint16(nil, id)
	q = append(q, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0)
	q = append(q, byte(len(name)))
	q = append(q, name...)
	return append(q, 0, 0, 1, 0, 1) // the root label, type A, class IN
}

func TestParseDNSQueryAndReply(t *testing.T) {
	q := dnsTestQuery(7, "Example")
	id, h, ok := parseDNSQuery(q)
	if !ok || id != 7 || h == 0 {
		t.Fatalf("parseDNSQuery = %d %x %v", id, h, ok)
	}
	r := dnsTestQuery(7, "eXAMPLE") // the same question, another case
	r[2] |= 0x80
	rid, rh, ok := parseDNSReply(r)
	if !ok || rid != 7 || rh != h {
		t.Errorf("parseDNSReply = %d %x %v, want 7 %x (case folded)", rid, rh, ok, h)
	}
	if _, _, ok := parseDNSQuery(r); ok {
		t.Error("a response taken for a query")
	}
	if _, _, ok := parseDNSReply(q); ok {
		t.Error("a query taken for a response")
	}
	other := dnsTestQuery(7, "other")
	if _, oh, _ := parseDNSQuery(other); oh == h {
		t.Error("two questions with one hash")
	}
	noQ := append([]byte(nil), r[:12]...)
	noQ[5] = 0
	if id, qh, ok := parseDNSReply(noQ); !ok || id != 7 || qh != 0 {
		t.Errorf("a reply without a question: %d %x %v, want 7 0 true", id, qh, ok)
	}
	for _, bad := range [][]byte{nil, q[:11], q[:12], q[:15], noQ} {
		if _, _, ok := parseDNSQuery(bad); ok {
			t.Errorf("parseDNSQuery(%x) accepted", bad)
		}
	}
}

func TestDNSIDs(t *testing.T) {
	var ids dnsIDs[string]
	w1, ok := ids.add("a", 7, 100, 1)
	if !ok || w1 != 7 {
		t.Fatalf("a free id is kept: got %d %v", w1, ok)
	}
	w2, ok := ids.add("b", 7, 200, 2) // another client, the same id
	if !ok || w2 == 7 {
		t.Fatalf("a taken id is rewritten: got %d %v", w2, ok)
	}
	if _, ok := ids.match(w2, 100); ok {
		t.Error("a reply for another question matched")
	}
	p, ok := ids.match(w2, 200)
	if !ok || p.client != "b" || p.id != 7 {
		t.Fatalf("match = %+v %v", p, ok)
	}
	if _, ok := ids.match(w2, 200); ok {
		t.Error("a second reply matched the same query")
	}
	if p, ok := ids.match(w1, 0); !ok || p.client != "a" {
		t.Errorf("a reply without a question matches on its id: %+v %v", p, ok)
	}
	if ids.n != 0 || ids.oldest() != 0 {
		t.Errorf("%d waiting, oldest %d; want none", ids.n, ids.oldest())
	}
	// Expiry goes in send order and skips the answered.
	for i := range 10 {
		ids.add("c", uint16(i), 1, int64(10+i))
	}
	ids.match(0, 1)
	if o := ids.oldest(); o != 11 {
		t.Errorf("oldest %d, want 11 (10 was answered)", o)
	}
	n := 0
	for {
		p, ok := ids.expireOne(15)
		if !ok {
			break
		}
		if p.sent >= 15 {
			t.Errorf("expired one sent at %d", p.sent)
		}
		n++
	}
	if n != 4 || ids.n != 5 {
		t.Errorf("expired %d (want 4), %d waiting (want 5)", n, ids.n)
	}
	left := 0
	ids.all(func(dnsPending[string]) { left++ })
	if left != 5 || ids.n != 0 {
		t.Errorf("all gave %d (want 5), %d waiting", left, ids.n)
	}
	// Full: every id in use up to the bound, each once.
	seen := map[uint16]bool{}
	for i := range maxDNSPending {
		w, ok := ids.add("d", 1, 1, int64(100+i))
		if !ok || seen[w] {
			t.Fatalf("query %d: id %d %v (seen %v)", i, w, ok, seen[w])
		}
		seen[w] = true
	}
	if _, ok := ids.add("d", 1, 1, 1); ok {
		t.Error("a query beyond maxDNSPending was taken")
	}
}

// TestDNSIDsQueueStaysSmall: one query never answered at the front of the
// queue does not keep every later, answered query in it.
func TestDNSIDsQueueStaysSmall(t *testing.T) {
	var ids dnsIDs[int]
	ids.add(0, 1, 1, 1) // never answered
	for i := range 100000 {
		w, _ := ids.add(i, uint16(i), 2, int64(2+i))
		if _, ok := ids.match(w, 2); !ok {
			t.Fatal("no match")
		}
	}
	if n := len(ids.queue) - ids.qhead; n > 8192 {
		t.Errorf("the queue holds %d entries for 1 waiting query", n)
	}
	if p, ok := ids.expireOne(1 << 40); !ok || p.client != 0 {
		t.Errorf("the old query expires: %+v %v", p, ok)
	}
}

// FuzzDNSIDs: any sequence of queries, replies and expiries keeps the table
// consistent: a reply matches only a waiting query, and restores its id.
func FuzzDNSIDs(f *testing.F) {
	f.Add([]byte{0, 7, 0, 1, 7, 1, 2, 9})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var ids dnsIDs[int]
		type want struct {
			id uint16
			q  uint64
		}
		live := map[uint16]want{}
		var now int64
		for i := 0; i+2 < len(ops); i += 3 {
			now++
			id := uint16(ops[i+1]) % 8
			q := uint64(ops[i+2]%3) + 1
			switch ops[i] % 3 {
			case 0:
				w, ok := ids.add(i, id, q, now)
				if !ok {
					continue
				}
				if _, taken := live[w]; taken {
					t.Fatalf("id %d given twice", w)
				}
				live[w] = want{id, q}
			case 1:
				wire := uint16(ops[i+1]) // any id a reply may carry
				p, ok := ids.match(wire, q)
				w, waiting := live[wire]
				if ok != (waiting && w.q == q) {
					t.Fatalf("match(%d, %d) = %v, waiting %v %+v", wire, q, ok, waiting, w)
				}
				if ok {
					if p.id != w.id {
						t.Fatalf("restored id %d, want %d", p.id, w.id)
					}
					delete(live, wire)
				}
			case 2:
				for {
					if _, ok := ids.expireOne(now - int64(ops[i+1]%4)); !ok {
						break
					}
				}
				for w := range live {
					if ids.slot.get(w) == 0 {
						delete(live, w)
					}
				}
			}
			if ids.n != len(live) {
				t.Fatalf("%d waiting, want %d", ids.n, len(live))
			}
		}
	})
}

// TestDNSIndexAgainstAMap: random puts and deletes keep the hash table
// equal to a map, across growth and wrapping probe runs.
func TestDNSIndexAgainstAMap(t *testing.T) {
	// A small table (wrapping probe runs are frequent) and a larger one.
	for _, size := range []struct{ keys, most int }{{200, 31}, {3000, 1500}} {
		var x dnsIndex
		want := map[uint16]int32{}
		r := uint32(1)
		next := func() uint32 { r ^= r << 13; r ^= r >> 17; r ^= r << 5; return r }
		for step := range 200000 {
			k := uint16(next() % uint32(size.keys))
			if v, ok := want[k]; ok {
				if got := x.get(k); got != v {
					t.Fatalf("%d keys, step %d: get(%d) = %d, want %d", size.keys, step, k, got, v)
				}
				x.del(k)
				delete(want, k)
			} else if len(want) < size.most {
				v := int32(next()%1000 + 1)
				x.put(k, v)
				want[k] = v
			}
			if x.n != len(want) {
				t.Fatalf("step %d: %d entries, want %d", step, x.n, len(want))
			}
			if step%100 == 0 {
				for k := range uint16(size.keys) {
					if v := want[k]; x.get(k) != v {
						t.Fatalf("%d keys, step %d: get(%d) = %d, want %d", size.keys, step, k, x.get(k), v)
					}
				}
			}
		}
	}
}
