package proxy

import (
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/peek"
)

// FuzzQUICConnectionIDs: any datagram, learnt from either side and looked
// up, neither panics nor leaves the table inconsistent; a server's long
// header id is found again in a short header.
func FuzzQUICConnectionIDs(f *testing.F) {
	f.Add([]byte{0xc0, 0, 0, 0, 1, 4, 1, 2, 3, 4, 4, 5, 6, 7, 8, 0}, true)
	f.Add([]byte{0x40, 5, 6, 7, 8}, false)
	f.Add([]byte{0xff, 0, 0, 0, 1, 20}, true)
	f.Fuzz(func(t *testing.T, p []byte, fromServer bool) {
		var st QUICStats
		tb := quicCIDs[int]{stats: &st}
		var q udpQUIC
		tb.learn(&q, 1, p, fromServer)
		tb.lookup(p)
		if h, ok := peek.ParseLongHeader(p); ok && fromServer && len(h.SCID) > 0 && (h.Version == peek.QUICv1 || h.Version == peek.QUICv2) {
			short := append([]byte{0x40}, h.SCID...)
			if o, ok := tb.lookup(append(short, 0)); !ok || o != 1 {
				t.Fatalf("the server's id %x not found in a short header", h.SCID)
			}
		}
		if int(st.ConnectionIDs.Load()) != len(tb.m) || len(q.cids) != len(tb.m) {
			t.Fatalf("%d counted, %d in the table, %d on the session", st.ConnectionIDs.Load(), len(tb.m), len(q.cids))
		}
		tb.forget(&q, 1)
		if st.ConnectionIDs.Load() != 0 || len(tb.m) != 0 {
			t.Fatal("ids left after forget")
		}
	})
}
